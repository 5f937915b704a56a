"""nextflow-ledger and a task's input that changes while the task runs, or before the
wrapper hashes it.

The wrapper hashes a task's inputs once it has read the task's end in the log. A file
outside the work directory can change in between, and the record then said the task read
what was there afterwards:

- a pipeline that updates its result in place (``READ`` reads ``results/db.txt``, the last
  release, and ``publishDir`` writes the new release over it): Nextflow publishes within
  about 0.1 s of the task's end, usually before the wrapper hashed the input, so the task's
  record said it read the new release, a lineage of the file from itself, and an edited
  last release went into the new one unseen ("verified");
- a task that appends to its input through the staged link: the record said it read the
  appended file, which then verified as what the task read.

An input outside the work directory whose modification time is later than the task's
``.command.begin`` (both set by the file server) is now left out of the record's inputs and
named in ``extra.not_verified`` (``verify-lineage`` notes it: never hashed as read); the
others are hashed by the wrapper before it looks at their times. Found here.
"""

from __future__ import annotations

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

PIPELINE = """
process UPDATE {
  publishDir 'results', mode: 'copy'
  input: path 'old.txt'
  output: path 'db.txt'
  script: "cat old.txt > db.txt; echo added >> db.txt"
}
process APPEND {
  input: path 'log.txt'
  output: path 'copy.txt'
  script: "cat log.txt > copy.txt; echo appended by the task >> log.txt"
}
workflow {
  UPDATE(file('results/db.txt'))
  APPEND(file('data/log.txt'))
}
"""


def test_an_input_changed_after_the_task_began_is_not_recorded_as_read(tmp_path):
    here = tmp_path / "pipeline"
    (here / "results").mkdir(parents=True)
    (here / "data").mkdir()
    (here / "main.nf").write_text(PIPELINE)
    db, log_file = here / "results" / "db.txt", here / "data" / "log.txt"
    db.write_text("release-1\n")
    log_file.write_text("line 1\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    assert db.read_text() == "release-1\nadded\n"
    new_release = nf.run("lineage-ledger", "hash", "results/db.txt", cwd=here).stdout

    records = {r["task_name"]: r for r in nf.records(here)}
    update, append = records["UPDATE"], records["APPEND"]
    # Never the new release as what UPDATE read (its own output, published over its input).
    read = update["inputs"].get(str(db))
    assert read is None or read["blake3"] not in new_release, update["inputs"]
    if read is None:
        assert str(db) in update["extra"]["not_verified"], update["extra"]
    # The appended file is not what APPEND read: it is left out and named.
    assert str(log_file) not in append["inputs"], append["inputs"]
    assert str(log_file) in append["extra"]["not_verified"], append["extra"]
    assert "changed while it ran" in first.stderr, first.stderr
    # So nothing vouches for the appended file.
    assert nf.run("verify-lineage", "data/log.txt", cwd=here).returncode == 1
    shown = nf.run("verify-lineage", "results/db.txt", cwd=here)
    assert "(see above)" not in shown.stdout, shown.stdout  # no lineage of the file from itself

    # The release updated in place by hand (same path, same size, its mtime put back, so
    # Nextflow would reuse UPDATE): the check before a strict -resume names it, nothing runs.
    nf.keep_mtime(db, lambda: db.write_text(db.read_text().replace("added", "adder")))
    nf.refused(here, ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict"), str(db))


def test_an_input_replaced_as_it_is_hashed_is_left_out_and_named(tmp_path):
    """Nextflow's publishDir replaces a file by deleting it and copying the new one: an input
    outside the work directory found gone as the wrapper hashed it (or there again, newer) was
    left to the capture, which hashed it later (the new release) or left it out with no note (a
    CI run at load 8-14: UPDATE's record had neither the last release nor ``not_verified``).
    It is left out and named, as a file changed after the task began."""
    import os

    from lineage_ledger_nextflow._as_read import inputs_as_read
    from lineage_ledger_nextflow._workdir import WorkDir

    work_dir = tmp_path / "work" / "ab" / "cdef"
    work_dir.mkdir(parents=True)
    gone, kept = tmp_path / "results" / "db.txt", tmp_path / "data" / "ref.txt"
    kept.parent.mkdir()
    kept.write_text("ref\n")
    began = os.stat(kept).st_mtime + 1
    work = WorkDir(str(work_dir), inputs=[str(gone), str(kept)], started=began)
    read, known, changed = inputs_as_read(work)  # db.txt deleted by the publication, not yet copied
    assert (read, sorted(known), changed) == ([str(kept)], [str(kept)], [str(gone)])
