"""helper-154's attack on the forty-eighth session's changes (22b0303, 92862e1, c714193).

Each finding is a strict xfail whose reason says what a user meets; each passing test is a
property the session's changes promise that no other test checked.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_cli

# -- c714193: no code from the directory a workflow runs in -----------------------------------
PLANTED = ("json", "msgspec", "blake3")
SNAKEFILE = textwrap.dedent("""
    rule all:
        input: "in.txt"
        output: "out.txt"
        shell: "cat {input} > {output}"
""")


def _planted_project(tmp_path: Path) -> tuple[Path, Path]:
    """A Snakemake project folder others may write, holding modules named after ones the
    library imports; each leaves its name in ``marker`` when imported (and then fails)."""
    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "planted-ran"
    for module in PLANTED:
        (project / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'a').write({module!r} + '\\n')\nraise ImportError('planted')\n")
    (project / "Snakefile").write_text(SNAKEFILE)
    (project / "in.txt").write_text("data\n")
    return project, marker


def _planted_ran(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def test_snakemake_with_the_ledger_logger_imports_nothing_planted_in_the_project(tmp_path):
    """Plain ``snakemake`` with the ledger logger (the plugin, its sidecar and the recording
    process it starts) runs a workflow in a folder holding json.py, msgspec.py and blake3.py:
    none of them is imported, and the job is recorded."""
    project, marker = _planted_project(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    result = run_cli("-c1", "--logger", "ledger", "--logger-ledger-url", url, cwd=project, program="snakemake")
    assert _planted_ran(marker) == [], result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "out.txt").read_text() == "data\n"
    shown = run_cli("log", "--ledger", url, cwd=tmp_path, check_rc=0)
    assert "all" in shown.stdout, shown.stdout


@pytest.mark.xfail(strict=True, reason=(
    "snakemake-ledger execs `python -m snakemake` (plugins/snakemake/.../cli.py), which puts the "
    "workflow's directory first on sys.path: a json.py planted in a shared project folder runs as the "
    "user at start-up (plain `snakemake` with the same logger imports nothing from there)"))
def test_snakemake_ledger_wrapper_imports_nothing_planted_in_the_project(tmp_path):
    project, marker = _planted_project(tmp_path)
    url = f"sqlite:///{tmp_path}/ledger.db"
    result = run_cli("--ledger", url, "-c1", cwd=project, program="snakemake-ledger")
    assert _planted_ran(marker) == [], f"planted module(s) ran: {_planted_ran(marker)}; {result.stderr[-2000:]}"
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "out.txt").read_text() == "data\n"
