"""nextflow-ledger and the files a ``-resume`` publishes for tasks it takes from the cache.

A resumed run publishes the outputs of its cached tasks again, to wherever ``publishDir``
says now: ``-resume --outdir results2`` (nf-core's way to get a second copy of the results)
copies every cached task's files there. Nextflow does not overwrite a file already there
(for a cached task only): it logs the publication and keeps whatever the target holds.

The wrapper recorded the publications of the tasks that ran only: the copies in
``results2/`` had no record, ``verify-lineage results2`` failed them as UNRECORDED, and an
edit of one went unseen by a strict ``-resume``. A publication of a cached task is recorded
now where the target holds what the task's file holds (Nextflow copied it, or it was the
same); one Nextflow kept with other content is not (recorded, it would vouch for whatever
is there), and the wrapper says so. Found here.

Real ``nextflow-ledger`` runs (tests/support/nextflow.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lineage_ledger_nextflow import _log, _state

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

PIPELINE = """
params.outdir = 'results'
process MAKE {
  publishDir params.outdir, mode: 'copy'
  output: path '*.txt'
  script: "echo made > out.txt; echo also made > other.txt"
}
workflow { MAKE() }
"""


def test_a_resume_records_what_it_publishes_for_cached_tasks(tmp_path, monkeypatch):
    here, _ = nf.first_run(tmp_path, PIPELINE)
    resume = ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", "--outdir", "results2")
    # A file there before, which Nextflow keeps (a cached task's target is never overwritten).
    (here / "results2").mkdir()
    kept = here / "results2" / "other.txt"
    kept.write_text("something else\n")

    # A second copy of the results: the cached task's file published there, and recorded.
    again = nf.run(*resume, cwd=here)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Cached process > MAKE" in again.stdout and "1 publication(s)" in again.stderr, again.stderr
    copy = here / "results2" / "out.txt"
    assert copy.read_text() == "made\n"
    verified = nf.run("verify-lineage", "results2/out.txt", cwd=here)
    assert verified.returncode == 0 and "nextflow:MAKE:publish" in verified.stdout, verified.stdout
    # The file Nextflow kept is not vouched for, and the wrapper says so.
    assert kept.read_text() == "something else\n"
    assert f"Nextflow kept {kept}" in again.stderr and "not recorded" in again.stderr, again.stderr
    assert nf.run("verify-lineage", "results2/other.txt", cwd=here).returncode == 1
    # The next strict -resume checks the copy as any published file (Nextflow not started).
    nf.keep_mtime(copy, lambda: copy.write_text("edit\n"))
    nf.refused(here, resume, str(copy))
    # So does one planned without the session's list, from the ledger (_recovered).
    monkeypatch.delenv("LINEAGE_STATE_DIR", raising=False)  # where nf.run's processes keep it
    listed = Path(_state.session_file(str(here), _log.last_session(str(here)) or ""))
    listed.rename(tmp_path / "list-moved-aside.json")
    nf.refused(here, resume, str(copy))
