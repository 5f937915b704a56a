"""A checkpointed Parsl task whose output was deleted between runs.

Parsl's checkpoint (``checkpoint_mode="task_exit"``) keeps a task's result; on the next run
the memoizer reuses it whatever became of the task's output files. The plugin's pre-run
check compares the files that exist with the ledger, so an output that is gone was not
looked at: every policy reused the cached result without a word, its ``cached`` record
quietly listed no output, and the task downstream failed on the missing file
(``BashExitFailure``, ``FileNotFoundError``), far from the cause. A deleted output is a file
changed outside the workflow: ``warn`` says so (and reuses, as for an edited one), ``strict``
refuses the reuse naming it, ``rerun`` runs the task again, which makes it anew.

Real DataFlowKernels (ThreadPoolExecutor, the plugin's wrapper and memoizer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from lineage_ledger import ArtifactMismatch, hash_file, open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def copy_text(inputs: Any = (), outputs: Any = ()) -> str:
    with open(inputs[0]) as src, open(outputs[0], "w") as dst:
        text = src.read()
        dst.write(text)
    return text


def _run(workdir: Path, policy: str) -> tuple[Any, str]:
    ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy=policy)
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)) as dfk:
        future = python_app(copy_text, cache=True)(inputs=[File(str(workdir / "src.txt"))],
                                                   outputs=[File(str(workdir / "out.txt"))])
        future.exception()  # wait; each case asserts what it expects of the outcome
        return future, dfk.run_id


def _records(workdir: Path, run_id: str) -> list:
    with open_ledger(f"sqlite:///{workdir / 'ledger.db'}") as ledger:
        return [entry.record for entry in ledger.run(run_id)]


@pytest.mark.parametrize("policy", ["warn", "strict", "rerun"])
def test_a_cached_task_whose_output_was_deleted_is_refused_redone_or_named(workdir, caplog, policy):
    (workdir / "src.txt").write_text("one\ntwo\n")
    out = workdir / "out.txt"
    first, _ = _run(workdir, "strict")
    assert first.result() == "one\ntwo\n" and first.task_record["from_memo"] is False
    out.unlink()  # deleted outside the workflow; Parsl's checkpoint still holds the result
    caplog.set_level(logging.INFO, logger="lineage_ledger")

    second, run_id = _run(workdir, policy)
    (record,) = _records(workdir, run_id)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("lineage_ledger") and str(out) in r.getMessage()]
    assert said, "nothing said of the deleted output"
    if policy == "strict":
        with pytest.raises(ArtifactMismatch, match="out.txt") as refused:
            second.result()
        assert "gone" in str(refused.value) and "copy_text" in str(refused.value)
        assert not out.exists()  # strict refuses; it does not repair
        assert record.status == "failed" and record.extra["refused_by"] == "strict"
        assert not record.outputs
    elif policy == "rerun":
        assert second.result() == "one\ntwo\n" and second.task_record["from_memo"] is False
        assert out.read_text() == "one\ntwo\n"  # made anew
        assert record.status == "succeeded" and record.extra["rerun_because_modified"] == [str(out)]
        assert record.outputs[str(out)]["blake3"] == hash_file(str(out)).blake3
    else:
        assert second.result() == "one\ntwo\n" and second.task_record["from_memo"] is True  # reused, as Parsl would
        assert record.status == "cached" and not record.outputs
        assert record.extra["modified_outside_workflow"] == [str(out)]


def test_with_worker_hashing_an_output_the_submit_host_does_not_see_is_not_called_gone(workdir, caplog):
    """``WorkerHashingStaging`` is for workers whose files the submit host may not see (no
    shared file system): there a cached result's outputs are never on the submit host, and
    calling them gone would refuse (strict) or rerun every cache hit. The submit host's
    view is simulated by deleting the output after the first run."""
    from lineage_ledger_parsl import WorkerHashingStaging
    from parsl.config import Config
    from parsl.executors import ThreadPoolExecutor

    (workdir / "src.txt").write_text("one\n")
    out = workdir / "out.txt"
    for n in (1, 2):
        ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy="strict", file_key="path")
        threads = ThreadPoolExecutor(label="threads", max_threads=2, storage_access=[WorkerHashingStaging()])
        config = Config(executors=[ledger.wrap(threads)], memoizer=ledger.memoizer(checkpoint_mode="task_exit"),
                        run_dir=str(workdir / "runinfo"), usage_tracking=0)
        with support.loaded(config):
            future = python_app(copy_text, cache=True)(inputs=[File(str(workdir / "src.txt"))],
                                                       outputs=[File(str(out))])
            assert future.result() == "one\n"
            assert future.task_record["from_memo"] is (n == 2)
        if n == 1:
            out.unlink()  # as the submit host of a cluster without a shared file system sees it
    assert not [r for r in caplog.records if r.name.startswith("lineage_ledger") and "gone" in r.getMessage()]
