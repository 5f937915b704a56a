"""Nextflow's own files in a task's work directory, and links that lead out of a staged one.

Nextflow writes its wrapper beside the task's files: ``.command.run`` (which exports the
``env`` scope of the configuration: a token there is in it), ``.command.sh``, ``.command.log``
(which a grid executor appends to after ``.exitcode`` is written), ``.exitcode``, ... None of
them is the task's output: no record, and no manifest, may name them (a digest of a file that
holds a guessable secret gives the secret away to whoever reads the ledger), and a change of
them after the task ended is no change of its results. A task's own file of such a name, in a
directory it made, is its output like any other. ``.command.out`` and ``.command.env`` hold
the task's ``stdout`` and ``env`` outputs, which a ``-resume`` hands on from the cached work
directory: they are outputs.

(A staged directory that holds a link to a large tree elsewhere, ``/usr``, giving the files in
the directory and never those of that tree, is checked in test_nextflow_link_walks, with the
links to ``/`` and to the directory's parent, by the same two Nextflow runs.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _state

from tests.support import nextflow as nf
from tests.support.first_run import FirstRun

pytestmark = pytest.mark.slow  # real Nextflow runs

#: Seconds a run may take: one of these pipelines takes 5-10 s (generous, for a loaded machine).
HANG = 240

#: MAKE's ``idx`` is a link to a directory elsewhere (the task's only link at the top), its
#: ``outdir`` holds files of its own named like Nextflow's, and it prints ``said`` (its
#: ``stdout`` output) and sets ``FOO`` (its ``env`` output). USE reads all three.
WRAPPED = """
params.refs = null
process MAKE {
  output: path 'idx'
  output: path 'outdir'
  output: stdout
  output: env 'FOO'
  script:
  \"\"\"
  ln -s ${params.refs} idx
  mkdir -p outdir/sub
  echo mine > outdir/.command.log
  echo mine too > outdir/sub/.command.sh
  echo 1 > outdir/sub/.exitcode
  printf said
  FOO=bar
  \"\"\"
}
process USE {
  input: path i
  input: path d
  input: val said
  input: val foo
  output: path 'used.txt'
  script: "cat ${i}/* ${d}/.command.log > used.txt; echo '${said} ${foo}' >> used.txt"
}
workflow {
  (idx, outdir, said, foo) = MAKE()
  USE(idx, outdir, said, foo)
}
"""

#: The ``env`` scope: Nextflow exports it in every task's ``.command.run``.
CONFIG = "env { MYTOKEN = 'hunter2-secret' }\n"

NEXTFLOWS = {".command.run", ".command.sh", ".command.log", ".command.err", ".command.begin", ".exitcode",
             ".command.trace"}


def _made_in(here: Path) -> Path:
    """MAKE's work directory."""
    (made_in,) = [p.parent for p in (here / "work").glob("*/*/idx") if not (p.parent / "outdir").is_symlink()]
    return made_in


def _run_once(tmp_path: Path) -> None:
    here, _refs, _resume = nf.first_run_with_refs(tmp_path, WRAPPED, config=CONFIG, timeout=HANG)
    assert "hunter2-secret" in (_made_in(here) / ".command.run").read_text()  # what the test is about


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    """The pipeline's first run, made once for the tests that start from it, put back with
    its state before each (tests/support/first_run.py)."""
    nf.require_nextflow()
    return FirstRun(tmp_path_factory.mktemp("wrapped"), _run_once, project="first")


def _first_run(first_run: FirstRun, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path, tuple[str, ...]]:
    """(the first run's directory, in place of tmp_path; launch directory, MAKE's work
    directory, the strict -resume command)."""
    root = first_run.put_back(monkeypatch)
    here = root / "pipeline"
    resume = ("nextflow-ledger", "run", "main.nf", "--refs", str(root / "refs"), "-resume", "--ledger-policy", "strict")
    return root, here, _made_in(here), resume


def test_nextflow_files_are_in_no_record_and_the_tasks_own_are(first_run, monkeypatch):
    root, here, made_in, _resume = _first_run(first_run, monkeypatch)
    everything = [json.loads(line) for line in
                  nf.run("lineage-ledger", "log", "-n", "0", "--all", "--json", cwd=here).stdout.splitlines()]
    for record in everything:
        for path in map(Path, [*record.get("inputs", {}), *record.get("outputs", {})]):
            assert path.parent.parent != here / "work", path  # a work directory, whole
            assert not (path.name in NEXTFLOWS and path.parent.parent.parent == here / "work"), path
    (make,) = [r for r in everything if r.get("task_name") == "MAKE"]
    outdir = made_in / "outdir"
    for mine in (outdir / ".command.log", outdir / "sub" / ".command.sh", outdir / "sub" / ".exitcode"):
        assert str(mine) in make["outputs"], sorted(make["outputs"])
    entries = [entry[:2] for entry in nf.manifest_entries(here, make["outputs"][str(outdir)]["blake3"])]
    assert [".command.log", "file"] in entries and ["sub/.exitcode", "file"] in entries  # the task's own
    assert {str(made_in / ".command.out"), str(made_in / ".command.env")} <= set(make["outputs"])
    assert make["extra"]["links"] == {"idx": str(root / "refs")}  # the link, by its target text


def test_a_late_append_to_the_log_is_no_change_and_the_tasks_own_changes_are(first_run, monkeypatch):
    """A grid executor appends to ``.command.log`` after ``.exitcode``: a strict ``-resume``
    reuses both tasks all the same. The link re-pointed, or the task's ``stdout`` edited (its
    size and mtime kept: Nextflow hands the edited value on), is refused; also planned
    without the session's list, which then passes another late append too."""
    root, here, made_in, resume = _first_run(first_run, monkeypatch)
    with open(made_in / ".command.log", "a") as log:
        log.write("slurm: job 42 epilogue ran\n")
    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Cached process > USE" in clean.stdout

    nf.relink(made_in / "idx", root / "elsewhere")
    nf.refused(here, resume, f"{made_in / 'idx'}: ", str(root / "elsewhere"))
    nf.relink(made_in / "idx", root / "refs")
    nf.keep_mtime(made_in / ".command.out", lambda: (made_in / ".command.out").write_text("sail"))
    nf.refused(here, resume, f"{made_in / '.command.out'}: changed since the last recorded run")

    # Without the session's list, the check planned from the work directory and the records.
    shutil.move(_state.lists_dir(str(here)), str(root / "lists-aside"))
    nf.refused(here, resume, f"{made_in / '.command.out'}: changed since the last recorded run")
    nf.keep_mtime(made_in / ".command.out", lambda: (made_in / ".command.out").write_text("said"))  # put back
    with open(made_in / ".command.log", "a") as log:
        log.write("slurm: a second epilogue\n")
    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Cached process > USE" in clean.stdout

