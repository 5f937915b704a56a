"""Symbolic links inside a Nextflow directory output, and the check before ``-resume``.

A task that declares ``path 'outdir'`` may put in it a link to a file elsewhere (a reference
it does not copy). Nextflow checks that ``outdir`` is there, not what it holds, and a
downstream task reads through the link. The check before ``-resume`` must see a link slipped
into such a directory, and an edit of the file a link of the task leads to, as it sees a
regular file's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

PIPELINE = """
params.ref = null
params.use = false
process MAKE {
  output: path 'outdir'
  script:
  \"\"\"
  mkdir outdir
  echo made > outdir/made.txt
  ln -s ${params.ref} outdir/ref.txt
  \"\"\"
}
process USE {
  input: path d
  output: path 'used.txt'
  script: "cat ${d}/* > used.txt"
}
workflow {
  made = MAKE()
  if (params.use) { USE(made) }
}
"""


def _first_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The pipeline run once (MAKE only); (launch directory, MAKE's outdir, the reference)."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(PIPELINE)
    reference = tmp_path / "elsewhere" / "ref.txt"
    reference.parent.mkdir()
    reference.write_text("reference one\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(reference), cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    (outdir,) = (here / "work").glob("*/*/outdir")
    assert (outdir / "ref.txt").is_symlink()
    (make,) = [r for r in nf.records(here) if r["task_name"] == "MAKE"]
    assert make["outputs"][str(outdir / "ref.txt")]["alias_of"] == str(reference)  # the link, by its name
    return here, outdir, reference


def _keep_mtime(path: Path, change: callable) -> None:  # type: ignore[valid-type]
    before = os.lstat(path)
    change()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def test_a_link_slipped_into_a_cached_directory_output_is_refused_under_strict(tmp_path):
    here, outdir, _reference = _first_run(tmp_path)
    # Untouched, the task's own link is no change: strict reuses MAKE, and USE's lineage verifies.
    clean = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(_reference), "--use", "true", "-resume",
                   "--ledger-policy", "strict", cwd=here)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Submitted process > USE" in clean.stdout
    (used,) = (here / "work").glob("*/*/used.txt")
    verified = nf.run("verify-lineage", str(used), cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    planted = tmp_path / "elsewhere" / "planted.txt"
    planted.write_text("not made by the workflow\n")
    _keep_mtime(outdir, lambda: (outdir / "extra.txt").symlink_to(planted))  # Nextflow reuses MAKE
    strict = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(_reference), "--use", "true", "-resume",
                    "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: USE read the planted file
    assert f"{outdir / 'extra.txt'}: appeared in the work directory" in strict.stderr
    assert "Launching" not in strict.stdout


def test_an_edit_of_the_file_a_tasks_link_leads_to_is_refused_under_strict(tmp_path):
    """No task read ``outdir/ref.txt`` yet, so only MAKE's record could vouch for it: an edit
    of the reference (size and mtime kept) went on to USE when a later ``-resume`` added it."""
    here, outdir, reference = _first_run(tmp_path)
    stamp = tmp_path / "mtime"
    shutil.copy2(reference, stamp)
    reference.write_text("reference two\n")  # same size, different bytes
    shutil.copystat(stamp, reference)
    strict = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(reference), "--use", "true", "-resume",
                    "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: USE read the edited reference
    assert f"{outdir / 'ref.txt'}: changed since the last recorded run" in strict.stderr
    assert "Launching" not in strict.stdout
