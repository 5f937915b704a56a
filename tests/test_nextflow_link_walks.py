"""Links a Nextflow task makes that lead out of its files: never walked, recorded as links.

A downstream task that stages a directory records the files in it as inputs. A link in that
directory to its own parent, or to ``/`` or ``/usr``, must not be walked: the parent holds
the directory again (files repeated until the kernel's link limit), and ``/`` is the whole
file system (other users' files, hours, and no record at the end); the reader's record names
it by its target. A link the task made at the top of its work directory (a ``path 'idx'`` output that
is itself a link to a directory, or a link to nothing) is recorded as the link it is, by its
target text, in the task's record (``extra.links``; the work directory is not recorded
whole, Nextflow's own files being no output): re-pointed, made to dangle, or slipped in, it
is refused by a strict ``-resume``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _state

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow  # real Nextflow runs

#: A walk of ``/`` would take far longer than this; a run of these pipelines takes 5-10 s.
HANG = 150

#: MAKE's directory output holds a link to its own parent (MAKE's work directory, which
#: holds the directory again), one to ``/`` and one to ``/usr`` (a large tree elsewhere: a
#: walk of it takes minutes); USE stages the directory and reads from it.
LOOPS = nf.pipeline_staging_a_directory("mkdir -p outdir/v1; echo made > outdir/v1/made.txt; ln -s .. outdir/up; "
                                        "ln -s / outdir/root; ln -s /usr outdir/sys; ln -s v1 outdir/current",
                                        "cat ${d}/current/made.txt ${d}/v1/made.txt")


#: MAKE's output ``idx`` is itself a link to a directory elsewhere, ``sys`` one to ``/``
#: (both published, as links to them); ``later`` (not declared) leads nowhere. USE reads
#: through ``idx``.
TOP_LINKS = """
params.refs = null
process MAKE {
  publishDir 'results'
  output: path 'idx'
  output: path 'sys'
  script:
  \"\"\"
  ln -s ${params.refs} idx
  ln -s / sys
  ln -s not-yet later
  \"\"\"
}
process USE {
  input: path i
  output: path 'used.txt'
  script: "cat ${i}/* > used.txt"
}
workflow {
  (idx, sys) = MAKE()
  USE(idx)
}
"""


def _verified(here: Path, *paths: Path, status: int = 0) -> None:
    verify = nf.run("verify-lineage", *map(str, paths), cwd=here)
    assert verify.returncode == status, verify.stdout + verify.stderr


def test_links_to_the_parent_and_to_root_in_a_staged_directory_are_not_walked(tmp_path):
    """USE's record lists the files of the staged directory (the one ``current`` leads to
    once, by its real path), nothing from MAKE's work directory above it nor from ``/`` or
    ``/usr``, and names those links by their targets; the run records at once (before: the
    wrapper walked ``/`` and the parent's loop, and never wrote USE's record). MAKE's manifest
    keeps the links by their target text; an untouched strict ``-resume`` reuses both tasks,
    and ``root`` re-pointed is refused. (The link to ``/usr`` was a test of its own in
    test_nextflow_wrapper_files, with two Nextflow runs of its own.)"""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(LOOPS)
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here, timeout=HANG)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "recorded 2 task try(s)" in first.stderr, first.stderr
    (outdir,) = [p for p in (here / "work").glob("*/*/outdir") if not p.is_symlink()]
    (used,) = (here / "work").glob("*/*/used.txt")
    records = {r["task_name"]: r for r in nf.records(here) if r["engine"] == "nextflow"}
    made = [str(outdir / "made.txt"), str(outdir / "v1" / "made.txt")]
    assert list(records["USE"]["inputs"]) == made  # once, by its real path; nothing above nor from / or /usr
    assert records["USE"]["extra"]["links_not_followed"] == {
        str(outdir / "up"): "..", str(outdir / "root"): "/", str(outdir / "sys"): "/usr"}
    entries = nf.manifest_entries(here, records["MAKE"]["outputs"][str(outdir)]["blake3"])
    assert ["up", "link", ".."] in entries and ["root", "link", "/"] in entries
    assert ["sys", "link", "/usr"] in entries
    assert ["current", "link", "v1"] in entries

    resume = ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict")
    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Cached process > USE" in clean.stdout
    _verified(here, used, outdir)

    nf.relink(outdir / "root", tmp_path)
    nf.refused(here, resume, f"{outdir}: changed since the last recorded run", "changed: root")
    _verified(here, outdir, status=1)
    nf.relink(outdir / "root", "/")
    _verified(here, used, outdir)


def test_a_link_at_the_top_of_a_work_directory_is_recorded_by_its_target(tmp_path):
    """MAKE's ``idx`` (a link to a directory), ``sys`` (to ``/``) and ``later`` (to nothing)
    are in MAKE's record by their target text, never followed; nothing below ``refs`` is
    MAKE's, nor is anything the published links lead to (the run records at once: before,
    the publication's record walked ``/``), and the work directory is no output. USE read the
    files through ``idx``. Re-pointed (to a copy with the same bytes, or to nothing), or
    slipped in, a link is refused by a strict ``-resume`` (also planned without the session's
    list); put back, the task is reused."""
    here, refs, resume = nf.first_run_with_refs(tmp_path, TOP_LINKS, timeout=HANG)
    (idx,) = [p for p in (here / "work").glob("*/*/idx") if (p.parent / "later").is_symlink()]
    made_in, later = idx.parent, idx.parent / "later"
    (used,) = (here / "work").glob("*/*/used.txt")
    records = {r["task_name"]: r for r in nf.records(here) if r["engine"] == "nextflow"}
    assert set(records) == {"MAKE", "USE", "MAKE:publish"}
    outputs = records["MAKE"]["outputs"]
    assert list(outputs) == [str(made_in / ".command.out")]  # its stdout; no link, no work directory
    assert records["MAKE"]["extra"]["links"] == {"idx": str(refs), "later": "not-yet", "sys": "/"}
    assert str(refs / "a.txt") in records["USE"]["inputs"]  # what USE read through it
    # The publication: neither the task's links nor the links to them are followed (one
    # would walk /); the task's record keeps them.
    published = records["MAKE:publish"]
    assert published["inputs"] == {} and published["outputs"] == {}
    assert sorted(published["extra"]["not_recorded"]) == sorted(
        str(p) for p in (idx, made_in / "sys", here / "results" / "idx", here / "results" / "sys"))

    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Cached process > USE" in clean.stdout
    _verified(here, used)

    def changed(link: Path, then: str | Path, now: str | Path) -> str:
        return f"{link}: a link the task made, recorded leading to {str(then)!r}, now leads to {str(now)!r}"

    same = tmp_path / "same-refs"  # the same bytes: only the link's target differs
    shutil.copytree(refs, same)
    nf.relink(idx, same)
    nf.refused(here, resume, changed(idx, refs, same))
    nf.relink(idx, tmp_path / "nowhere")  # dangles now
    nf.refused(here, resume, changed(idx, refs, tmp_path / "nowhere"))
    nf.relink(idx, refs)
    nf.relink(later, "now-here")
    nf.refused(here, resume, changed(later, "not-yet", "now-here"))
    nf.relink(later, "not-yet")
    nf.keep_mtime(made_in, lambda: (made_in / "slipped").symlink_to("/"))
    nf.refused(here, resume, f"{made_in / 'slipped'}: a link the task did not make, leading to '/'")
    nf.keep_mtime(made_in, (made_in / "slipped").unlink)
    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    # Without the session's list, the check planned from the work directory and the records.
    shutil.move(_state.lists_dir(str(here)), str(tmp_path / "lists-aside"))
    nf.relink(idx, same)
    nf.refused(here, resume, changed(idx, refs, same))
