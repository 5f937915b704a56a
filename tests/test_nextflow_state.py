"""The wrapper's list of a session's tasks (``_state``): kept in this user's private state,
read only if this user wrote it, and without it the check is planned from the work directory.

It used to live in ``.lineage``, which may be writable by others (a group-shared SQLite ledger
needs its directory so): they could move it aside or put a file in its place. A list that is
not a regular file of this user with one link, or that names another session, is not read; the
check before ``-resume`` is then planned from the work directory and the ledger's records
(``_recovered``), as when the list is gone.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _args, _recovered, _state

from tests.support import nextflow as nf
from tests.support.first_run import FirstRun, nextflow_example_run

SESSION = "2f3de1ba-0000-4000-8000-000000000001"
TASK = {"process": "ONE", "workdir": "/nowhere", "status": "succeeded", "inputs": [], "outputs": [], "published": []}


def _write_list(launch: Path, session: str, named: str | None = None) -> Path:
    _state.save(str(launch), session, {"ab" + "0" * 30: dict(TASK)})
    path = Path(_state.session_file(str(launch), session))
    if named is not None:  # the content of another session's list
        data = json.loads(path.read_text())
        data["session"] = named
        path.write_text(json.dumps(data))
    return path


def test_this_users_list_is_read(tmp_path):
    _write_list(tmp_path, SESSION)
    assert list(_state.load(str(tmp_path), SESSION) or {}) == ["ab" + "0" * 30]
    assert _state.load(str(tmp_path), "2f3de1ba-0000-4000-8000-00000000000f") is None  # none: not there


def test_a_list_of_another_session_a_second_link_or_a_link_in_its_place_is_not_read(tmp_path, caplog):
    path = _write_list(tmp_path, SESSION, named="2f3de1ba-0000-4000-8000-000000000002")
    assert _state.load(str(tmp_path), SESSION) is None
    assert "not the list of session" in caplog.text

    path.unlink()
    kept = _write_list(tmp_path / "elsewhere", SESSION)
    os.link(kept, path)  # a second name, kept to be put back after the list was rewritten
    assert _state.load(str(tmp_path), SESSION) is None
    path.unlink()
    path.symlink_to(kept)
    assert _state.load(str(tmp_path), SESSION) is None
    assert "not a regular file of this user with one link" in caplog.text
    assert "Too many levels of symbolic links" in caplog.text


def test_no_list_is_kept_or_read_where_others_could_write_the_way_to_it(tmp_path, monkeypatch, caplog):
    """The lists live in the private state root, checked as the tree heads' is: a state root
    others may write (not sticky) keeps none, and one found there is not read."""
    _write_list(tmp_path, SESSION)
    shared = tmp_path / "shared-state"
    shared.mkdir()
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(shared))
    _write_list(tmp_path, SESSION)
    shared.chmod(0o777)
    with pytest.raises(OSError, match="another user could move it aside or replace it"):
        _write_list(tmp_path, SESSION)
    assert _state.load(str(tmp_path), SESSION) is None
    assert "is writable by other users" in caplog.text



@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> FirstRun:
    """The example's first run through nextflow-ledger, made once for the tests that start
    from it, put back with its state before each (tests/support/first_run.py)."""
    nf.require_nextflow()
    return FirstRun(tmp_path_factory.mktemp("example-run"), nextflow_example_run, project="first")


@pytest.mark.skipif(os.geteuid() != 0, reason="a file owned by another user needs root to make")
@pytest.mark.slow  # real Nextflow runs
def test_a_list_owned_by_another_user_is_not_read_and_strict_checks_from_the_ledger(example_run, monkeypatch):
    """End to end: a list planted by another user (an empty one: no task to check) made strict
    reuse a tampered cached output; it is not read, and the check is planned from the ledger."""
    root = example_run.put_back(monkeypatch)  # the example run once through nextflow-ledger
    here = root / "example"
    count = next(p for p in (here / "work").glob("*/*/alpha.count") if not p.is_symlink())
    shutil.copy2(count, root / "mtime")
    count.write_text(count.read_text().replace("9", "8"))  # same size, different bytes
    shutil.copystat(root / "mtime", count)
    (listed,) = Path(_state.lists_dir(str(here))).glob("*.json")
    session = listed.stem
    listed.write_text(json.dumps({"session": session, "tasks": {}}))
    nobody = pwd.getpwnam("nobody")
    os.chown(listed, nobody.pw_uid, nobody.pw_gid)

    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: the planted list was believed
    assert "not a regular file of this user" in strict.stderr and str(count) in strict.stderr
    assert "Launching" not in strict.stdout


@pytest.mark.slow  # real Nextflow runs
def test_a_resume_of_a_run_the_wrapper_never_recorded(tmp_path):
    """A session run by ``nextflow`` alone has no list and no record: nothing vouches for its
    cached tasks. Strict refuses, naming each file they wrote; warn names them and runs."""
    here = nf.copy_example(tmp_path / "example")
    plain = nf.run("nextflow", "run", "main.nf", cwd=here)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    count = next(p for p in (here / "work").glob("*/*/alpha.count") if not p.is_symlink())

    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert f"{count}: written by a task the ledger holds no record of" in strict.stderr
    assert "Launching" not in strict.stdout

    warn = nf.run("nextflow-ledger", "run", "main.nf", "-resume", cwd=here)
    assert warn.returncode == 0, warn.stdout + warn.stderr
    assert f"{count}: written by a task the ledger holds no record of" in warn.stderr
    assert "Cached process > COUNT (alpha)" in warn.stdout


@pytest.mark.slow  # real Nextflow runs
def test_the_list_written_after_a_run_without_one_still_covers_the_cached_tasks(example_run, monkeypatch):
    """The list lost, a ``-resume`` that runs one task again (a changed parameter) writes
    a new list: it must name the tasks taken from the cache as well, or the next ``-resume``,
    trusting it, no longer checks them."""
    root = example_run.put_back(monkeypatch)  # the example run once through nextflow-ledger
    here = root / "example"
    shutil.move(_state.lists_dir(str(here)), str(root / "moved-aside"))  # lost
    second = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--title", "counted again", cwd=here)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Submitted process > REPORT" in second.stdout and "Cached process > COUNT (alpha)" in second.stdout
    published = here / "results" / "counts" / "beta.count"  # read by no task that ran again
    shutil.copy2(published, root / "mtime")
    published.write_text(published.read_text().replace("15", "51"))  # same size, different bytes
    shutil.copystat(root / "mtime", published)
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--title", "counted again",
                    "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: the new list left COUNT out
    assert str(published) in strict.stderr and "Launching" not in strict.stdout


MOVES_THE_LIST = """
params.tag = 'one'
params.lists = '/nonexistent'
process A {
  publishDir 'results', mode: 'copy'
  output: path 'a.txt'
  script: "echo alpha > a.txt"
}
process B {
  input: val t
  output: path 'b.txt'
  script:
  \"\"\"
  mv ${params.lists}/*.json ${launchDir}/../aside/ 2>/dev/null || true
  echo ${t} > b.txt
  \"\"\"
}
workflow {
  A()
  B(params.tag)
}
"""


@pytest.mark.slow  # real Nextflow runs
def test_a_list_moved_aside_during_a_run_does_not_drop_the_cached_tasks_from_the_next(tmp_path):
    """The list is written at the end of a run, merged with the list there then. Moved aside
    while the run went on (here by a task of the pipeline, standing for whoever could when it
    lived in ``.lineage``), the new list named only the tasks that run ran: the next strict
    ``-resume`` trusted it and did not check the cached task's published file."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (tmp_path / "aside").mkdir()
    (here / "main.nf").write_text(MOVES_THE_LIST)
    lists = ("--lists", _state.lists_dir(str(here)))
    first = nf.run("nextflow-ledger", "run", "main.nf", *lists, cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    second = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--tag", "two", *lists, cwd=here)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Cached process > A" in second.stdout and list((tmp_path / "aside").glob("*.json"))  # moved meanwhile
    published = here / "results" / "a.txt"
    shutil.copy2(published, tmp_path / "mtime")
    published.write_text("omega\n")  # same size, different bytes
    shutil.copystat(tmp_path / "mtime", published)
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--tag", "two", *lists,
                    "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: the new list left A out
    assert str(published) in strict.stderr and "Launching" not in strict.stdout


def _same_size_edit(path: Path, old: str, new: str, stamp: Path) -> None:
    shutil.copy2(path, stamp)
    path.write_text(path.read_text().replace(old, new))  # same size, different bytes
    shutil.copystat(stamp, path)


@pytest.mark.slow  # real Nextflow runs
def test_a_work_directory_set_in_the_configuration_is_found_without_the_list(tmp_path):
    """Without the session's list, the check is planned from the work directory Nextflow uses:
    here ``workDir`` of ``nextflow.config``, which Nextflow is asked for. Before, only ``-w``
    or ``$NXF_WORK`` were looked at: strict refused an untouched ``-resume`` ("no finished task
    is in work/"), and warn checked nothing."""
    here = nf.copy_example(tmp_path / "example")
    scratch = tmp_path / "scratch work"
    (here / "nextflow.config").write_text(f"workDir = '{scratch}'\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not (here / "work").exists()
    count = next(p for p in scratch.glob("*/*/alpha.count") if not p.is_symlink())
    resume = ("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict")
    shutil.move(_state.lists_dir(str(here)), str(tmp_path / "lists-aside"))
    clean = nf.run(*resume, cwd=here)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"planned from {scratch} and the ledger" in clean.stderr
    assert "Cached process > COUNT (alpha)" in clean.stdout

    _same_size_edit(count, "9", "8", tmp_path / "mtime")
    shutil.move(_state.lists_dir(str(here)), str(tmp_path / "lists-aside-again"))  # the one the clean run wrote
    strict = nf.run(*resume, cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert f"{count}: changed since the last recorded run" in strict.stderr and "Launching" not in strict.stdout


@pytest.mark.slow  # two JVMs (nextflow config)
def test_the_work_directory_of_a_c_file_and_a_profile_is_the_one_nextflow_reports(tmp_path, monkeypatch):
    """``-c FILE`` (before or after ``run``) and ``-profile`` are passed to ``nextflow config``;
    a ``workDir`` there wins over ``$NXF_WORK``, which counts where no configuration file is."""
    launcher = str(nf.require_nextflow())
    for name, value in nf.env(tmp_path).items():
        if name.startswith("NXF_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("NXF_WORK", str(tmp_path / "from-env"))
    (tmp_path / "main.nf").write_text("workflow { }\n")
    (tmp_path / "extra.config").write_text("workDir = 'near/work'\nprofiles {\n  far { workDir = 'far/work' }\n}\n")

    def found(*argv: str) -> str:
        return _recovered.work_directory(_args.parse(list(argv)), str(tmp_path), launcher)

    assert found("run", "main.nf", "-resume") == str(tmp_path / "from-env")  # no configuration file: no JVM
    assert found("-c", "extra.config", "run", "main.nf", "-profile", "far") == str(tmp_path / "far" / "work")
    assert found("run", "main.nf", "-c", "extra.config", "-resume") == str(tmp_path / "near" / "work")
    assert found("run", "main.nf", "-c", "extra.config", "-w", "given") == str(tmp_path / "given")  # -w first
