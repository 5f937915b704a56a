"""nextflow-ledger and ``storeDir``: the outputs a task stores are its outputs.

Nextflow's ``storeDir`` moves a task's declared outputs out of its work directory into the
store (the ``nxf_unstage_outputs`` function of ``.command.run``) and, on any later run, skips
the task while they are there ("[skipping] Stored process"). The wrapper read the work
directory only: the task's record listed none of the stored files, so ``verify-lineage`` of
a result made from one ended at it as a "(source)", and under ``--ledger-policy rerun`` a
stored file edited with its size and mtime kept made the wrapper move aside only its
readers: Nextflow skipped the storing task (its file was there) and the readers ran again on
the edited file, into the published results.

Real ``nextflow-ledger`` runs (tests/support/nextflow.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support import nextflow as nf
from tests.support.first_run import FirstRun

pytestmark = pytest.mark.slow

PIPELINE = """
process MAKE {
  storeDir 'store'
  output: path 'made.txt'
  script: "echo made > made.txt"
}
process USE {
  publishDir 'results', mode: 'copy'
  input: path m
  output: path 'used.txt'
  script: "cat $m > used.txt; echo used >> used.txt"
}
workflow { USE(MAKE()) }
"""


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    """The pipeline's first run, made once for the tests that start from it, put back with
    its state before each (tests/support/first_run.py)."""
    nf.require_nextflow()
    return FirstRun(tmp_path_factory.mktemp("stored"), lambda root: nf.first_run(root, PIPELINE), project="first")


def _first_run(first_run: FirstRun, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The launch directory of the first run, put back as it left it."""
    return first_run.put_back(monkeypatch) / "pipeline"


def test_a_stored_output_is_the_tasks_and_rerun_makes_it_again(first_run, monkeypatch):
    here = _first_run(first_run, monkeypatch)
    stored = here / "store" / "made.txt"
    (make,) = [r for r in nf.records(here) if r["task_name"] == "MAKE"]
    assert str(stored) in make["outputs"], make["outputs"]
    verified = nf.run("verify-lineage", "results/used.txt", cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    line = next(text for text in verified.stdout.splitlines() if "store/made.txt" in text)
    assert "(source)" not in line and "nextflow:MAKE" in line, verified.stdout

    nf.keep_mtime(stored, lambda: stored.write_text("MADE\n"))  # same size, mtime put back
    nf.refused(here, ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict"), str(stored))
    rerun = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "rerun", cwd=here)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Submitted process > MAKE" in rerun.stdout, rerun.stdout  # made again, not skipped
    assert stored.read_text() == "made\n"
    assert (here / "results" / "used.txt").read_text() == "made\nused\n"
    again = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert again.returncode == 0, again.stdout + again.stderr


WRAPPER = """nxf_unstage_outputs() {
    true
    IFS=$'\\\\n'
    for name in $(eval "ls -1d made.txt 'a b.txt' idx *.log" | sort | uniq); do
        nxf_fs_move "$name" TARGET
    done
    unset IFS
}
"""


def test_what_a_task_stored_is_read_from_its_wrapper(tmp_path):
    """The patterns (quoted, globbed) and the target of ``nxf_unstage_outputs``; only what
    changed since the task began; a directory whole, before its files; a scratch task's
    target (its own work directory) is no store."""
    from lineage_ledger_nextflow._stored import store_of, stored_outputs

    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir()
    store.mkdir()
    for name in ("made.txt", "a b.txt", "old.log", "new.log", "other.txt"):
        (store / name).write_text(name)
    (store / "idx").mkdir()
    (store / "idx" / "part.bin").write_text("p")
    os.utime(store / "old.log", (1_000_000, 1_000_000))  # held before the task began
    wrapper = WRAPPER.replace("TARGET", str(store))
    assert store_of(wrapper) == (["made.txt", "a b.txt", "idx", "*.log"], str(store))
    found = stored_outputs(str(work), wrapper, started=time.time() - 60)
    assert found == [str(store / "idx"), str(store / "made.txt"), str(store / "a b.txt"),
                     str(store / "idx" / "part.bin"), str(store / "new.log")]
    assert stored_outputs(str(work), WRAPPER.replace("TARGET", str(work)), started=None) == []  # scratch
    assert stored_outputs(str(work), "nxf_stage() {\n true\n}\n", started=None) == []


def test_a_run_without_resume_checks_what_the_store_holds(first_run, monkeypatch):
    """Nextflow skips a storeDir task on any run while its files are in the store, with
    ``-resume`` or without: a stored file edited since is refused by ``strict`` and made again
    under ``rerun`` before Nextflow starts, as before a ``-resume``."""
    here = _first_run(first_run, monkeypatch)
    stored = here / "store" / "made.txt"
    nf.keep_mtime(stored, lambda: stored.write_text("MADE\n"))
    nf.refused(here, ("nextflow-ledger", "run", "main.nf", "--ledger-policy", "strict"), str(stored),
               "files changed outside the workflow")
    warned = nf.run("nextflow-ledger", "run", "main.nf", "--ledger-policy", "rerun", cwd=here)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert str(stored) in warned.stderr and "Submitted process > MAKE" in warned.stdout, warned.stdout + warned.stderr
    assert stored.read_text() == "made\n" and (here / "results" / "used.txt").read_text() == "made\nused\n"
    again = nf.run("nextflow-ledger", "run", "main.nf", "--ledger-policy", "strict", cwd=here)
    assert again.returncode == 0 and "[skipping] Stored process > MAKE" in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize("where", ["LINEAGE_STATE_DIR", "XDG_STATE_HOME", "HOME"])
def test_the_list_of_what_was_stored_is_found_before_the_core_is_imported(tmp_path, monkeypatch, where):
    """``stores_listed`` works out the core's state root itself (it runs before Nextflow
    starts): it must find the list ``_state`` keeps, wherever the state root is."""
    from lineage_ledger_nextflow import _state
    from lineage_ledger_nextflow._stored import stores_listed

    for name in ("LINEAGE_STATE_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(where, str(tmp_path / "state"))
    launch, other = tmp_path / "launch", tmp_path / "other"
    launch.mkdir()
    other.mkdir()
    assert not stores_listed(str(launch))
    task = {"process": "MAKE", "workdir": "/nowhere", "status": "succeeded", "outputs": ["/s/m"], "stored": ["/s/m"]}
    _state.save(str(launch), "2f3de1ba-0000-4000-8000-000000000001", {"ab" + "0" * 30: task})
    assert stores_listed(str(launch)) and not stores_listed(str(other))
    assert list(_state.load_stores(str(launch))) == ["ab" + "0" * 30]
