"""Symbolic links inside a Nextflow directory output, and the check before ``-resume``.

A task that declares ``path 'outdir'`` may put in it a link to a file elsewhere (a reference
it does not copy). Nextflow checks that ``outdir`` is there, not what it holds, and a
downstream task reads through the link. The check before ``-resume`` must see a link slipped
into such a directory, and an edit of the file a link of the task leads to, as it sees a
regular file's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _state

from tests.support import nextflow as nf
from tests.support.first_run import FirstRun

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


def _made(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(launch directory, MAKE's outdir, the reference) of the first run in ``tmp_path``."""
    (outdir,) = (tmp_path / "pipeline" / "work").glob("*/*/outdir")
    return tmp_path / "pipeline", outdir, tmp_path / "elsewhere" / "ref.txt"


def _run_once(tmp_path: Path) -> None:
    """The pipeline run once (MAKE only)."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(PIPELINE)
    reference = tmp_path / "elsewhere" / "ref.txt"
    reference.parent.mkdir()
    reference.write_text("reference one\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(reference), cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    _here, outdir, _reference = _made(tmp_path)
    assert (outdir / "ref.txt").is_symlink()
    (make,) = [r for r in nf.records(here) if r["task_name"] == "MAKE"]
    assert make["outputs"][str(outdir / "ref.txt")]["alias_of"] == str(reference)  # the link, by its name


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    """The pipeline's first run, made once for the tests that start from it (its launch
    directory and the reference outside it, with its state: tests/support/first_run.py)."""
    nf.require_nextflow()
    return FirstRun(tmp_path_factory.mktemp("links"), _run_once, project="first")


def _first_run(first_run: FirstRun, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path, Path]:
    """The first run put back: (its directory, in place of tmp_path; launch directory, MAKE's
    outdir, the reference)."""
    root = first_run.put_back(monkeypatch)
    return (root, *_made(root))


def test_a_link_slipped_into_a_cached_directory_output_is_refused_under_strict(first_run, monkeypatch):
    root, here, outdir, _reference = _first_run(first_run, monkeypatch)
    # Untouched, the task's own link is no change: strict reuses MAKE, and USE's lineage verifies.
    clean = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(_reference), "--use", "true", "-resume",
                   "--ledger-policy", "strict", cwd=here)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Submitted process > USE" in clean.stdout
    (used,) = (here / "work").glob("*/*/used.txt")
    verified = nf.run("verify-lineage", str(used), cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    planted = root / "elsewhere" / "planted.txt"
    planted.write_text("not made by the workflow\n")
    nf.keep_mtime(outdir, lambda: (outdir / "extra.txt").symlink_to(planted))  # Nextflow reuses MAKE
    strict = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(_reference), "--use", "true", "-resume",
                    "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: USE read the planted file
    assert f"{outdir / 'extra.txt'}: appeared in the work directory" in strict.stderr
    assert "Launching" not in strict.stdout


def test_an_edit_of_the_file_a_tasks_link_leads_to_is_refused_under_strict(first_run, monkeypatch):
    """No task read ``outdir/ref.txt`` yet, so only MAKE's record could vouch for it: an edit
    of the reference (size and mtime kept) went on to USE when a later ``-resume`` added it."""
    root, here, outdir, reference = _first_run(first_run, monkeypatch)
    stamp = root / "mtime"
    shutil.copy2(reference, stamp)
    reference.write_text("reference two\n")  # same size, different bytes
    shutil.copystat(stamp, reference)
    strict = nf.run("nextflow-ledger", "run", "main.nf", "--ref", str(reference), "--use", "true", "-resume",
                    "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: USE read the edited reference
    assert f"{outdir / 'ref.txt'}: changed since the last recorded run" in strict.stderr
    assert "Launching" not in strict.stdout


#: A directory output holding links that are not to files: one to a directory inside it
#: (``current``), one to a directory elsewhere (``refs``), one that leads nowhere (``later``),
#: and one to nothing outside it (``gone``); USE reads through ``current`` and ``refs``.
DIRECTORY_LINKS = nf.pipeline_staging_a_directory(
    "mkdir -p outdir/v1; echo made > outdir/v1/made.txt; ln -s v1 outdir/current; "
    "ln -s ${params.refs} outdir/refs; ln -s not-yet outdir/later; ln -s /nonexistent-lineage-ledger-target outdir/gone",
    "cat ${d}/current/* ${d}/refs/*", params="params.refs = null")

HANG = 240
NOT_FOLLOWED = "were not followed"  # in the warning said once per task when it is recorded
NOT_CHECKED = "not checked before -resume"  # in the check's note


def _resume(root: Path) -> tuple[str, ...]:
    """The strict ``-resume`` of DIRECTORY_LINKS's run in ``root`` (``--refs`` as its first run)."""
    return ("nextflow-ledger", "run", "main.nf", "--refs", str(root / "refs"), "-resume", "--ledger-policy", "strict")


