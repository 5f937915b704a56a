"""nextflow-ledger killed with SIGKILL mid-run (the wrapper and Nextflow together), then resumed.

A task's record is journaled in the durable spool when its end is logged, and shipped to the
ledger about once a second: a run killed in between leaves it in the spool, where nothing is
lost. The check before the next ``-resume`` read the ledger only: with no session list (it
is written when a run ends) it plans from the work directory, found no record of the
finished task and counted each of its files as "written by a task the ledger holds no
record of": ``strict`` refused for good (no run ever shipped the spool, since the refusal
came first), ``rerun`` ran it again. The records waiting in the spool are shipped first now,
as the next recorded run would.

Real ``nextflow-ledger`` runs (tests/support/nextflow.py); the ledger is held locked while the
first run goes on, so that its record is sure to wait in the spool when the run is killed.
"""

from __future__ import annotations

import glob
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

PIPELINE = """
process STEP {
  tag "$i"
  input: val i
  output: path "step${i}.txt"
  script: "if [ $i = 2 ] && [ -e ${projectDir}/slow ]; then sleep 300; fi; echo $i > step${i}.txt"
}
workflow { STEP(channel.of(1, 2)) }
"""


def _wait_for(found, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def test_a_record_left_in_the_spool_by_a_killed_run_vouches_for_its_task_on_resume(tmp_path):
    nf.require_nextflow()
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(PIPELINE)
    ledger = here / ".lineage" / "ledger.db"
    (here / "slow").touch()  # STEP (2) is still running when the run is killed
    from lineage_ledger import open_ledger

    open_ledger(str(ledger)).close()
    lock = sqlite3.connect(str(ledger), timeout=0)
    lock.execute("BEGIN EXCLUSIVE")  # the first run's shipments wait: its records stay in the spool
    try:
        first = subprocess.Popen([str(nf.BIN / "nextflow-ledger"), "run", "main.nf"], cwd=here, env=nf.env(here),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _wait_for(lambda: any(os.path.getsize(p) > 0 for p in glob.glob(str(here / ".lineage/spool/*/*.log"))),
                      "record in the spool")
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the wrapper, Nextflow and STEP (2), at once
            first.communicate(timeout=60)
    finally:
        lock.rollback()
        lock.close()
    (step1,) = [Path(p) for p in glob.glob(str(here / "work/*/*/step1.txt"))]
    (here / "slow").unlink()

    resumed = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here,
                     timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Nextflow writes its cache entry of a task apart from its log: killed before that, it
    # runs STEP (1) again; the check must not refuse either way.
    assert "> STEP (1)" in resumed.stdout, resumed.stdout
    assert "holds no record" not in resumed.stderr, resumed.stderr
    records = [r for r in nf.records(here) if r["task_name"] == "STEP" and r["status"] == "succeeded"]
    assert {r["extra"]["name"] for r in records} == {"STEP (1)", "STEP (2)"}
    assert [r["extra"]["workdir"] for r in records].count(str(step1.parent)) == 1  # the killed run's: not lost
    verified = nf.run("verify-lineage", str(step1), cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr


TWO = """
process MAKE {
  output: path 'made.txt'
  script: "echo made > made.txt"
}
process USE {
  input: path m
  output: path 'used.txt'
  script: "cat $m > used.txt"
}
workflow { USE(MAKE()) }
"""


def test_an_output_edited_while_its_record_waits_in_the_spool_is_refused_by_strict(tmp_path):
    """The ledger held write-locked through a run and the next ``-resume``: the run's records
    wait in the spool, the ledger names no file of it, and shipping them first cannot help.
    The core's check compares the files they name with them (no bug found: pinned)."""
    nf.require_nextflow()
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(TWO)
    ledger = here / ".lineage" / "ledger.db"
    from lineage_ledger import open_ledger

    open_ledger(str(ledger)).close()
    lock = sqlite3.connect(str(ledger), timeout=0)
    lock.execute("BEGIN IMMEDIATE")  # writers wait; readers read
    try:
        first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here, timeout=300)
        assert first.returncode == 0 and "wait in the spool" in first.stderr, first.stdout + first.stderr
        (made,) = [p for p in here.glob("work/*/*/made.txt") if not p.is_symlink()]
        nf.keep_mtime(made, lambda: made.write_text("MADE\n"))  # same size, mtime put back
        strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here,
                        timeout=300)
        assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: the edit went unseen
        assert "its record waits in the spool" in strict.stderr and str(made) in strict.stderr, strict.stderr
        assert "Launching" not in strict.stdout
    finally:
        lock.rollback()
        lock.close()
    nf.refused(here, ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict"), str(made))
    assert {r["task_name"] for r in nf.records(here)} == {"MAKE", "USE"}  # shipped: nothing lost
