"""Links out of a staged directory that the wrapper does not follow: said, and kept small.

A task that stages a directory records the files in it as inputs; a link in it to a directory
elsewhere, or to nothing, is not followed (one to ``/usr`` walked 132,678 files), so what it
leads to (a reference tree the task reads through it) is no input of the task, and an edit
there is not caught before ``-resume``. The user must be told: once per task when it is
recorded (a warning naming the task, how many such links, the first few, and how to have them
checked), and by the check before ``-resume`` for each task it looks at, under ``strict`` too
(a note, never a refusal: the lead's decision, docs/nextflow.md). The record names them in
``extra.links_not_followed``, at most :data:`LIMIT` of them (the first, sorted) with the count
of the rest in ``extra.links_not_followed_more``: a directory with thousands of links out of
it made a record (and a session list) as large as the links were many.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _state

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow  # real Nextflow runs

LIMIT = 100  # links a record names; the rest are counted
HANG = 240
NOT_FOLLOWED = "were not followed"  # in the warning said once per task when it is recorded
NOT_CHECKED = "not checked before -resume"  # in the check's note

#: MAKE's directory output holds ``refs`` (a link to the reference directory, ``--refs``) and
#: ``gone`` (a link to nothing outside it); USE stages the directory and reads through ``refs``.
THROUGH_A_LINK = nf.pipeline_staging_a_directory(
    "ln -s ${params.refs} outdir/refs; ln -s /nonexistent-lineage-ledger-target outdir/gone",
    "cat ${d}/made.txt ${d}/refs/a.txt", params="params.refs = null")

MANY = 5000
#: MAKE's directory output holds MANY links to ``/``; USE stages it and counts its entries.
MANY_LINKS = nf.pipeline_staging_a_directory(
    f"for i in \\$(seq 1 {MANY}); do ln -s / outdir/l\\$i; done", "ls ${d} | wc -l")


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_links_not_followed_are_said_when_recorded_and_before_resume(tmp_path):
    """The first run warns once, for USE only, naming both links and the advice; a strict
    ``-resume`` passes (a note, not a refusal) and says USE's links were not checked, also
    after the reference read through ``refs`` was edited (the accepted limit: nothing
    vouches for it), and also without the session's list (the note comes from the record)."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(THROUGH_A_LINK)
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "a.txt").write_text("reference one\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", "--refs", str(refs), cwd=here, timeout=HANG)
    assert first.returncode == 0, first.stdout + first.stderr
    (outdir,) = [p for p in (here / "work").glob("*/*/outdir") if not p.is_symlink()]
    records = {r["task_name"]: r for r in nf.records(here) if r["engine"] == "nextflow"}
    assert records["USE"]["extra"]["links_not_followed"] == {
        str(outdir / "gone"): "/nonexistent-lineage-ledger-target", str(outdir / "refs"): str(refs)}
    assert "links_not_followed_more" not in records["USE"]["extra"]  # all of them named
    (warning,) = _lines(first.stderr, NOT_FOLLOWED)  # USE's; MAKE staged no directory
    assert "task USE" in warning and "2 symbolic link(s)" in warning, warning
    assert f"{outdir / 'refs'} -> {refs}" in warning, warning
    assert "as a path input of its own" in warning, warning

    def noted(stderr: str) -> None:
        (note,) = _lines(stderr, NOT_CHECKED)
        assert "USE" in note and "2 symbolic link(s)" in note and f"{outdir / 'refs'} -> {refs}" in note, stderr
        assert "MAKE" not in note, note

    resume = ("nextflow-ledger", "run", "main.nf", "--refs", str(refs), "-resume", "--ledger-policy", "strict")
    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr  # a note, not a refusal
    assert "Cached process > USE" in clean.stdout
    noted(clean.stderr)

    # The accepted limit: an edit of the reference read through the link is not caught, but said unchecked.
    nf.keep_mtime(refs / "a.txt", lambda: (refs / "a.txt").write_text("reference two\n"))
    edited = nf.run(*resume, cwd=here, timeout=HANG)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    noted(edited.stderr)

    shutil.move(_state.lists_dir(str(here)), str(tmp_path / "lists-aside"))  # planned from the records
    unlisted = nf.run(*resume, cwd=here, timeout=HANG)
    assert unlisted.returncode == 0, unlisted.stdout + unlisted.stderr
    noted(unlisted.stderr)


def test_thousands_of_links_out_of_a_staged_directory_make_a_small_record(tmp_path):
    """5,000 links to ``/`` in MAKE's directory: USE's record names the first 100 (sorted)
    and counts the other 4,900, its session list entry too; the warning and the check's note
    say 5,000 and show a few; a strict ``-resume`` passes."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(MANY_LINKS)
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here, timeout=HANG)
    assert first.returncode == 0, first.stdout + first.stderr
    (outdir,) = [p for p in (here / "work").glob("*/*/outdir") if not p.is_symlink()]
    every = sorted(str(outdir / f"l{i}") for i in range(1, MANY + 1))
    (use,) = [r for r in nf.records(here) if r["task_name"] == "USE"]
    extra = use["extra"]
    assert extra["links_not_followed"] == dict.fromkeys(every[:LIMIT], "/")
    assert extra["links_not_followed_more"] == MANY - LIMIT
    assert len(json.dumps(use)) < 40_000, len(json.dumps(use))  # 5,000 links named: 385 kB

    (warning,) = _lines(first.stderr, NOT_FOLLOWED)
    assert f"{MANY} symbolic link(s)" in warning and len(warning) < 2_000, warning
    (session,) = [p.stem for p in Path(_state.lists_dir(str(here))).glob("*.json")]
    listed = _state.load(str(here), session)
    assert listed is not None
    (kept,) = [t for t in listed.values() if t["process"] == "USE"]
    assert len(kept["links_not_followed"]) == LIMIT and kept["links_not_followed_more"] == MANY - LIMIT

    resume = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here,
                    timeout=HANG)
    assert resume.returncode == 0, resume.stdout + resume.stderr
    (note,) = _lines(resume.stderr, NOT_CHECKED)
    assert f"{MANY} symbolic link(s)" in note and len(note) < 2_000, note
