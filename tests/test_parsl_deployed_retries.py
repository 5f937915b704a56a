"""Retries of a task whose output an earlier run of the workflow recorded.

A research group runs its workflow again on new data (``strict``, ``retries=2``: apps on a
cluster fail now and then). The first try of a task writes part of its output, then fails
(an exception, or its worker killed with SIGKILL: ``WorkerLost``). Its output file now
differs from what the last run recorded, but the workflow changed it, not someone outside
it: the retry must run, not be refused as "changed outside the workflow". Before, the
failed try's record (which names that partial output) was still on its way to the ledger
(write-behind) when the retry's check ran, and ``strict`` refused every retry, so the task
failed with a false tampering error (``warn`` logged one).

A hand edit of the output before the run is still refused.
"""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from lineage_ledger import ArtifactMismatch, hash_file, open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def make_source(tag: str, outputs=()) -> str:
    with open(outputs[0].filepath, "w") as handle:
        handle.write(f"source {tag}\n")
    return tag


def half_then_fail(tag: str, marker: str, how: str, inputs=(), outputs=()) -> str:
    """Writes part of its output; on the first try with ``marker`` unset, then fails (``how``:
    an exception, or SIGKILL of its own worker); otherwise finishes the output."""
    with open(outputs[0].filepath, "w") as handle:
        handle.write(f"partial {tag}\n")
    if marker and not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write("first try\n")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("the first try fails on purpose")
    with open(inputs[0].filepath) as src, open(outputs[0].filepath, "w") as handle:
        handle.write(f"done {tag}: {src.read()}")
    return tag


def _run(workdir, url, tag, *, executor, how, policy="strict", fail=True):
    """One run of the two-task workflow; returns (run id, the second task's result or error)."""
    ledger = ParslLedger(url, policy=policy)
    marker = str(workdir / f"marker-{tag}") if fail else ""
    source, out = File(str(workdir / "source.txt")), File(str(workdir / "out.txt"))
    with support.loaded(pipeline.make_config(str(workdir), executor, ledger, retries=2, workers=1)) as dfk:
        made = python_app(make_source, cache=True, executors=[executor])(tag, outputs=[source])
        done = python_app(half_then_fail, cache=True, executors=[executor])(
            tag, marker, how, inputs=[made.outputs[0]], outputs=[out])
        try:
            outcome: object = done.result()
        except Exception as error:  # noqa: BLE001 - what the user sees
            outcome = error
        run_id = dfk.run_id
    return run_id, outcome


def _tries(url, run_id):
    with open_ledger(url) as ledger:
        return sorted(((e.record.task_name, e.record.attempt, e.record.status, e.record)
                       for e in ledger.run(run_id)), key=lambda t: t[:3])


@pytest.mark.parametrize("policy", ["strict", "warn"])
def test_a_retry_after_a_failed_try_wrote_part_of_its_output_runs(workdir, caplog, policy):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    _, first = _run(workdir, url, "one", executor="threads", how="raise", policy=policy, fail=False)
    assert first == "one"
    caplog.clear()
    run_id, second = _run(workdir, url, "two", executor="threads", how="raise", policy=policy)
    assert second == "two", f"the retry did not run: {second!r}"
    assert (workdir / "out.txt").read_text() == "done two: source two\n"
    assert not [r for r in caplog.records if "changed outside the workflow" in r.getMessage()]
    tries = [(name, attempt, status) for name, attempt, status, _ in _tries(url, run_id)]
    assert tries == [("half_then_fail", 1, "failed"), ("half_then_fail", 2, "succeeded"),
                     ("make_source", 1, "succeeded")]
    last = _tries(url, run_id)[1][3]
    assert last.outputs[str(workdir / "out.txt")]["blake3"] == hash_file(str(workdir / "out.txt")).blake3
    run_cli("--ledger", url, str(workdir / "out.txt"), program="verify-lineage", cwd=workdir, check_rc=0)


@pytest.mark.slow
def test_an_htex_worker_killed_after_writing_part_of_an_output_is_retried_under_strict(workdir, monkeypatch):
    support.worker_environment(monkeypatch)
    url = f"sqlite:///{workdir / 'ledger.db'}"
    assert _run(workdir, url, "one", executor="htex", how="kill", fail=False)[1] == "one"
    run_id, second = _run(workdir, url, "two", executor="htex", how="kill")
    assert second == "two", f"the retry did not run: {second!r}"
    tries = _tries(url, run_id)
    assert [(n, a, s) for n, a, s, _ in tries] == [
        ("half_then_fail", 1, "failed"), ("half_then_fail", 2, "succeeded"), ("make_source", 1, "succeeded")]
    assert "WorkerLost" in tries[0][3].extra["error"]
    run_cli("--ledger", url, str(workdir / "out.txt"), program="verify-lineage", cwd=workdir, check_rc=0)


def test_a_hand_edited_output_is_still_refused_before_the_first_try(workdir):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    assert _run(workdir, url, "one", executor="threads", how="raise", fail=False)[1] == "one"
    (workdir / "out.txt").write_text("edited by hand\n")
    run_id, second = _run(workdir, url, "two", executor="threads", how="raise", fail=False)
    assert isinstance(second, ArtifactMismatch) and "out.txt" in str(second)
    statuses = {(n, a, s) for n, a, s, _ in _tries(url, run_id)}
    assert statuses == {("make_source", 1, "succeeded"), ("half_then_fail", 1, "failed"),
                        ("half_then_fail", 2, "failed"), ("half_then_fail", 3, "failed")}
    assert (workdir / "out.txt").read_text() == "edited by hand\n"
