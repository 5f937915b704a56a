"""TaskCapture and verify_before_run: what every engine plugin records and checks through."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lineage_ledger import (
    ArtifactMismatch,
    TaskCapture,
    TaskRun,
    canonical_bytes,
    code_digest,
    hash_file,
    jsonable,
    open_ledger,
    utcnow,
    verify_before_run,
    verify_lineage,
)


def task(task_id, inputs=(), outputs=(), status="succeeded", **kw):
    now = utcnow()
    return TaskRun(task_id=task_id, task_name=f"step-{task_id}", status=status,
                   started=now - timedelta(seconds=1), ended=now, inputs=inputs, outputs=outputs, **kw)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_submitted_tasks_land_with_digests_and_verify(Capture, tmp_path, url, spool):
    raw = write(tmp_path / "raw.txt", "1\n2\n")
    clean = write(tmp_path / "clean.txt", "1\n")
    capture = Capture(url, engine="test", run_id="r1", spool=spool)
    future = capture.submit(task("a", [raw], [clean], code_digest=code_digest("cut -f1"),
                                 parameters={"cols": (1, 2), "where": tmp_path}))
    assert future.result(timeout=30) is not None
    assert capture.close(timeout=30)
    with open_ledger(url, spool=spool) as ledger:
        [entry] = ledger.run("r1")
        record = entry.record
        assert record.inputs[raw]["blake3"] == hash_file(raw).blake3
        assert record.outputs[clean] == hash_file(clean).entry()
        assert record.code_digest == code_digest("cut -f1")
        assert record.parameters == {"cols": [1, 2], "where": str(tmp_path)}
        assert record.environment["python"]
        assert verify_lineage(ledger, [clean]).ok


def test_deleted_temp_input_takes_the_digest_its_producer_recorded(Capture, tmp_path, url, spool):
    tmp = write(tmp_path / "tmp.txt", "intermediate")
    final = write(tmp_path / "final.txt", "done")
    digest = hash_file(tmp).blake3
    capture = Capture(url, engine="test", run_id="r1", spool=spool,
                          recorder_options={"max_age": 30})  # nothing shipped before the consumer
    capture.submit(task("producer", [], [tmp])).result(timeout=30)
    os.remove(tmp)
    capture.submit(task("consumer", [tmp], [final])).result(timeout=30)
    capture.close(timeout=30)
    # A later capture (another process) finds it in the ledger instead of its memory.
    final2 = write(tmp_path / "final2.txt", "again")
    with TaskCapture(url, engine="test", run_id="r2", spool=spool) as later:
        later.submit(task("consumer2", [tmp], [final2])).result(timeout=30)
    assert capture.recorded_digest(tmp) == {"blake3": digest, "size": len("intermediate")}
    assert capture.recorded_digest(str(tmp_path / "unknown.txt")) is None
    with open_ledger(url, spool=spool) as ledger:
        consumer = {e.record.task_id: e.record for e in ledger.run("r1")}["consumer"]
        assert consumer.inputs[tmp]["blake3"] == digest
        assert consumer.extra["recalled_inputs"] == {tmp: "capture"}
        [again] = ledger.run("r2")
        assert again.record.inputs[tmp]["blake3"] == digest
        assert again.record.extra["recalled_inputs"] == {tmp: "ledger"}
        assert verify_lineage(ledger, [final]).ok


def test_known_digests_win_and_gone_files_are_listed(Capture, tmp_path, url, spool):
    src = write(tmp_path / "src.txt", "now")
    known = {src: {"blake3": "ab" * 32, "size": 3}}
    with Capture(url, engine="test", run_id="r", spool=spool) as capture:
        capture.submit(task("a", [src, str(tmp_path / "never.txt")], [str(tmp_path / "out.txt")],
                            status="failed", known=known)).result(timeout=30)
    with open_ledger(url, spool=spool) as ledger:
        [entry] = ledger.run("r")
        assert entry.record.inputs[src]["blake3"] == "ab" * 32
        assert entry.record.status == "failed"
        assert entry.record.extra["unhashed_inputs"] == [str(tmp_path / "never.txt")]
        assert entry.record.extra["missing_outputs"] == [str(tmp_path / "out.txt")]


def test_errors_are_logged_not_raised_unless_asked(Capture, tmp_path, url, spool, caplog):
    unreadable = tmp_path / "fifo-not-file"  # a directory is recorded now (tests/test_directories.py)
    os.mkfifo(unreadable)
    with Capture(url, engine="test", spool=spool) as capture, caplog.at_level(logging.ERROR):
        assert capture.submit(task("a", [], [str(unreadable)])).result(timeout=30) is None
        assert capture.submit(task("b", status="exploded")).result(timeout=30) is None
        assert capture.failures == 2
    assert "could not record task step-a (a)" in caplog.text and "is not a regular file" in caplog.text
    strict = Capture(url, engine="test", spool=spool, raise_errors=True)
    with pytest.raises(ValueError, match="status must be one of"):
        strict.record_now(task("c", status="exploded"))
    strict.close()


def test_record_now_survives_os_exit(tmp_path, url, spool):
    out = write(tmp_path / "out.txt", "result")
    script = textwrap.dedent(f"""
        import os
        from datetime import timezone, datetime
        from lineage_ledger import TaskCapture, TaskRun
        now = datetime.now(timezone.utc)
        capture = TaskCapture({url!r}, engine="test", run_id="exit", spool={spool!r},
                              recorder_options={{"max_age": 60}})
        capture.record_now(TaskRun("t", "t", "succeeded", now, now, outputs=[{out!r}]))
        os._exit(0)  # as Airflow's task runner does: no thread is joined, no atexit runs
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with open_ledger(url, spool=spool) as ledger:  # replays the dead process's spool
        [entry] = ledger.run("exit")
        assert entry.record.outputs[out]["blake3"] == hash_file(out).blake3


