"""`lineage-ledger run` and `lineage-ledger spool` in real deployments (issue 16): the record is
durable in the spool before the back-end is touched, a locked, read-only or unreachable ledger
only delays shipping, signals reach the command and end `run` as a shell would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.faults import (
    hold_write_lock,
    record_bodies,
    spool_on_a_full_disk,
    without_root_file_powers,
)


def _records(workdir, db=".lineage/ledger.db") -> list[dict]:
    """The records in the SQLite ledger, oldest first, read with sqlite3 (no lineage-ledger code)."""
    return record_bodies(Path(workdir) / db)


def _status(cli) -> list[dict]:
    return json.loads(cli("spool", "status", "--json", check_rc=0).stdout)


# -- the spool must take the record before the command starts ---------------------------------
@pytest.fixture
def full_disk(tmp_path):
    """A directory on a full 64 KiB tmpfs (root only), else skip."""
    with spool_on_a_full_disk(tmp_path, "64k") as spool:
        yield spool


def test_run_with_the_spool_on_a_full_disk_refuses_before_running(cli, workdir, full_disk):
    marker = workdir / "ran"
    result = cli("run", "--", "touch", str(marker), env={"LINEAGE_SPOOL": str(full_disk)})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "spool" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_run_with_an_unwritable_spool_refuses_before_running(workdir, tmp_path):
    locked = tmp_path / "readonly"
    locked.mkdir()
    os.chmod(locked, 0o555)
    marker = workdir / "ran"
    try:
        result = run_cli("run", "--", "touch", str(marker), cwd=workdir, prefix=without_root_file_powers(),
                         env={"LINEAGE_SPOOL": str(locked / "spool")})
    finally:
        os.chmod(locked, 0o755)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "spool" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


# -- a locked, read-only or unreachable ledger only delays shipping -----------------------------
def test_run_on_a_locked_ledger_leaves_the_record_in_the_spool_and_exits_at_once(cli, workdir):
    cli("run", "--", "true", check_rc=0)  # the ledger exists
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        began = time.monotonic()
        result = cli("run", "--", "sh", "-c", "exit 3")
        took = time.monotonic() - began
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert took < 15, took  # a short bounded wait, never the back-end's 30 s or more
        assert "waits" in result.stderr and "spool ship" in result.stderr
        waiting, = _status(cli)
        assert waiting["records"] == 1 and waiting["live"] == 0 and waiting["oldest_age_s"] >= 0
        assert waiting["url"] == f"sqlite:///{os.path.realpath(workdir)}/.lineage/ledger.db"
        shipped = cli("spool", "ship", "--timeout", "0.5")  # the lock is held throughout: any wait ends so
        assert shipped.returncode == 2 and "1 record(s) wait" in shipped.stderr
    finally:
        holder.communicate("")
    cli("spool", "ship", check_rc=0)
    assert _status(cli) == []
    records = _records(workdir)
    assert len(records) == 2 and records[1]["status"] == "failed" and records[1]["extra"]["returncode"] == 3


def test_run_on_a_read_only_ledger_keeps_the_record_for_later(cli, workdir):
    cli("run", "--", "true", check_rc=0)
    db = workdir / ".lineage" / "ledger.db"
    os.chmod(db, 0o444)
    try:
        began = time.monotonic()
        result = run_cli("run", "--", "true", cwd=workdir, prefix=without_root_file_powers())
        # Read-only is no delay: exit 1, the record kept (tests/test_review_left_s38.py).
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert time.monotonic() - began < 15
        assert "in the spool" in result.stderr and "spool ship" in result.stderr
        shipped = run_cli("spool", "ship", cwd=workdir, prefix=without_root_file_powers())
        assert shipped.returncode == 1 and "1 record(s) stay" in shipped.stderr
    finally:
        os.chmod(db, 0o644)
    # The next run ships its own record, then what the earlier one left in the spool.
    cli("run", "--", "true", check_rc=0)
    assert len(_records(workdir)) == 3
    assert _status(cli) == []


def test_run_against_an_unreachable_ledger_runs_and_spools(cli, workdir):
    """A ledger that is down only delays the record (the transient side of the split that
    tests/test_review_left_s38.py tests for ledgers that refuse for good): the command runs,
    exit 0, and its record waits in the spool; ``spool ship`` exits 2, "try again"."""
    url = "postgresql://nobody@127.0.0.1:1/ledger"  # nothing listens on port 1
    marker = workdir / "ran"
    # The default wait for the ledger (2 s), kept: the one test of retries against a ledger that is down.
    result = cli("run", "--ledger", url, "--", "touch", str(marker))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert marker.exists() and "waits" in result.stderr
    waiting, = _status(cli)
    assert waiting["records"] == 1 and "127.0.0.1:1/ledger" in waiting["url"]
    shipped = cli("spool", "ship", "--ledger", url)
    assert shipped.returncode == 2 and "1 record(s) wait" in shipped.stderr and "Traceback" not in shipped.stderr


@pytest.mark.parametrize("url, message", [
    ("sqlite:/no-slashes.db", "malformed ledger URL"),
    ("nosuch://x", "no ledger back-end for scheme 'nosuch'"),
])
def test_run_refuses_a_bad_ledger_configuration_before_running(cli, workdir, url, message):
    marker = workdir / "ran"
    result = cli("run", "--ledger", url, "--", "touch", str(marker))
    assert result.returncode == 2 and message in result.stderr
    assert not marker.exists()


def test_run_refuses_a_missing_extra_before_running(workdir):
    marker = workdir / "ran"
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from lineage_ledger._cli.main import main; sys.argv = ['lineage-ledger', 'run', '--ledger',"
            f" 'postgresql://u@127.0.0.1:1/db', '--', 'touch', {str(marker)!r}]; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 2 and "pip install 'lineage-ledger[postgres]'" in result.stderr
    assert not marker.exists()


# -- signals ------------------------------------------------------------------------------------
_SLEEPER = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_reach_the_command_and_the_interrupted_run_is_recorded(workdir, signum):
    started = workdir / "started"
    script = Path(sys.executable).parent / "lineage-ledger"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    run = subprocess.Popen([str(script), "run", "-n", "sleeper", "--", sys.executable, "-c", _SLEEPER, str(started)],
                           cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # no terminal: the signal reaches `run` alone
    try:
        deadline = time.monotonic() + 30
        while not (started.exists() and started.read_text()):
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.05)
        child = int(started.read_text())
        run.send_signal(signum)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signum, (run.returncode, err)
    assert "Aborted" not in err
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the command got the signal; nothing is left running
    record, = _records(workdir)
    assert record["status"] == "failed" and record["task_name"] == "sleeper"
    assert record["extra"]["signal"] == signal.Signals(signum).name
    assert record["extra"]["signal_number"] == signum


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_a_command_killed_by_a_signal_exits_128_plus_n(cli, workdir, signum):
    result = cli("run", "--", "sh", "-c", f"kill -{signum} $$")
    assert result.returncode == 128 + signum, (result.returncode, result.stderr)
    record, = _records(workdir)
    assert record["status"] == "failed" and record["extra"]["killed_by_signal"] == signal.Signals(signum).name


# -- a failed try vouches only for what it wrote --------------------------------------------------
def test_a_failed_try_records_only_outputs_it_wrote(cli, workdir):
    cli("run", "-o", "kept.txt", "-o", "other.txt", "--", "sh", "-c", "echo v1 > kept.txt; echo o > other.txt",
        check_rc=0)
    result = cli("run", "-o", "kept.txt", "-o", "other.txt", "-o", "new.txt",
                 "--", "sh", "-c", "echo partial > new.txt; exit 1")
    assert result.returncode == 1
    first, failed = _records(workdir)
    assert set(first["outputs"]) == {str(workdir / "kept.txt"), str(workdir / "other.txt")}
    assert failed["status"] == "failed"
    assert set(failed["outputs"]) == {str(workdir / "new.txt")}  # created by the try
    assert sorted(failed["extra"]["outputs_not_written"]) == [str(workdir / "kept.txt"), str(workdir / "other.txt")]
    # and a try that rewrote a file does list it
    cli("run", "-o", "kept.txt", "--", "sh", "-c", "echo v2 > kept.txt; exit 1")
    assert set(_records(workdir)[-1]["outputs"]) == {str(workdir / "kept.txt")}


# -- the spool is keyed as the back-end names itself, without connecting to it -------------------
@pytest.mark.parametrize("spelling", ["{d}/l.db", "sqlite:///{d}/l.db", "sqlite:///{d}/x/../l.db"])
def test_the_spool_key_is_the_identity_the_back_end_gives(tmp_path, spelling):
    from lineage_ledger._ledger.deferred import ledger_identity
    from lineage_ledger.backends import open_backend

    (tmp_path / "x").mkdir()
    url = spelling.format(d=tmp_path)
    identity, backend = ledger_identity(url)
    assert backend is None and not (tmp_path / "l.db").exists()  # nothing was opened or created
    opened = open_backend(url)
    try:
        assert identity == opened.identity
    finally:
        opened.close()


def test_the_spool_key_of_a_postgresql_ledger(postgres_url):
    from lineage_ledger._ledger.deferred import ledger_identity
    from lineage_ledger.backends import open_backend

    opened = open_backend(postgres_url)
    try:
        assert ledger_identity(postgres_url)[0] == opened.identity
    finally:
        opened.close()


def test_a_pre_run_check_takes_an_output_whose_record_waits_in_the_spool(cli, workdir):
    """A task rewrote its output while the ledger was locked: its record waits in the spool,
    and the next run's strict check must not call the task's own output tampered (issue 16).
    An edit by hand afterwards is still refused."""
    from lineage_ledger import ArtifactMismatch, verify_before_run

    (workdir / "in.txt").write_text("v1\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        (workdir / "in.txt").write_text("v2\n")
        late = cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt")
        assert late.returncode == 0 and "spool ship" in late.stderr, late
        url = f"sqlite:///{workdir}/.lineage/ledger.db"
        assert verify_before_run(url, ["out.txt"], "strict") == []  # was: ArtifactMismatch
        (workdir / "out.txt").write_text("edited by hand\n")
        with pytest.raises(ArtifactMismatch, match="out.txt"):
            verify_before_run(url, ["out.txt"], "strict")
    finally:
        holder.communicate("")