@pytest.fixture(scope="module")
def directory_links(tmp_path_factory) -> tuple[FirstRun, dict[str, subprocess.CompletedProcess[str]]]:
    """DIRECTORY_LINKS run once through nextflow-ledger, then once more as an untouched strict
    ``-resume``, for the two tests that start there (each used to make both runs itself), put
    back with its state before each (tests/support/first_run.py): (the kept runs, what the
    first run and the untouched ``-resume`` said)."""
    nf.require_nextflow()
    said: dict[str, subprocess.CompletedProcess[str]] = {}

    def make(root: Path) -> None:
        here, refs = root / "pipeline", root / "refs"  # as nf.first_run_with_refs makes them
        here.mkdir()
        (here / "main.nf").write_text(DIRECTORY_LINKS)
        refs.mkdir()
        (refs / "a.txt").write_text("reference one\n")
        said["first"] = nf.run("nextflow-ledger", "run", "main.nf", "--refs", str(refs), cwd=here, timeout=HANG)
        assert said["first"].returncode == 0, said["first"].stdout + said["first"].stderr
        said["clean"] = nf.run(*_resume(root), cwd=here, timeout=HANG)  # its tests read what it said

    return FirstRun(tmp_path_factory.mktemp("directory-links"), make, project="first"), said


def _replace_directory(directory: Path, content: dict[str, str], aside: Path) -> None:
    """Move ``directory`` to ``aside`` and make a new one in its place: the same names, each
    file's bytes replaced (same size) and its mtime put back."""
    directory.rename(aside)
    directory.mkdir()
    for name, text in content.items():
        (directory / name).write_text(text)
        shutil.copystat(aside / name, directory / name)
    shutil.copystat(aside, directory)


