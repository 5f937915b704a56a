"""TaskCapture's batching worker: order, exit draining, fork, parallel hashing, post()."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta

import pytest

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow


def task(task_id, inputs=(), outputs=(), **kw):
    now = utcnow()
    return TaskRun(task_id=task_id, task_name=f"step-{task_id}", status="succeeded",
                   started=now - timedelta(seconds=1), ended=now, inputs=inputs, outputs=outputs, **kw)


class Hold:
    """An ``extra`` value whose spelling waits for ``gate``: it keeps the worker busy while
    a test queues a backlog behind it."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def __str__(self) -> str:
        self.gate.wait(10)
        return "held"


def test_posted_and_submitted_tasks_are_all_recorded_and_flush_waits_for_them(Capture, url, spool):
    capture = Capture(url, engine="test", run_id="r", spool=spool)
    futures = []
    for i in range(300):
        if i % 3:
            assert capture.post(task(str(i))) is None
        else:
            futures.append(capture.submit(task(str(i))))
    assert capture.flush(timeout=60)
    assert all(f.done() and f.result() is not None for f in futures)
    assert capture.close(timeout=60)
    with open_ledger(url, spool=spool) as ledger:
        assert sorted(int(e.record.task_id) for e in ledger.run("r")) == list(range(300))


def test_a_gone_input_recalls_its_producer_from_the_same_batch(Capture, tmp_path, url, spool):
    """A batch's files are hashed in parallel, but gone inputs are recalled in submission
    order: a consumer queued right behind its producer finds the producer's digest."""
    gate = threading.Event()
    capture = Capture(url, engine="test", run_id="r", spool=spool, threads=4)
    capture.post(task("gate", extra={"hold": Hold(gate)}))
    expected = {}
    for i in range(6):
        mid = str(tmp_path / f"mid{i}.txt")  # a temp() file: gone before either is reported
        final = tmp_path / f"final{i}.txt"
        final.write_text(f"final {i}")
        expected[mid] = {"blake3": f"{i:02d}" * 32, "size": i}
        capture.submit(task(f"produce{i}", [], [mid], known={mid: expected[mid]}))
        capture.submit(task(f"consume{i}", [mid], [str(final)]))
    gate.set()
    assert capture.close(timeout=60)
    with open_ledger(url, spool=spool) as ledger:
        records = {e.record.task_id: e.record for e in ledger.run("r")}
    for i, (mid, entry) in enumerate(expected.items()):
        consumer = records[f"consume{i}"]
        assert consumer.inputs[mid] == entry
        assert consumer.extra["recalled_inputs"] == {mid: "capture"}


def test_files_of_a_backlog_are_hashed_on_several_threads(tmp_path, url, spool, monkeypatch):
    import lineage_ledger._capture.files as capture_module

    seen: set[str] = set()
    real = capture_module.hash_file
    release = threading.Event()

    def slow_hash(path):
        seen.add(threading.current_thread().name)
        release.wait(0.2)  # long enough for the other hashing threads to pick up work
        return real(path)

    monkeypatch.setattr(capture_module, "hash_file", slow_hash)
    paths = []
    for i in range(8):
        (tmp_path / f"f{i}.txt").write_text(str(i))
        paths.append(str(tmp_path / f"f{i}.txt"))
    capture = TaskCapture(url, engine="test", run_id="r", spool=spool, threads=3)
    gate = threading.Event()
    capture.post(task("gate", extra={"hold": Hold(gate)}))
    futures = [capture.submit(task(str(i), [], [p])) for i, p in enumerate(paths)]
    gate.set()
    assert all(f.result(timeout=60) for f in futures)
    capture.close(timeout=60)
    assert all(name.startswith("lineage-capture") for name in seen)
    assert len(seen) > 1, seen  # hash-threads still means something

    single = TaskCapture(url, engine="test", run_id="r1", spool=spool, threads=1)
    seen.clear()
    gate.clear()
    single.post(task("gate", extra={"hold": Hold(gate)}))
    futures = [single.submit(task(f"one-{i}", [], [p])) for i, p in enumerate(paths)]
    gate.set()
    assert all(f.result(timeout=60) for f in futures)
    single.close(timeout=60)
    assert seen == {"lineage-capture"}


def test_a_normal_exit_records_everything_still_queued(Capture, tmp_path, url, spool):
    script = textwrap.dedent(f"""
        from datetime import timezone, datetime
        from lineage_ledger import {Capture.__name__}, TaskRun
        now = datetime.now(timezone.utc)
        capture = {Capture.__name__}({url!r}, engine="test", run_id="exit", spool={spool!r})
        for i in range(500):
            capture.post(TaskRun(str(i), "t", "succeeded", now, now))
        # no flush, no close: the interpreter's exit must drain the worker and the recorder
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with open_ledger(url, spool=spool) as ledger:
        assert len(ledger.run("exit")) == 500


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_records_through_its_own_worker(Capture, tmp_path, url, spool):
    script = textwrap.dedent(f"""
        import os, sys
        from datetime import timezone, datetime
        from lineage_ledger import {Capture.__name__}, TaskRun
        now = datetime.now(timezone.utc)
        capture = {Capture.__name__}({url!r}, engine="test", run_id="fork", spool={spool!r})
        assert capture.submit(TaskRun("parent-1", "t", "succeeded", now, now)).result(timeout=30)
        pid = os.fork()
        if pid == 0:
            ok = capture.submit(TaskRun("child", "t", "succeeded", now, now)).result(timeout=30)
            ok = ok and capture.close(timeout=30)
            os._exit(0 if ok else 3)
        capture.post(TaskRun("parent-2", "t", "succeeded", now, now))
        _, status = os.waitpid(pid, 0)
        assert capture.close(timeout=30)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with open_ledger(url, spool=spool) as ledger:
        assert sorted(e.record.task_id for e in ledger.run("fork")) == ["child", "parent-1", "parent-2"]


def test_raise_errors_reaches_the_future_and_post_logs(Capture, tmp_path, url, spool, caplog):
    capture = Capture(url, engine="test", spool=spool, raise_errors=True)
    bad = task("x")
    bad.status = "exploded"
    with pytest.raises(ValueError, match="status must be one of"):
        capture.submit(bad).result(timeout=30)
    capture.post(bad)
    assert capture.flush(timeout=30)
    assert capture.failures == 1 and "could not record task step-x" in caplog.text
    capture.close()
