"""The Snakemake plugin's pure parts: argument splitting, file lists, forced targets, journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("snakemake_logger_plugin_ledger", reason="`make install` installs the Snakemake plugin")

from snakemake_logger_plugin_ledger._jobs import parse_files  # noqa: E402
from snakemake_logger_plugin_ledger._journal import PendingJournal, orphaned, read_journal  # noqa: E402
from snakemake_logger_plugin_ledger._preflight import Plan, forced_outputs  # noqa: E402
from snakemake_logger_plugin_ledger._run import ledger_flags, with_ledger  # noqa: E402
from snakemake_logger_plugin_ledger.cli import absolute_url, split_args  # noqa: E402

from lineage_ledger import ArtifactCheck, ArtifactStatus, TaskRun, utcnow  # noqa: E402


def test_our_flags_come_out_and_the_rest_is_snakemakes():
    ours, rest = split_args(["--cores", "2", "--ledger", "x.db", "--ledger-policy=strict", "target.txt"])
    assert (ours.ledger, ours.ledger_policy) == ("x.db", "strict")
    assert rest == ["--cores", "2", "target.txt"]
    assert split_args(["--cores", "1"])[0].ledger_policy is None  # the plugin's own setting applies
    with pytest.raises(SystemExit):
        split_args(["--ledger-policy", "sometimes"])


def test_the_wrapper_adds_the_ledger_to_the_users_loggers_and_its_flags_before_a_double_dash():
    """What ``_run`` (the exec'd half of ``snakemake-ledger``) does to Snakemake's arguments; the
    real command with a profile's logger and a ``--`` is run by test_snakemake_ledger_wrapper."""
    assert with_ledger(["witness", "ledger"]) == ["witness", "ledger"]
    assert with_ledger(None) == ["ledger"]
    extra = ["--logger-ledger-url", "/l.db"]
    assert ledger_flags(["--cores", "2", "all"], extra) == ["--cores", "2", "all", *extra]
    assert ledger_flags(["--cores", "2", "--", "all"], extra) == ["--cores", "2", *extra, "--", "all"]


def test_relative_ledger_paths_mean_the_invocation_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_url("l.db") == str(tmp_path / "l.db")
    assert absolute_url("sqlite:///rel/l.db") == f"sqlite:///{tmp_path / 'rel' / 'l.db'}"
    assert absolute_url("sqlite:////abs/l.db") == "sqlite:////abs/l.db"
    assert absolute_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert absolute_url(None) is None


def test_snakemake_file_annotations_are_read_but_a_real_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd (name)").write_text("x")
    refs = parse_files(["a.txt", "p.fifo (pipe)", "odd (name)", "s3://b/k (retrieve from storage)", "<pipe>"])
    assert [(os.path.basename(r.path), sorted(r.flags)) for r in refs] == [
        ("a.txt", []), ("p.fifo", ["pipe"]), ("odd (name)", []), ("k", ["retrieve from storage"])]
    assert [r.hashable for r in refs] == [True, False, True, True]


def check(path: str) -> ArtifactCheck:
    return ArtifactCheck(path=path, status=ArtifactStatus.MODIFIED, expected="a" * 64, actual="b" * 64)


def test_rerun_forces_the_producer_or_for_a_source_its_readers():
    plan = Plan(producers={"/w/results/x.tsv": "results/x.tsv"},
                consumers={"/w/data/s.txt": ["work/s.norm.txt", "work/s.other.txt"]})
    plan.tampered = [check("/w/results/x.tsv"), check("/w/data/s.txt")]
    assert forced_outputs(plan) == ["results/x.tsv", "work/s.norm.txt", "work/s.other.txt"]


def test_a_journal_is_removed_only_when_every_job_was_recorded(tmp_path):
    now = utcnow()
    run = TaskRun(task_id="1", task_name="a", status="succeeded", started=now, ended=now, outputs=["/x"])
    kept = PendingJournal(str(tmp_path), "r0", 0.0)
    kept.add("1:1", run)
    kept.close(remove=False)
    journal = PendingJournal(str(tmp_path), "r1", 0.0)
    journal.add("1:1", run)
    journal.done("1:1")
    journal.close(remove=True)
    assert [p.name for p in tmp_path.iterdir()] == ["r0.jsonl"]


def test_the_recording_process_records_a_temp_input_from_its_producer_and_marks_jobs_done(tmp_path):
    """``_sidecar.serve`` as the recording process runs it: job lines in, records and done lines out."""
    import io
    import json

    from snakemake_logger_plugin_ledger._journal import encode_run
    from snakemake_logger_plugin_ledger._sidecar import serve

    from lineage_ledger import hash_file, open_ledger

    temp, final = tmp_path / "t.txt", tmp_path / "f.txt"
    temp.write_text("temp bytes\n")
    now = utcnow()
    produce = TaskRun(task_id="1", task_name="a", status="succeeded", started=now, ended=now,
                      outputs=[str(temp)], known={str(temp): hash_file(temp).entry()}, run_id="side")
    temp.unlink()  # deleted by Snakemake before either record is taken
    final.write_text("final\n")
    consume = TaskRun(task_id="2", task_name="b", status="succeeded", started=now, ended=now,
                      inputs=[str(temp)], outputs=[str(final)], run_id="side")
    journal = PendingJournal(str(tmp_path / "pending"), "side", 0.0)
    lines = [json.dumps({"job": f"{r.task_id}:1", "run": encode_run(r)}, default=str) for r in (produce, consume)]
    for line in lines:
        journal.add_line(line)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    out = io.StringIO()
    # Snakemake reports the producer first; the consumer's record waits for it on the pool.
    summary = serve({"url": url, "run_id": "side", "journal_fd": journal.fileno()}, iter(lines), out)
    assert summary["all_recorded"] and json.loads(out.getvalue()) == summary
    journal.close(remove=False)
    done = [json.loads(x)["done"] for x in open(journal.path) if '"done"' in x]
    assert sorted(done) == ["1:1", "2:1"]
    ledger = open_ledger(url)
    try:
        by_task = {r.record.task_id: r.record for r in ledger.run("side")}
    finally:
        ledger.close()
    assert by_task["2"].inputs[str(temp)] == by_task["1"].outputs[str(temp)]
    assert "unhashed_inputs" not in by_task["2"].extra


def test_a_live_journal_is_not_taken_a_dead_ones_is(tmp_path):
    journal = PendingJournal(str(tmp_path), "live", 0.0)
    assert list(orphaned(str(tmp_path), own_path="")) == []  # its owner holds the lock
    journal.close(remove=True)
    script = (f"from snakemake_logger_plugin_ledger._journal import PendingJournal\n"
              f"from lineage_ledger import TaskRun, utcnow\nimport os, signal\n"
              f"j = PendingJournal({str(tmp_path)!r}, 'dead', 12.5)\nn = utcnow()\n"
              f"j.add('3:1', TaskRun(task_id='3', task_name='b', status='failed', started=n, ended=n))\n"
              f"os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL
    with open(tmp_path / "dead.jsonl", "a") as torn:
        torn.write('{"job": "4:1", "ru')  # the kill landed mid-line
    (path, handle), = orphaned(str(tmp_path), own_path="")
    left = read_journal(path, handle)
    handle.close()
    assert (left.run_id, left.opened) == ("dead", 12.5)
    assert [(r.task_id, r.status) for r in left.pending] == [("3", "failed")]


def test_the_in_process_fallback_records_and_marks_done(tmp_path):
    """What the plugin uses when the recording process cannot start or dies."""
    import json

    from snakemake_logger_plugin_ledger._journal import encode_run
    from snakemake_logger_plugin_ledger._sinks import InProcessSink

    from lineage_ledger import open_ledger

    made = tmp_path / "m.txt"
    made.write_text("made\n")
    now = utcnow()
    run = TaskRun(task_id="5", task_name="m", status="succeeded", started=now, ended=now,
                  outputs=[str(made)], run_id="fallback")
    journal = PendingJournal(str(tmp_path / "pending"), "fallback", 0.0)
    line = json.dumps({"job": "5:1", "run": encode_run(run)}, default=str)
    journal.add_line(line)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    sink = InProcessSink({"url": url, "run_id": "fallback"}, journal)
    sink.send(line)
    assert sink.close()["all_recorded"]
    journal.close(remove=False)
    assert any(json.loads(x).get("done") == "5:1" for x in open(journal.path))
    ledger = open_ledger(url)
    try:
        (rec,) = [r.record for r in ledger.run("fallback")]
    finally:
        ledger.close()
    assert rec.outputs[str(made)]["size"] == 5


def test_the_plugins_copies_of_core_helpers_agree_with_the_core():
    """Snakemake's process does not import lineage_ledger (its start-up cost lands on every
    run), so the plugin carries copies of three small helpers; they must not drift."""
    import json
    from pathlib import PurePosixPath

    from snakemake_logger_plugin_ledger._jobs import code_digest as plugin_code_digest
    from snakemake_logger_plugin_ledger._jobs import json_default, utc, utc_text

    from lineage_ledger import code_digest, format_time, jsonable

    for code in ("echo {input} > {output}", "print('é')\n", b"\x00raw"):
        assert plugin_code_digest(code) == code_digest(code)
    for stamp in (0.0, 1_795_449_262.765539, 1_795_449_262.0, 4_102_444_800.000001):
        assert utc_text(stamp) == format_time(utc(stamp))
    value = {"files": {"b", "a"}, "path": PurePosixPath("x/y"), "raw": b"\xffz", "other": object}
    # The recording process applies jsonable to what the plugin serialised: same result.
    assert jsonable(json.loads(json.dumps(value, default=json_default))) == jsonable(value)


def test_an_sqlite_url_is_judged_without_the_core_and_every_other_url_goes_to_it(tmp_path, monkeypatch):
    """The fast path of the URL check (_urls) accepts only what the core would accept too."""
    from snakemake_logger_plugin_ledger import _refuse_a_bad_configuration
    from snakemake_logger_plugin_ledger._urls import plain_sqlite_path, surely_no_ledger, surely_usable

    monkeypatch.delenv("LINEAGE_LEDGER_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert plain_sqlite_path(None) == ".lineage/ledger.db"  # the core's default
    assert plain_sqlite_path(f"sqlite:///{tmp_path}/l.db") == f"{tmp_path}/l.db"
    assert plain_sqlite_path("lab/ledger.db") == "lab/ledger.db"
    for other in ("postgresql://u@h/db", "sqlite:///x.db?mode=ro", "sqlite://", "memory://x", "c:ledger"):
        assert plain_sqlite_path(other) is None, other  # the core decides these
    monkeypatch.setenv("LINEAGE_LEDGER_URL", "postgresql://u@h/db")
    assert plain_sqlite_path(None) is None
    monkeypatch.delenv("LINEAGE_LEDGER_URL")

    (tmp_path / "adir").mkdir()
    assert surely_usable("l.db") and not surely_usable("adir") and not surely_usable("nosuch://x")
    assert surely_no_ledger("l.db")
    (tmp_path / "l.db").write_bytes(b"")
    assert not surely_no_ledger("l.db")
    # What the fast path leaves alone is refused by the core, as before: exit 2.
    for bad in ("adir", "nosuch://x"):
        with pytest.raises(SystemExit) as stopped:
            _refuse_a_bad_configuration(bad)
        assert stopped.value.code == 2
    assert _refuse_a_bad_configuration("l.db") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_the_recording_process_imports_its_back_end_only_after_the_first_start_digests(tmp_path):
    """The recording process imported its back-end (SQLAlchemy and the driver, for PostgreSQL) as
    it started, on another thread: the import holds the GIL, and on a busy head node it held up
    the first job's start digests (at nice 5, a second late in 3 of 6 runs), which then became
    ``not_verified`` notes. The process as Snakemake starts it (no server is needed: nothing
    connects before a job's record)."""
    import json

    import psutil

    from tests.test_snakemake_while_running import wait_until_idle

    def imported() -> bool:  # SQLAlchemy's compiled modules are mapped
        with open(f"/proc/{process.pid}/maps") as maps:
            return "sqlalchemy" in maps.read()

    (tmp_path / "a.txt").write_text("read by the first job\n")
    config = {"url": "postgresql://nobody@127.0.0.1:9/none", "run_id": "order", "journal_fd": None}
    process = subprocess.Popen([sys.executable, "-m", "snakemake_logger_plugin_ledger._sidecar", json.dumps(config)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_until_idle(psutil.Process(process.pid), 0.5)  # started, waiting for Snakemake's first line
        assert not imported()
        stat = os.stat(tmp_path / "a.txt")
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
        process.stdin.write(json.dumps({"start": 1, "inputs": {str(tmp_path / "a.txt"): key}}) + "\n")
        process.stdin.flush()
        wait_until_idle(psutil.Process(process.pid), 0.2)
        assert imported()  # once the start digests are taken: before the job's end needs it
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and json.loads(out)["all_recorded"]