def test_verify_before_run_applies_each_policy(tmp_path, url, spool, caplog):
    out = write(tmp_path / "out.txt", "original")
    untouched = write(tmp_path / "other.txt", "fine")
    with TaskCapture(url, engine="test", spool=spool) as capture:
        capture.record_now(task("a", [], [out, untouched]))
    stat = os.stat(out)
    write(tmp_path / "out.txt", "tampered")
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # keep the mtime, as `touch -r` does
    unrecorded = write(tmp_path / "new.txt", "nobody made me")
    paths = [out, untouched, unrecorded, str(tmp_path / "gone.txt")]
    with open_ledger(url, spool=spool) as ledger:
        with pytest.raises(ArtifactMismatch, match="out.txt: MODIFIED"):
            verify_before_run(ledger, paths, "strict")
        with caplog.at_level(logging.WARNING):
            [warned] = verify_before_run(ledger, paths, "warn")
        assert warned.path == out and "changed outside the workflow" in caplog.text
    [rerun] = verify_before_run(url, paths, "rerun")  # a URL works too
    assert rerun.path == out and rerun.expected != rerun.actual


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.frozensets(st.integers())
    | st.dictionaries(st.integers() | st.text(), inner),
    max_leaves=20,
))
def test_jsonable_always_has_a_canonical_encoding(value):
    once = jsonable(value)
    assert canonical_bytes(once) == canonical_bytes(jsonable(once))  # stable: a fixed point


def test_a_read_of_an_edited_file_does_not_vouch_for_the_edit(Capture, tmp_path, url, spool):
    """Under `warn`, a consumer runs on an edited intermediate and records what it read.
    The next strict check must still compare the file with what its producer wrote."""
    src = write(tmp_path / "src.txt", "source")
    mid = write(tmp_path / "mid.txt", "produced")
    with Capture(url, engine="test", spool=spool) as capture:
        capture.record_now(task("produce", [src], [mid]))
        assert capture.flush(timeout=30)
        write(tmp_path / "mid.txt", "edited by hand")
        assert [c.path for c in verify_before_run(capture.ledger, [src, mid], "warn")] == [mid]
        capture.record_now(task("consume", [mid], [write(tmp_path / "out.txt", "derived")]))
    with pytest.raises(ArtifactMismatch, match="mid.txt: MODIFIED since it was last written by"):
        verify_before_run(url, [src, mid], "strict")
    # A source nobody produced compares with its last read: edited sources are caught too.
    write(tmp_path / "src.txt", "new source")
    with pytest.raises(ArtifactMismatch, match="src.txt: MODIFIED since it was last read by"):
        verify_before_run(url, [src], "strict")


def test_a_naive_time_is_refused_when_the_task_run_is_made_not_dropped_by_the_worker(tmp_path):
    """A TaskRun with a naive time was accepted by post(), then the capture's worker logged an
    error and dropped the record: the task was never recorded, and the caller never knew. The
    caller is told where it made the mistake, and a run with aware times is recorded."""
    from datetime import datetime, timezone

    url = f"sqlite:///{tmp_path}/ledger.db"
    naive = datetime.now()
    with pytest.raises(ValueError, match="naive datetime"):
        TaskRun(task_id="t", task_name="t", status="succeeded", started=naive, ended=naive)
    with pytest.raises(TypeError, match="must be a datetime"):
        TaskRun(task_id="t", task_name="t", status="succeeded", started="2026-12-06T10:00:00Z", ended=utcnow())
    aware = naive.astimezone()  # the local zone, made explicit: stored as UTC
    with TaskCapture(url, engine="test", run_id="r", spool=str(tmp_path / "spool")) as capture:
        capture.post(TaskRun(task_id="t", task_name="t", status="succeeded", started=aware, ended=aware))
        capture.flush()
    with open_ledger(url, read_only=True) as ledger:
        record, = [entry.record for entry in ledger.run("r")]
        assert record.started == aware.astimezone(timezone.utc)
