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

(The warning and the note for a few such links are checked in test_nextflow_links, on the
run its directory-link checks share.)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _state

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow  # real Nextflow runs

LIMIT = 100  # links a record names; the rest are counted
HANG = 240
NOT_FOLLOWED = "were not followed"  # in the warning said once per task when it is recorded
NOT_CHECKED = "not checked before -resume"  # in the check's note

#: Thousands, twenty times LIMIT: a record naming them all would be 150 kB, far over the bound
#: checked (it was 5,000: each link costs the runs and the check, and 2,000 show the same).
MANY = 2000
#: MAKE's directory output holds MANY links to ``/``; USE stages it and counts its entries.
#: One Python process makes them (a shell loop of MANY ``ln`` processes took seconds more).
MAKE_MANY = f"import os; [os.symlink('/', 'outdir/l%d' % i) for i in range(1, {MANY} + 1)]"
MANY_LINKS = nf.pipeline_staging_a_directory(f"{shlex.quote(sys.executable)} -I -c \"{MAKE_MANY}\"", "ls ${d} | wc -l")


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_thousands_of_links_out_of_a_staged_directory_make_a_small_record(tmp_path):
    """2,000 links to ``/`` in MAKE's directory: USE's record names the first 100 (sorted)
    and counts the other 1,900, its session list entry too; the warning and the check's note
    say 2,000 and show a few; a strict ``-resume`` passes."""
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
    assert len(json.dumps(use)) < 40_000, len(json.dumps(use))  # 2,000 links named: 154 kB (5,000: 385 kB)

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
