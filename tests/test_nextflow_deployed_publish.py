"""nextflow-ledger and published outputs that live in a folder of the work directory.

A process whose output is ``path 'out/*.txt'`` or ``path 'sub/deeper/x.txt'`` (nf-core's
modules declare many such: ``fastqc/*.html``) publishes ``work/ab/cdef.../out/a.txt``. The
wrapper found the task of a published file from the file's parent folder, taken for the work
directory: for these that is ``.../out``, no task's, so no publication record was written
("0 publication(s)"), ``verify-lineage results`` failed every such file as UNRECORDED, and
the check before a strict ``-resume`` knew nothing of them: a published file edited by hand
went unseen (found here).

Real ``nextflow-ledger`` runs (tests/support/nextflow.py).
"""

from __future__ import annotations

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

PIPELINE = """
process NESTED {
  publishDir "results", mode: 'copy'
  output: path 'sub/deeper/x.txt'
  script: "mkdir -p sub/deeper; echo x > sub/deeper/x.txt"
}
process GLOBBED {
  publishDir "results", mode: 'copy'
  output: path 'out/*.txt'
  script: "mkdir out; echo a > out/a.txt; echo b > out/b.txt"
}
workflow { NESTED(); GLOBBED() }
"""


def test_published_files_in_folders_of_the_work_directory_are_recorded_and_checked(tmp_path):
    here, first = nf.first_run(tmp_path, PIPELINE)
    assert "recorded 2 task try(s) and 2 publication(s)" in first.stderr, first.stderr
    published = [here / "results" / "sub" / "deeper" / "x.txt", here / "results" / "out" / "a.txt",
                 here / "results" / "out" / "b.txt"]
    verified = nf.run("verify-lineage", "results", cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for path in published:
        shown = str(path.relative_to(here))
        assert f"{shown} " in verified.stdout and "UNRECORDED" not in verified.stdout, verified.stdout
    # The publication leads back to the task that wrote the file in its work directory.
    one = nf.run("verify-lineage", "results/out/a.txt", cwd=here)
    assert one.returncode == 0 and "nextflow:GLOBBED:publish" in one.stdout and "nextflow:GLOBBED " in one.stdout, \
        one.stdout
    # An edit by hand, size and mtime kept: verify-lineage fails it, a strict -resume refuses.
    edited = published[1]
    nf.keep_mtime(edited, lambda: edited.write_text("A\n"))
    assert nf.run("verify-lineage", "results", cwd=here).returncode == 1
    nf.refused(here, ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict"), str(edited))