def test_links_to_directories_and_to_nothing_in_a_directory_output_are_checked(directory_links, monkeypatch,
                                                                              tmp_path):
    """A link the task made to a directory, or one leading nowhere, is recorded as a link (its
    target text, in the manifest of the directory output), never followed: pointed elsewhere,
    made to dangle, or slipped in, the strict ``-resume`` refuses (also planned without the
    session's list) and ``verify-lineage`` of the directory fails; a replaced directory it
    leads to inside the output is seen (its files were recorded). One elsewhere is not walked
    by the reader either: its record names the link by its target. Untouched, a strict
    ``-resume`` reuses both tasks."""
    kept, said = directory_links
    root = kept.put_back(monkeypatch)  # DIRECTORY_LINKS run once, then resumed untouched
    here, refs, resume = root / "pipeline", root / "refs", _resume(root)
    (outdir,) = [p for p in (here / "work").glob("*/*/outdir") if not p.is_symlink()]  # USE's is staged
    (used,) = (here / "work").glob("*/*/used.txt")
    (make,) = [r for r in nf.records(here) if r["task_name"] == "MAKE"]
    assert make["outputs"][str(outdir)]["type"] == "dir"  # recorded whole, beside its files
    assert str(outdir / "v1" / "made.txt") in make["outputs"]
    assert not any(p.startswith(str(refs)) for p in make["outputs"])  # the link to elsewhere: not followed
    (use,) = [r for r in nf.records(here) if r["task_name"] == "USE"]
    assert not any(p.startswith(str(refs)) for p in use["inputs"])  # nor by the reader
    assert use["extra"]["links_not_followed"] == {
        str(outdir / "gone"): "/nonexistent-lineage-ledger-target", str(outdir / "refs"): str(refs)}

    clean = said["clean"]  # the untouched strict -resume
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Cached process > MAKE" in clean.stdout and "Cached process > USE" in clean.stdout
    verified = nf.run("verify-lineage", str(outdir), str(used), cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    def refused(*named: str) -> None:
        strict = nf.run(*resume, cwd=here)
        assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: the change went unseen
        assert "Launching" not in strict.stdout
        for text in named:
            assert text in strict.stderr, strict.stderr

    def fails(target: Path) -> None:
        verify = nf.run("verify-lineage", str(target), cwd=here)
        assert verify.returncode == 1, verify.stdout + verify.stderr

    def restored() -> None:
        verify = nf.run("verify-lineage", str(outdir), str(used), cwd=here)
        assert verify.returncode == 0, verify.stdout + verify.stderr

    changed = f"{outdir}: changed since the last recorded run"
    same = tmp_path / "same-refs"  # the same bytes: only the link's target differs
    shutil.copytree(refs, same)
    nf.relink(outdir / "refs", same)
    refused(changed, "changed: refs")
    fails(outdir)
    nf.relink(outdir / "refs", refs)
    restored()

    nf.relink(outdir / "current", "v2")  # dangles now
    refused(changed, "changed: current")
    fails(outdir)
    nf.relink(outdir / "current", "v1")
    restored()

    nf.keep_mtime(outdir, lambda: (outdir / "extra").symlink_to(tmp_path / "nowhere"))  # slipped in, dangling
    refused(changed, "appeared: extra")
    fails(outdir)
    nf.keep_mtime(outdir, (outdir / "extra").unlink)
    restored()

    # The directory a link leads to, replaced: inside the output, its files were recorded.
    _replace_directory(outdir / "v1", {"made.txt": "edam\n"}, tmp_path / "v1-aside")
    refused(f"{outdir / 'v1' / 'made.txt'}: changed since the last recorded run")
    fails(outdir)
    fails(used)
    shutil.rmtree(outdir / "v1")
    (tmp_path / "v1-aside").rename(outdir / "v1")
    restored()
    # Without the session's list, the check planned from the work directory and the records.
    shutil.move(_state.lists_dir(str(here)), str(tmp_path / "lists-aside"))
    nf.relink(outdir / "refs", same)
    refused(changed, "changed: refs")


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_links_not_followed_are_said_when_recorded_and_before_resume(directory_links, monkeypatch):
    """The first run warns once, for USE only, naming both links out of the staged directory
    (``refs`` and ``gone``) and the advice; a strict ``-resume`` passes (a note, not a refusal)
    and says USE's links were not checked, also after the reference read through ``refs`` was
    edited (the accepted limit: nothing vouches for it), and also without the session's list
    (the note comes from the record). (It was in test_nextflow_links_not_followed, with a
    pipeline of its own, the same as DIRECTORY_LINKS but for its links inside.)"""
    kept, said = directory_links
    root = kept.put_back(monkeypatch)  # DIRECTORY_LINKS run once, then resumed untouched
    here, refs, resume = root / "pipeline", root / "refs", _resume(root)
    (outdir,) = [p for p in (here / "work").glob("*/*/outdir") if not p.is_symlink()]
    records = {r["task_name"]: r for r in nf.records(here) if r["engine"] == "nextflow"}
    assert records["USE"]["extra"]["links_not_followed"] == {
        str(outdir / "gone"): "/nonexistent-lineage-ledger-target", str(outdir / "refs"): str(refs)}
    assert "links_not_followed_more" not in records["USE"]["extra"]  # all of them named
    (warning,) = _lines(said["first"].stderr, NOT_FOLLOWED)  # USE's; MAKE staged no directory
    assert "task USE" in warning and "2 symbolic link(s)" in warning, warning
    assert f"{outdir / 'refs'} -> {refs}" in warning, warning
    assert "as a path input of its own" in warning, warning

    def noted(stderr: str) -> None:
        (note,) = _lines(stderr, NOT_CHECKED)
        assert "USE" in note and "2 symbolic link(s)" in note and f"{outdir / 'refs'} -> {refs}" in note, stderr
        assert "MAKE" not in note, note

    clean = said["clean"]  # the untouched strict -resume
    assert clean.returncode == 0, clean.stdout + clean.stderr  # a note, not a refusal
    assert "Cached process > USE" in clean.stdout
    noted(clean.stderr)

    # The accepted limit: an edit of the reference read through the link is not caught, but said unchecked.
    nf.keep_mtime(refs / "a.txt", lambda: (refs / "a.txt").write_text("reference two\n"))
    edited = nf.run(*resume, cwd=here, timeout=HANG)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    noted(edited.stderr)

    shutil.move(_state.lists_dir(str(here)), str(root / "lists-aside"))  # planned from the records
    unlisted = nf.run(*resume, cwd=here, timeout=HANG)
    assert unlisted.returncode == 0, unlisted.stdout + unlisted.stderr
    noted(unlisted.stderr)
