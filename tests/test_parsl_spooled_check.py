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
Run 1 (under the lock, its tries left in the spool) is made once for the module and put back
before each case (``tests/support/first_run.py``); the ``held`` case takes the lock again
before run 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support import parsl as support
from tests.support.faults import hold_write_lock
from tests.support.first_run import FirstRun

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


def run_with_the_ledger_locked(workdir: Path) -> None:
    """Run 1 (strict) while another process holds the ledger's write lock: its tries wait in
    the spool, its results in Parsl's checkpoint."""
    ledger, spool = workdir / "ledger.db", workdir / "spool"
    src, out = workdir / "src.txt", workdir / "out.txt"
    src.write_text("one\ntwo\n")
    (workdir / "run.py").write_text(textwrap.dedent(PROGRAM.format(
        example=str(support.EXAMPLE_DIR), url=f"sqlite:///{ledger}", spool=str(spool), workdir=str(workdir),
        src=str(src), out=str(out))))
    run_cli("run", "--ledger", str(ledger), "--", "true", cwd=workdir, env={"LINEAGE_SPOOL": str(spool),
            "LINEAGE_STATE_DIR": str(workdir / "state")}, check_rc=0)
    holder = hold_write_lock(ledger)
    try:
        first = _run(workdir, "strict")
        assert "result copied ran" in first.stdout, first.stdout + first.stderr[-3000:]
        assert "wait in the spool" in first.stderr, first.stderr[-3000:]  # not in the ledger: locked
    finally:
        holder.communicate("")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    return FirstRun(tmp_path_factory.mktemp("spooled"), run_with_the_ledger_locked)


@pytest.mark.parametrize(("policy", "lock"), [("strict", "released"), ("strict", "held"), ("rerun", "released")])
def test_an_output_edited_while_its_record_waits_in_the_spool_is_not_reused(first_run, monkeypatch, policy, lock):
    tmp_path = first_run.put_back(monkeypatch)  # run 1's tries still wait in the spool
    out = tmp_path / "out.txt"
    holder = hold_write_lock(tmp_path / "ledger.db") if lock == "held" else None
    try:
        if holder is not None:  # run 1's tries put back as they waited, none shipped since
            status = run_cli("spool", "status", "--json", cwd=tmp_path, check_rc=0,
                             env={"LINEAGE_SPOOL": str(tmp_path / "spool"), "LINEAGE_STATE_DIR": str(tmp_path / "state")})
            assert sum(entry["records"] for entry in json.loads(status.stdout)) >= 2, status.stdout
        out.write_text("edited outside the workflow\n")
        second = _run(tmp_path, policy)
    finally:
        if holder is not None:
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
