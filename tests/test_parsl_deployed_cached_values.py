"""A cached *return value* reused from Parsl's checkpoint, checked against the ledger.

The pre-run check compares a cache hit's files with the ledger, but a value-only app has no
files: what it hands the next task is the value in ``runinfo/NNN/checkpoint/tasks.pkl``.
Before, a value edited there (by hand, or corrupted), or one that no recorded try made (a
checkpoint plain Parsl wrote, without the ledger), was reused under every policy, ``strict``
included. Now each try records the digest of the checkpoint entry Parsl writes for it
(``extra["memo_result"]``), and a value loaded from a checkpoint is reused only where a
recorded try of its run made that very entry: ``strict`` refuses the reuse, ``rerun`` runs the
task again, ``warn`` says so and reuses it (its ``cached`` record vouches for nothing).
"""

from __future__ import annotations

import logging
import pickle

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402

from lineage_ledger import ArtifactMismatch, open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def triple(x: int) -> int:
    return 3 * x


def _run(workdir, policy: str | None):
    """One DataFlowKernel (a fresh ``parsl.load``) computing ``triple(2)`` with Parsl's
    checkpoint on; ``policy`` None is plain Parsl. Returns (value or error, from_memo)."""
    ledger = None if policy is None else ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy=policy)
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
        future = python_app(triple, cache=True)(2)
        error = future.exception()
        return (error if error is not None else future.result()), future.task_record["from_memo"]


def _rewrite_checkpoints(workdir, value: int) -> int:
    """What a hand edit does: every entry of every checkpoint now holds ``value`` (the files
    stay this user's, mode unchanged). Returns how many entries were rewritten."""
    count = 0
    for checkpoint in sorted((workdir / "runinfo").glob("*/checkpoint/tasks.pkl")):
        entries = []
        with open(checkpoint, "rb") as handle:
            while True:
                try:
                    entries.append(pickle.load(handle))  # noqa: S301 - the test's own file
                except EOFError:
                    break
        with open(checkpoint, "wb") as handle:
            for entry in entries:
                pickle.dump({**entry, "result": value}, handle)
                count += 1
    return count


def test_a_cached_value_no_recorded_try_made_is_refused_rerun_or_said(workdir, caplog):
    caplog.set_level(logging.WARNING, logger="lineage_ledger")
    # Plain Parsl checkpoints the value; no record of the ledger made it.
    assert _run(workdir, None) == (6, False)
    refused, from_memo = _run(workdir, "strict")
    assert isinstance(refused, ArtifactMismatch), f"strict reused a value no recorded try made: {refused!r}"
    assert "value" in str(refused) and "checkpoint" in str(refused)
    # rerun runs it again; its try vouches for the value it checkpoints, which strict then reuses.
    assert _run(workdir, "rerun") == (6, False)
    assert _run(workdir, "strict") == (6, True)
    # A hand edit of the value in every checkpoint: strict refuses it, warn says so and reuses it.
    assert _rewrite_checkpoints(workdir, 7) >= 2
    refused, _ = _run(workdir, "strict")
    assert isinstance(refused, ArtifactMismatch), f"strict reused an edited cached value: {refused!r}"
    caplog.clear()
    assert _run(workdir, "warn") == (7, True)
    said = [r.getMessage() for r in caplog.records if "triple" in r.getMessage()]
    assert said and "not one a recorded try" in said[0], said
    with open_ledger(f"sqlite:///{workdir / 'ledger.db'}") as ledger:
        records = [e.record for e in ledger.recent(0) if e.record.task_name == "triple"]
    refusals = [r for r in records if r.status == "failed"]
    assert len(refusals) == 2 and all(r.extra.get("refused_by") == "strict" for r in refusals)
    vouched = [r for r in records if r.status in ("succeeded", "cached") and r.extra.get("memo_result")]
    # The rerun's try and the strict cache hit after it vouch; the warned cache hit does not.
    assert len(vouched) == 2, [(r.status, r.extra) for r in records]
    assert records[-1].status == "cached" and "memo_result" not in records[-1].extra
    assert records[-1].extra.get("result_not_verified")


def test_a_join_apps_cached_value_is_checked_too(workdir):
    """A join app's outer app runs on Parsl's internal executor, which records nothing: its
    value, reused from the checkpoint on the next run (its inner apps never launched), was
    checked by nothing. The memoizer records the outer app's end (``extra["join"]``), which
    vouches for the value it checkpoints."""
    from parsl.app.app import join_app

    def gather(x: int):
        return python_app(triple, cache=True)(x)

    def run(policy: str):
        ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy=policy)
        with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
            future = join_app(gather, cache=True)(2)
            error = future.exception()
            return (error if error is not None else future.result()), future.task_record["from_memo"]

    assert run("strict") == (6, False)
    assert run("strict") == (6, True)  # vouched for by the outer app's record
    assert _rewrite_checkpoints(workdir, 7) >= 3
    refused, _ = run("strict")
    assert isinstance(refused, ArtifactMismatch), f"strict reused a join app's edited cached value: {refused!r}"
    with open_ledger(f"sqlite:///{workdir / 'ledger.db'}") as ledger:
        joins = [e.record for e in ledger.recent(0) if e.record.task_name == "gather" and e.record.extra.get("join")]
    assert [r.status for r in joins] == ["succeeded"] and joins[0].extra["executor"] == "_parsl_internal"


_KILLED_BEFORE_CLEANUP = """
import os, sys
sys.path.insert(0, {example!r})
import parsl, pipeline
from parsl.app.app import python_app
from lineage_ledger_parsl import ParslLedger

def triple(x):
    return 3 * x

ledger = ParslLedger({url!r}, policy="strict")
config = pipeline.make_config({workdir!r}, "threads", ledger)
config.memoizer.inner.checkpoint_mode = "dfk_exit"  # Parsl writes tasks.pkl at cleanup only
parsl.load(config)
print(python_app(triple, cache=True)(2).result(), flush=True)
os._exit(0)  # killed before its cleanup: no checkpoint written
"""


def test_a_run_killed_before_its_dfk_exit_checkpoint_leaves_nothing_that_stops_the_next(workdir):
    """With ``checkpoint_mode="dfk_exit"`` Parsl writes ``tasks.pkl`` at cleanup. A run killed
    before it must leave no ``checkpoint/`` directory without one: Parsl (and the memoizer)
    load every such directory, and a missing ``tasks.pkl`` fails ``parsl.load`` with
    ``BadCheckpoint``, so the workflow could not start again."""
    import subprocess
    import sys

    program = _KILLED_BEFORE_CLEANUP.format(example=str(support.EXAMPLE_DIR), url=f"sqlite:///{workdir / 'ledger.db'}",
                                            workdir=str(workdir))
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=workdir, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "6", done.stderr[-3000:]
    assert _run(workdir, "strict") == (6, False)  # nothing to reuse, and nothing that stops the run
    assert _run(workdir, None) == (6, True)  # nor plain Parsl, which loads the same directories
