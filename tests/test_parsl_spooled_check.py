"""A cached Parsl output edited while the record that wrote it still waits in the spool.

Run 1 finds its SQLite ledger write-locked (another process holds it): its tries wait in the
spool, as they should ("they wait in the spool ... and ship at the next open"). The output
is then edited outside the workflow, and run 2, with Parsl's checkpoint, would reuse the
task's cached result. The memoizer's pre-run check compares a file with the ledger's record
of it; the ledger had none yet (it was in the spool, shipped by the recording process on a
thread of its own, later), so the file counted as one no record names: ``strict`` reused the
edited output without a word (``from_memo``), ``rerun`` did not run the task again.

Now a run first ships what earlier runs left in the spool (bounded), and a file that a
record still waiting there wrote (the ledger still locked) is checked against that record.

Real Parsl programs in processes of their own; the lock is a real SQLite ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support import parsl as support
from tests.support.faults import hold_write_lock

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

pytestmark = pytest.mark.slow

PROGRAM = """
    import logging, sys
    sys.path.insert(0, {example!r})
    import parsl
    import pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def copy_text(inputs=(), outputs=()):
        with open(inputs[0]) as src, open(outputs[0], "w") as dst:
            dst.write(src.read())
        return "copied"

    def triple(x):
        return 3 * x

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    ledger = ParslLedger({url!r}, policy=sys.argv[1], spool={spool!r})
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger))
    future = python_app(copy_text, cache=True)(inputs=[File({src!r})], outputs=[File({out!r})])
    try:
        print("result", future.result(), "from_memo" if future.task_record["from_memo"] else "ran", flush=True)
    except Exception as err:
        print("refused", type(err).__name__, err, flush=True)
    value = python_app(triple, cache=True)(2)  # a value, vouched for by a record that may wait in the spool
    print("value", value.exception() or value.result(), "from_memo" if value.task_record["from_memo"] else "ran")
    dfk.cleanup()
"""


def _run(workdir: Path, policy: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(workdir / "state")
    done = subprocess.run([sys.executable, str(workdir / "run.py"), policy], capture_output=True, text=True,
                          cwd=workdir, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize(("policy", "lock"), [("strict", "released"), ("strict", "held"), ("rerun", "released")])
def test_an_output_edited_while_its_record_waits_in_the_spool_is_not_reused(tmp_path, policy, lock):
    ledger, spool = tmp_path / "ledger.db", tmp_path / "spool"
    src, out = tmp_path / "src.txt", tmp_path / "out.txt"
    src.write_text("one\ntwo\n")
    (tmp_path / "run.py").write_text(textwrap.dedent(PROGRAM.format(
        example=str(support.EXAMPLE_DIR), url=f"sqlite:///{ledger}", spool=str(spool), workdir=str(tmp_path),
        src=str(src), out=str(out))))
    run_cli("run", "--ledger", str(ledger), "--", "true", cwd=tmp_path, env={"LINEAGE_SPOOL": str(spool),
            "LINEAGE_STATE_DIR": str(tmp_path / "state")}, check_rc=0)
    holder = hold_write_lock(ledger)
    try:
        first = _run(tmp_path, "strict")
        assert "result copied ran" in first.stdout, first.stdout + first.stderr[-3000:]
        assert "wait in the spool" in first.stderr, first.stderr[-3000:]  # not in the ledger: locked
        if lock == "released":
            holder.communicate("")
        out.write_text("edited outside the workflow\n")
        second = _run(tmp_path, policy)
    finally:
        if holder.poll() is None:
            holder.communicate("")
    # The value run 1 checkpointed is reused: its try's record vouches for it, shipped or waiting.
    assert "value 6 from_memo" in second.stdout, second.stdout + second.stderr[-3000:]
    if policy == "strict":
        assert "refused ArtifactMismatch" in second.stdout and str(out) in second.stdout, \
            second.stdout + second.stderr[-3000:]
        assert out.read_text() == "edited outside the workflow\n"  # strict refuses; it does not repair
    else:
        assert "result copied ran" in second.stdout, second.stdout + second.stderr[-3000:]
        assert out.read_text() == "one\ntwo\n"  # made anew
