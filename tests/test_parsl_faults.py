"""Parsl runs that lose a process mid-task, then go on or run again.

* Parsl's own process killed with SIGKILL while a task runs (after an earlier task ended and
  was checkpointed), then the program run again with Parsl's checkpoint: the ended try of the
  killed run is in the ledger (the recording process outlives Parsl's and ships it), the rerun
  reuses it (a ``cached`` try) and runs the rest, and the lineage verifies.
* An HTEX worker killed with SIGKILL inside an app: Parsl retries the task on a new worker;
  both tries are recorded, the lost one ``failed`` (``WorkerLost``) without outputs, the
  retry ``succeeded`` with the digest the worker took.

Both held before this file; they pin what the plugin promises when processes die.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger import hash_file, open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pytestmark = pytest.mark.slow

PROGRAM = """
    import os, sys, time
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def first(outputs=()):
        with open(outputs[0], "w") as handle:
            handle.write("a\\n")
        return "a"

    def second(marker, inputs=(), outputs=()):
        if not os.path.exists(marker):  # the first run stops here, and is killed
            with open(marker, "w") as handle:
                handle.write("started\\n")
            time.sleep(600)
        with open(inputs[0]) as src, open(outputs[0], "w") as dst:
            dst.write(src.read() * 2)
        return "b"

    ledger = ParslLedger({url!r}, policy="strict")
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger))
    a = python_app(first, cache=True)(outputs=[File({a!r})])
    b = python_app(second, cache=True)({marker!r}, inputs=[a.outputs[0]], outputs=[File({b!r})])
    print(dfk.run_id, flush=True)
    print(a.result(), b.result(), a.task_record["from_memo"], flush=True)
    dfk.cleanup()
