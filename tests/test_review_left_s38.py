"""Three trust and usability bugs left over from stop 37's reviews, each end to end through the CLI.

1. ``lineage-ledger run`` and ``spool ship`` against a ledger that refuses writes for good
   (a PostgreSQL role that may only read, a database in read-only mode, a read-only SQLite
   file or directory, a schema this version does not know) said "it waits in the spool",
   exit 0 (``run``) or 2 (``spool ship``, "try again"), as for a ledger that is only locked or
   down: waiting never settles those. Now exit 1, saying why and that the record is safe in the
   spool until ``lineage-ledger spool ship`` (fix: ``deferred.permanent_refusal``, used by
   ``_cli/run.py`` and ``_cli/recording.py``). A server that is down keeps today's behaviour.
2. ``verify-lineage DIR`` passed over a FIFO, a socket or a device node no record names in
   silence. It now says it skipped each, and why (``_files/manifest.walk_tree``); one inside a
   recorded directory fails that directory's check, naming it (``_files/manifest._entries``). A
   FIFO is never opened.
3. ``verify-lineage EMPTY_DIR`` (no file, nothing recorded under it) printed "verified", exit 0:
   nothing was checked. It now says so and exits 1, as an unrecorded file target does
   (``_cli/render.unchecked_directories``).

About 20 s at a load of 2 (the PostgreSQL cases start a server once per session).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.faults import without_root_file_powers

#: `run` waits 2 s by default (--ship-wait) for the ledger to take its record, then leaves it
#: in the spool and exits 0: on a loaded machine a setup record (the first makes the ledger's
#: tables) could still be on its way when the test chmods, counts or verifies. The wait is
#: generous, below run_cli's 120 s limit so that `run`'s own message is what a failure shows.
LANDED = ("--ship-wait", "90")


def _recorded(*args: str, cwd: Path, ledger: tuple[str, ...] = ()) -> None:
    """``lineage-ledger run [ledger] ARGS``, its record in the ledger before the test goes on."""
    result = run_cli("run", *ledger, *LANDED, *args, cwd=cwd, check_rc=0)
    assert "did not take it within" not in result.stderr, result.stderr


def _waiting(workdir: Path) -> int:
    result = run_cli("spool", "status", "--json", cwd=workdir, check_rc=0)
    return sum(entry["records"] for entry in json.loads(result.stdout))


def _sqlite_records(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM ll_records").fetchone()[0]
    finally:
        conn.close()


# -- 1. a ledger that refuses writes for good -------------------------------------------------
def _assert_refused_for_good(result: subprocess.CompletedProcess, why: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    text = result.stderr
    assert why in text, text
    assert "lineage-ledger spool ship" in text and "Traceback" not in text, text
    assert "waiting will not" in text, text  # not "locked or slow?": it will not pass by itself


@pytest.mark.parametrize("what", ["file", "directory"])
def test_run_into_a_read_only_sqlite_ledger_exits_1_and_keeps_the_record(workdir, what):
    _recorded("--", "true", cwd=workdir)  # the ledger exists
    db = workdir / ".lineage" / "ledger.db"
    target = db if what == "file" else db.parent
    mode = stat.S_IMODE(target.stat().st_mode)
    os.chmod(target, 0o444 if what == "file" else 0o555)
    try:
        result = run_cli("run", "--", "true", cwd=workdir, prefix=without_root_file_powers())
        _assert_refused_for_good(result, "read-only")
        assert "recorded" in result.stderr and "in the spool" in result.stderr
        shipped = run_cli("spool", "ship", cwd=workdir, prefix=without_root_file_powers())
        _assert_refused_for_good(shipped, "read-only")
        assert "1 record(s)" in shipped.stderr
        failing = run_cli("run", "--", "false", cwd=workdir, prefix=without_root_file_powers())
        assert failing.returncode == 1 and "read-only" in failing.stderr  # the command's own status
        exited = run_cli("run", "--", "sh", "-c", "exit 3", cwd=workdir, prefix=without_root_file_powers())
        assert exited.returncode == 3, exited.stderr
    finally:
        os.chmod(target, mode)
    assert _waiting(workdir) == 3
    run_cli("spool", "ship", cwd=workdir, check_rc=0)  # writable again: all of them go in
    assert _sqlite_records(db) == 4 and _waiting(workdir) == 0


def test_run_into_a_ledger_of_another_schema_exits_1(workdir):
    _recorded("--", "true", cwd=workdir)
    db = workdir / ".lineage" / "ledger.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE ll_meta SET value = '99' WHERE key = 'schema'")
    conn.close()
    result = run_cli("run", "--", "true", cwd=workdir)
    _assert_refused_for_good(result, "ledger schema 99")
    _assert_refused_for_good(run_cli("spool", "ship", cwd=workdir), "ledger schema 99")
    assert _waiting(workdir) == 1


# The transient side of the split (a ledger that is down: exit 0 and "waits", then
# ``spool ship`` exit 2 "1 record(s) wait") is asserted by
# tests/test_cli_spool_first.py::test_run_against_an_unreachable_ledger_runs_and_spools.


@pytest.mark.postgres
def test_run_as_a_postgres_role_that_may_only_read_exits_1_and_keeps_the_record(workdir, postgres_url):
    import psycopg

    _recorded("--", "true", cwd=workdir, ledger=("--ledger", postgres_url))  # the owner makes it
    role = "reader_" + uuid.uuid4().hex[:8]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    reader = postgres_url.replace("ledger@", f"{role}@", 1)
    result = run_cli("run", "--ledger", reader, "--", "true", cwd=workdir)
    _assert_refused_for_good(result, "permission denied")
    shipped = run_cli("spool", "ship", "--ledger", reader, cwd=workdir)
    _assert_refused_for_good(shipped, "permission denied")
    assert _waiting(workdir) == 1
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the administrator grants it
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    run_cli("spool", "ship", "--ledger", reader, cwd=workdir, check_rc=0)
    assert _waiting(workdir) == 0
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM ll_records").fetchone()[0] == 2


@pytest.mark.postgres
def test_run_into_a_read_only_postgres_database_exits_1(workdir, postgres_url):
    import psycopg

    _recorded("--", "true", cwd=workdir, ledger=("--ledger", postgres_url))
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    result = run_cli("run", "--ledger", postgres_url, "--", "true", cwd=workdir)
    _assert_refused_for_good(result, "read-only")
    assert _waiting(workdir) == 1


# -- 2. FIFOs, sockets and devices in a directory given to verify-lineage ---------------------
def _special_files(directory: Path) -> dict[str, str]:
    """A FIFO, a socket, a character device where this user may make one, and a link to
    the FIFO; by name, with the word the report must use for each."""
    os.mkfifo(directory / "pipe")
    made = {"pipe": "FIFO"}
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(directory / "sock"))
    made["sock"] = "socket"
    try:
        os.mknod(directory / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        made["null"] = "device"
    except OSError:  # not root: no device node, the others still count
        pass
    os.symlink("pipe", directory / "to-pipe")
    made["to-pipe"] = "FIFO"
    return made


def test_verify_says_which_special_files_of_a_directory_it_skipped(workdir):
    data = workdir / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    _recorded("-o", "data/a.txt", "--", "true", cwd=workdir)
    made = _special_files(data)
    result = run_cli("data", cwd=workdir, program="verify-lineage")  # a FIFO opened would hang
    assert result.returncode == 0, (result.stdout, result.stderr)  # what could be checked verified
    assert "data/a.txt" in result.stdout and "verified" in result.stdout
    for name, kind in made.items():
        line = next((line for line in result.stderr.splitlines() if line.startswith(f"skipped data/{name}:")), None)
        assert line is not None and kind in line, (name, result.stderr)
    as_json = run_cli("data", "--json", cwd=workdir, program="verify-lineage")
    skipped = {Path(entry["path"]).name: entry["reason"] for entry in json.loads(as_json.stdout)["skipped"]}
    assert set(skipped) == set(made) and all(kind in skipped[name] for name, kind in made.items())


def test_a_fifo_inside_a_recorded_directory_fails_its_check_naming_it(workdir):
    out = workdir / "out"
    out.mkdir()
    (out / "x.txt").write_text("x")
    _recorded("-o", "out", "--", "true", cwd=workdir)
    os.mkfifo(out / "late-pipe")
    for target in ("out", "."):
        result = run_cli(target, cwd=workdir, program="verify-lineage")
        assert result.returncode == 1, (target, result.stdout, result.stderr)
        assert "late-pipe" in result.stdout and "FIFO" in result.stdout, (target, result.stdout)


# -- 3. a directory with nothing in it to check -----------------------------------------------
def test_verify_of_an_empty_directory_says_nothing_was_checked(workdir):
    _recorded("--", "true", cwd=workdir)  # a ledger, nothing under empty/
    (workdir / "empty").mkdir()
    result = run_cli("empty", cwd=workdir, program="verify-lineage")
    assert result.returncode == 1, (result.stdout, result.stderr)  # as for an unrecorded file
    assert "nothing was checked" in result.stdout and "\nverified" not in result.stdout, result.stdout
    data = json.loads(run_cli("empty", "--json", cwd=workdir, program="verify-lineage").stdout)
    assert data["ok"] is False and data["nothing_checked"] == [str(workdir / "empty")]
    # Beside a target that verifies, the empty one still fails the run, named.
    (workdir / "a.txt").write_text("a")
    _recorded("-o", "a.txt", "--", "true", cwd=workdir)
    both = run_cli("a.txt", "empty", cwd=workdir, program="verify-lineage")
    assert both.returncode == 1 and "empty" in both.stdout and "nothing was checked" in both.stdout


def test_verify_of_a_directory_holding_only_a_fifo_says_nothing_was_checked(workdir):
    _recorded("--", "true", cwd=workdir)
    (workdir / "pipes").mkdir()
    os.mkfifo(workdir / "pipes" / "p")
    result = run_cli("pipes", cwd=workdir, program="verify-lineage")
    assert result.returncode == 1 and "nothing was checked" in result.stdout, (result.stdout, result.stderr)
    assert "skipped pipes/p:" in result.stderr


def test_an_empty_recorded_directory_verifies(workdir):
    """An empty directory a record names is checked (its manifest lists nothing): verified."""
    (workdir / "none").mkdir()
    _recorded("-o", "none", "--", "true", cwd=workdir)
    result = run_cli("none", cwd=workdir, program="verify-lineage")
    assert result.returncode == 0 and "nothing was checked" not in result.stdout, result.stdout
