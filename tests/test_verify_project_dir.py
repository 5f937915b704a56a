"""``verify-lineage .`` at a project's root: the ledger's own database and the engines' own
state folders (``.snakemake``, ``.nextflow``, ``.git``) are not workflow data and are said
to be skipped, never reported UNRECORDED; a file a record names in one of them is checked.
Files of the project that no record names (a Snakefile) still fail, as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.first_run import FirstRun
from tests.support.snakemake import clean_env, copy_example, require_snakemake
from tests.support.snakemake import run as run_engine

BIN = Path(sys.executable).parent


def _cli(cwd: Path, *args: str, ledger: str | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    if ledger is not None:
        env["LINEAGE_LEDGER_URL"] = ledger
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _made(project: Path) -> None:
    """A folder holding a ledger of its own (not under .lineage), an engine's state, a git
    repository's data and one recorded task."""
    (project / "results").mkdir(parents=True)
    (project / "data.txt").write_text("source\n")
    url = f"sqlite:///{project / 'ledger.db'}"
    made = _cli(project, "lineage-ledger", "run", "-i", "data.txt", "-o", "results/out.txt", "--",
                "sh", "-c", "cat data.txt > results/out.txt", ledger=url)
    assert made.returncode == 0, made.stderr
    for folder, name in ((".snakemake/metadata", "cmVzdWx0cw=="), (".nextflow/history", "x"), (".git", "HEAD")):
        (project / folder).mkdir(parents=True, exist_ok=True)
        (project / folder / name).write_text("engine state\n")


@pytest.fixture(scope="module")
def first_project(tmp_path_factory) -> FirstRun:
    """The project, made once for the module (tests/support/first_run.py)."""
    return FirstRun(tmp_path_factory.mktemp("verify-dir"), _made)


@pytest.fixture
def recorded_project(first_project, monkeypatch) -> tuple[Path, str]:
    """The project as it was made, put back for this test; its path and ledger URL."""
    where = first_project.put_back(monkeypatch)
    return where, f"sqlite:///{where / 'ledger.db'}"


def test_own_files_and_engine_state_are_skipped(recorded_project: tuple[Path, str]) -> None:
    project, url = recorded_project
    assert (project / "ledger.db").exists()
    result = _cli(project, "verify-lineage", ".", ledger=url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "UNRECORDED" not in result.stdout
    assert "results/out.txt" in result.stdout and "verified" in result.stdout
    for name, said in (("ledger.db", "this ledger's own database"), (".snakemake", "Snakemake's own state"),
                       (".nextflow", "Nextflow's own state"), (".git", "a git repository's own data")):
        assert f"skipped {name}: {said}" in result.stderr, result.stderr
    # --json lists them with the rest of what was skipped.
    shown = _cli(project, "verify-lineage", "--json", ".", ledger=url)
    assert shown.returncode == 0, shown.stderr
    skipped = {os.path.basename(entry["path"]) for entry in json.loads(shown.stdout)["skipped"]}
    assert {"ledger.db", ".snakemake", ".nextflow", ".git"} <= skipped


def test_a_recorded_file_in_engine_state_is_checked(recorded_project: tuple[Path, str]) -> None:
    project, url = recorded_project
    made = _cli(project, "lineage-ledger", "run", "-i", "data.txt", "-o", ".snakemake/kept.txt", "--",
                "sh", "-c", "cat data.txt > .snakemake/kept.txt", ledger=url)
    assert made.returncode == 0, made.stderr
    (project / ".snakemake" / "kept.txt").write_text("edited\n")
    result = _cli(project, "verify-lineage", ".", ledger=url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ".snakemake/kept.txt" in result.stdout and "MODIFIED" in result.stdout
    # The folder is walked, not skipped: its other file is one no record names.
    assert ".snakemake/metadata/cmVzdWx0cw== UNRECORDED" in result.stdout
    assert "skipped .snakemake" not in result.stderr


def test_an_unrecorded_project_file_still_fails(recorded_project: tuple[Path, str]) -> None:
    project, url = recorded_project
    (project / "notes.txt").write_text("not made by any task\n")
    result = _cli(project, "verify-lineage", ".", ledger=url)
    assert result.returncode == 1
    assert "notes.txt UNRECORDED" in result.stdout
    assert "ledger.db" not in result.stdout


@pytest.mark.slow
def test_real_snakemake_project_root(tmp_path: Path) -> None:
    """After a real ``snakemake`` run with the ledger plugin, ``verify-lineage .`` says nothing
    of ``.snakemake`` or the ledger's files; what fails is the project's own unrecorded
    files (the Snakefile, its scripts), which ``verify-lineage results`` leaves out."""
    require_snakemake()
    project = copy_example(tmp_path / "wf")
    url = f"sqlite:///{project / 'ledger.db'}"
    env = clean_env(LINEAGE_LEDGER_URL=url)
    done = run_engine("snakemake", "-c1", "--logger", "ledger", cwd=project, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (project / ".snakemake").is_dir()
    result = _cli(project, "verify-lineage", ".", ledger=url)
    assert ".snakemake" not in result.stdout
    assert "ledger.db" not in result.stdout
    assert "skipped .snakemake: Snakemake's own state" in result.stderr
    unrecorded = {line.split()[0] for line in result.stdout.splitlines() if line.endswith("UNRECORDED")}
    assert "Snakefile" in unrecorded
    assert all(not name.startswith(("results/", ".snakemake/")) for name in unrecorded), unrecorded
    assert result.returncode == 1
    results = _cli(project, "verify-lineage", "results", ledger=url)
    assert results.returncode == 0, results.stdout + results.stderr


def test_a_lock_probe_left_beside_the_ledger_is_skipped_elsewhere_not(recorded_project: tuple[Path, str]) -> None:
    """The SQLite back-end's lock probe, left by a process killed in its lock call (on NFS,
    where nothing can make it nameless, within the day before the next probe removes it, or
    by an older release), is this ledger's own leftover: skipped, as its database is. A file
    of that name elsewhere in the project is not the ledger's, and fails as any other."""
    project, url = recorded_project
    (project / ".ll-lock-probe-4242@login1-abcd1234").write_bytes(b"")
    result = _cli(project, "verify-lineage", ".", ledger=url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("skipped .ll-lock-probe-4242@login1-abcd1234: a lock probe the SQLite back-end left beside this "
            "ledger") in result.stderr, result.stderr
    (project / "results" / ".ll-lock-probe-abcd1234").write_bytes(b"")
    elsewhere = _cli(project, "verify-lineage", ".", ledger=url)
    assert elsewhere.returncode == 1 and "results/.ll-lock-probe-abcd1234: UNRECORDED" in elsewhere.stdout, \
        elsewhere.stdout + elsewhere.stderr