"""


def _tries(url: str, run_id: str) -> list:
    with open_ledger(url) as ledger:
        return sorted((e.record.task_name, e.record.attempt, e.record.status) for e in ledger.run(run_id))


def test_a_parsl_run_killed_mid_task_loses_no_ended_try_and_its_rerun_reuses_it(workdir):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    a, b, marker = workdir / "a.txt", workdir / "b.txt", workdir / "marker"
    (workdir / "run.py").write_text(textwrap.dedent(PROGRAM.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir), a=str(a), b=str(b), marker=str(marker))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(workdir / "state")
    before = support.descendants()
    killed = subprocess.Popen([sys.executable, str(workdir / "run.py")], cwd=workdir, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # the second task runs: the first ended and was checkpointed
            assert killed.poll() is None and time.monotonic() < deadline, "the run did not reach its second task"
            time.sleep(0.05)
        recorders = support.descendants(killed.pid)  # the recording process among them
        assert recorders, "Parsl's process started no recording process"
        killed.send_signal(signal.SIGKILL)
        out, _ = killed.communicate(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    first_run = out.split()[0]
    # The recording process outlives Parsl's, journals and ships the ended try, and exits.
    deadline = time.monotonic() + 60
    while any(support.alive(pid) for pid in recorders - before):
        assert time.monotonic() < deadline, "the recording process did not end after Parsl was killed"
        time.sleep(0.1)
    assert _tries(url, first_run) == [("first", 1, "succeeded")]

    again = subprocess.run([sys.executable, str(workdir / "run.py")], cwd=workdir, env=env, capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    second_run, results = again.stdout.splitlines()[0], again.stdout.splitlines()[1]
    assert results == "a b True"  # the first task reused from the checkpoint, the second ran
    assert _tries(url, second_run) == [("first", 1, "cached"), ("second", 1, "succeeded")]
    assert b.read_text() == "a\na\n"
    run_cli("--ledger", url, str(b), program="verify-lineage", cwd=workdir, check_rc=0)


def dies_once(marker: str, outputs=()) -> str:
    """Kills its own worker on its first try (leaving a marker); writes its output on the next."""
    if not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write("first try\n")
        os.kill(os.getpid(), signal.SIGKILL)
    with open(outputs[0].filepath, "w") as handle:
        handle.write("survived\n")
    return "ok"


def test_an_htex_worker_killed_inside_an_app_records_the_lost_try_and_the_retry(workdir, monkeypatch):
    from lineage_ledger_parsl import ParslLedger
    from parsl.app.app import python_app
    from parsl.data_provider.files import File

    support.worker_environment(monkeypatch)
    url = f"sqlite:///{workdir / 'ledger.db'}"
    out = workdir / "out.txt"
    pipeline = support.load_pipeline()
    before = support.descendants()
    ledger = ParslLedger(url, policy="strict")
    with support.loaded(pipeline.make_config(str(workdir), "htex", ledger, workers=1, retries=2)) as dfk:
        app = python_app(dies_once, executors=["htex"])
        assert app(str(workdir / "marker"), outputs=[File(str(out))]).result() == "ok"
        run_id = dfk.run_id
    assert support.wait_no_descendants(before) == {}, "interchange or workers outlived cleanup"
    with open_ledger(url) as opened:
        tries = sorted((e.record for e in opened.run(run_id)), key=lambda r: r.attempt)
    assert [(r.attempt, r.status) for r in tries] == [(1, "failed"), (2, "succeeded")]
    assert "WorkerLost" in tries[0].extra["error"] and not tries[0].outputs
    assert tries[0].task_id == tries[1].task_id
    assert tries[1].outputs[str(out)]["blake3"] == hash_file(str(out)).blake3
    assert tries[1].extra.get("hashed_on") == "worker"
    assert Path(out).read_text() == "survived\n"


def fails_without_writing(outputs=()) -> str:
    raise RuntimeError("gave up before writing anything")


def test_a_failed_try_lists_only_the_outputs_it_wrote(workdir, monkeypatch):
    """A try that fails without writing its output names the file left there before it (a
    previous run's, perhaps edited since) as not written, never as its output: its record
    vouched for those bytes, and counted them as produced in this run. The outputs are judged
    as the try ends: hashed later, a retry's bytes were taken for the failed try's (the htex
    test above failed so under load)."""
    from lineage_ledger_parsl import ParslLedger
    from parsl.app.app import python_app
    from parsl.data_provider.files import File

    url = f"sqlite:///{workdir / 'ledger.db'}"
    out = workdir / "out.txt"
    out.write_text("left by an earlier run, then edited\n")
    old = time.time() - 60
    os.utime(out, (old, old))
    pipeline = support.load_pipeline()
    with support.loaded(pipeline.make_config(str(workdir), "threads", ParslLedger(url, policy="warn"))) as dfk:
        future = python_app(fails_without_writing)(outputs=[File(str(out))])
        with pytest.raises(Exception, match="gave up"):
            future.result()
        run_id = dfk.run_id
    with open_ledger(url) as opened:
        [failed] = [e.record for e in opened.run(run_id)]
    assert failed.status == "failed" and str(out) not in failed.outputs, failed.outputs
    assert failed.extra["outputs_not_written"] == [str(out)], failed.extra


def warm_up() -> str:
    return "up"


def writes_then_fails_once(marker: str, outputs=()) -> str:
    """Writes part of its output and fails on its first try (leaving a marker); the retry
    writes the whole output."""
    with open(outputs[0].filepath, "w") as handle:
        handle.write("partial\n")
    if not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write("first try\n")
        raise RuntimeError("the first try fails after writing part of its output")
    with open(outputs[0].filepath, "w") as handle:
        handle.write("whole\n")
    return "ok"


def test_a_failed_try_is_recorded_with_the_bytes_it_left_not_its_retrys(workdir):
    """A try that wrote part of its output, then failed, is recorded with that output; the
    recording process hashed it once the record was made, by when the retry had rewritten it
    (a real ThreadPoolExecutor, ``retries=1``): the failed try's record named the retry's
    bytes as its own. Here the recording process is stopped (SIGSTOP) while the two tries
    run, as a busy one is, so the retry always wins that race."""
    from blake3 import blake3
    from lineage_ledger_parsl import ParslLedger
    from parsl.app.app import python_app
    from parsl.data_provider.files import File

    url = f"sqlite:///{workdir / 'ledger.db'}"
    out = workdir / "out.txt"
    pipeline = support.load_pipeline()
    ledger = ParslLedger(url, policy="strict")
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger, retries=1)) as dfk:
        assert python_app(warm_up)().result() == "up"  # starts the recording process
        assert ledger.flush(60)
        child = ledger.capture.child_pid
        assert child is not None
        os.kill(child, signal.SIGSTOP)
        try:
            app = python_app(writes_then_fails_once)
            assert app(str(workdir / "marker"), outputs=[File(str(out))]).result() == "ok"
        finally:
            os.kill(child, signal.SIGCONT)
        run_id = dfk.run_id
    assert out.read_text() == "whole\n"
    with open_ledger(url) as opened:
        tries = sorted((e.record for e in opened.run(run_id) if e.record.task_name == "writes_then_fails_once"),
                       key=lambda r: r.attempt)
    assert [(r.attempt, r.status) for r in tries] == [(1, "failed"), (2, "succeeded")]
    assert tries[0].outputs[str(out)]["blake3"] == blake3(b"partial\n").hexdigest(), \
        "the failed try is recorded with bytes its retry wrote"
    assert tries[1].outputs[str(out)]["blake3"] == hash_file(str(out)).blake3
    run_cli("--ledger", url, str(out), program="verify-lineage", cwd=workdir, check_rc=0)
