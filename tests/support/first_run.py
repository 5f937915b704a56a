"""A project's first run (and audit), made once for a module's tests and put back before each.

Tests that each begin with the same engine run (a first recorded run, often a
``verify-lineage`` after it) can share it: ``FirstRun`` makes it once in a directory of the
module's own, keeps a copy, and ``put_back`` restores the project and the state directory
before each test, at the same absolute path (the paths the records, Snakemake's metadata
and Nextflow's cache name) with the same bytes, mtimes (to the nanosecond: ``copy2``) and
symbolic links (kept as links: Nextflow's staged inputs). The state directory holds what the
run and the audit remembered (the verified tree head and the names beside it), so each test
starts where a first run and audit of its own would have left it, and changes only its own
copy. Only for a first run whose outcome the tests do not vary: what one test does to its
copy never reaches the next.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["FirstRun"]


class FirstRun:
    """``make(project)`` run once in ``base/project`` with ``XDG_STATE_HOME`` at ``base/state``
    (not the session's home, which other tests share), then kept in ``base/pristine``; what
    ``make`` returns is not kept."""

    def __init__(self, base: Path, make: Callable[[Path], object], project: str = "project") -> None:
        self.project, self.state, self.pristine = base / project, base / "state", base / "pristine"
        self.project.mkdir()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("XDG_STATE_HOME", str(self.state))
            make(self.project)
        self.state.mkdir(exist_ok=True)  # a run that remembered nothing
        for where in (self.project, self.state):
            shutil.copytree(where, self.pristine / where.name, symlinks=True)

    def put_back(self, monkeypatch: pytest.MonkeyPatch) -> Path:
        """The project as the first run left it, and its state as this test's; its path."""
        for where in (self.project, self.state):
            shutil.rmtree(where, ignore_errors=True)
            shutil.copytree(self.pristine / where.name, where, symlinks=True)
        monkeypatch.setenv("XDG_STATE_HOME", str(self.state))
        return self.project


def nextflow_example_run(root: Path) -> None:
    """The Nextflow example copied to ``root/example`` and run once through ``nextflow-ledger``
    (exit 0 asserted): the first run many Nextflow tests start from."""
    from tests.support import nextflow as nf

    here = nf.copy_example(root / "example")
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
