"""Links a Nextflow task makes that lead out of its files: never walked, recorded as links.

A downstream task that stages a directory records the files in it as inputs. A link in that
directory to its own parent, or to ``/``, must not be walked: the parent holds the directory
again (files repeated until the kernel's link limit), and ``/`` is the whole file system
(other users' files, hours, and no record at the end). A link the task made at the top of
its work directory (a ``path 'idx'`` output that is itself a link to a directory, or a link
to nothing) is recorded as the link it is, by its target text, in the manifest of the work
directory recorded whole: re-pointed, or made to dangle, it is refused by a strict
``-resume`` and fails ``verify-lineage``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _state

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow  # real Nextflow runs

#: A walk of ``/`` would take far longer than this; a run of these pipelines takes 5-10 s.
HANG = 150

#: MAKE's directory output holds a link to its own parent (MAKE's work directory, which
#: holds the directory again) and one to ``/``; USE stages the directory and reads from it.
LOOPS = """
process MAKE {
  output: path 'outdir'
  script:
  \"\"\"
  mkdir -p outdir/v1
  echo made > outdir/v1/made.txt
  ln -s .. outdir/up
  ln -s / outdir/root
  ln -s v1 outdir/current
  \"\"\"
}
process USE {
  input: path d
  output: path 'used.txt'
  script: "cat ${d}/current/made.txt ${d}/v1/made.txt > used.txt"
}
workflow { USE(MAKE()) }
"""

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


def _keep_mtime(path: Path, change) -> None:
    before = os.lstat(path)
    change()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _relink(link: Path, target: str | Path) -> None:
    """Point ``link`` at ``target``, its directory's mtime put back (Nextflow reuses the task)."""
    _keep_mtime(link.parent, lambda: (link.unlink(), link.symlink_to(target)))


def _manifest(here: Path, digest: str) -> list[list]:
    """The manifest of the directory digest ``digest``, from its manifest record."""
    listed = nf.run("lineage-ledger", "log", "-n", "0", "--all", "--json", cwd=here)
    assert listed.returncode == 0, listed.stderr
    (found,) = [r for r in map(json.loads, listed.stdout.splitlines()) if r.get("run_id") == f"manifest:{digest}"]
    return found["extra"]["manifest"]["entries"]


def _refused(here: Path, command: tuple[str, ...], *named: str) -> None:
    strict = nf.run(*command, cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: the change went unseen
    assert "Launching" not in strict.stdout
    for text in named:
        assert text in strict.stderr, strict.stderr


def _verified(here: Path, *paths: Path, status: int = 0) -> None:
    verify = nf.run("verify-lineage", *map(str, paths), cwd=here)
    assert verify.returncode == status, verify.stdout + verify.stderr


def test_links_to_the_parent_and_to_root_in_a_staged_directory_are_not_walked(tmp_path):
    """USE's record lists the files of the staged directory (the one ``current`` leads to
    once, by its real path), nothing from MAKE's work directory above it nor from ``/``; the
    run records at once (before: the wrapper walked ``/`` and the parent's loop, and never
    wrote USE's record). MAKE's manifest keeps both links by their target text; an untouched
    strict ``-resume`` reuses both tasks, and ``root`` re-pointed is refused."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(LOOPS)
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here, timeout=HANG)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "recorded 2 task try(s)" in first.stderr, first.stderr
    (outdir,) = [p for p in (here / "work").glob("*/*/outdir") if not p.is_symlink()]
    (used,) = (here / "work").glob("*/*/used.txt")
    records = {r["task_name"]: r for r in nf.records(here) if r["engine"] == "nextflow"}
    made = str(outdir / "v1" / "made.txt")
    assert list(records["USE"]["inputs"]) == [made]  # once, by its real path; nothing above nor from /
    entries = _manifest(here, records["MAKE"]["outputs"][str(outdir)]["blake3"])
    assert ["up", "link", ".."] in entries and ["root", "link", "/"] in entries
    assert ["current", "link", "v1"] in entries

    resume = ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict")
    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Cached process > USE" in clean.stdout
    _verified(here, used, outdir)

    _relink(outdir / "root", tmp_path)
    _refused(here, resume, f"{outdir}: changed since the last recorded run", "changed: root")
    _verified(here, outdir, status=1)
    _relink(outdir / "root", "/")
    _verified(here, used, outdir)


def test_a_link_at_the_top_of_a_work_directory_is_recorded_by_its_target(tmp_path):
    """MAKE's ``idx`` (a link to a directory), ``sys`` (to ``/``) and ``later`` (to nothing)
    are in the manifest of MAKE's work directory, recorded whole, by their target text;
    nothing below ``refs`` is MAKE's, nor is anything the published links lead to (the run
    records at once: before, the publication's record walked ``/``). USE read the files
    through ``idx``. Re-pointed (to a copy with the same bytes,
    or to nothing), each link is refused by a strict ``-resume`` (also planned without the
    session's list) and fails ``verify-lineage``; put back, all verifies again."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(TOP_LINKS)
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "a.txt").write_text("reference one\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", "--refs", str(refs), cwd=here, timeout=HANG)
    assert first.returncode == 0, first.stdout + first.stderr
    (idx,) = [p for p in (here / "work").glob("*/*/idx") if (p.parent / "later").is_symlink()]
    made_in, later = idx.parent, idx.parent / "later"
    (used,) = (here / "work").glob("*/*/used.txt")
    records = {r["task_name"]: r for r in nf.records(here) if r["engine"] == "nextflow"}
    assert set(records) == {"MAKE", "USE", "MAKE:publish"}
    outputs = records["MAKE"]["outputs"]
    assert outputs[str(made_in)]["type"] == "dir"
    assert not any(p.startswith(str(refs)) for p in outputs)  # the link is not followed
    entries = _manifest(here, outputs[str(made_in)]["blake3"])
    assert ["idx", "link", str(refs)] in entries and ["later", "link", "not-yet"] in entries
    assert ["sys", "link", "/"] in entries
    assert str(refs / "a.txt") in records["USE"]["inputs"]  # what USE read through it
    # The publication: the links to the links are not followed (one would walk /); the work
    # directory, whose manifest keeps the task's links, is what it published from.
    published = records["MAKE:publish"]
    assert list(published["inputs"]) == [str(made_in)] and published["outputs"] == {}
    assert sorted(published["extra"]["not_recorded"]) == [str(here / "results" / "idx"), str(here / "results" / "sys")]

    resume = ("nextflow-ledger", "run", "main.nf", "--refs", str(refs), "-resume", "--ledger-policy", "strict")
    clean = nf.run(*resume, cwd=here, timeout=HANG)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Cached process > USE" in clean.stdout
    _verified(here, idx, later, used)

    changed = f"{made_in}: changed since the last recorded run"
    same = tmp_path / "same-refs"  # the same bytes: only the link's target differs
    shutil.copytree(refs, same)
    _relink(idx, same)
    _refused(here, resume, changed, "changed: idx")
    _verified(here, idx, status=1)
    _relink(idx, tmp_path / "nowhere")  # dangles now
    _refused(here, resume, changed, "changed: idx")
    _verified(here, idx, status=1)
    _relink(idx, refs)
    _relink(later, "now-here")
    _refused(here, resume, changed, "changed: later")
    _verified(here, later, status=1)
    _relink(later, "not-yet")
    _verified(here, idx, later, used)

    # Without the session's list, the check planned from the work directory and the records.
    shutil.move(_state.lists_dir(str(here)), str(tmp_path / "lists-aside"))
    _relink(idx, same)
    _refused(here, resume, changed, "changed: idx")
