"""nextflow-ledger reads what Nextflow really writes where Nextflow's settings move it: the
log (``-log``, else ``$NXF_LOG_FILE``), and the history that names the session ``-resume``
takes (``$NXF_CACHE_DIR``).

Every task is recorded from Nextflow's log. ``NXF_LOG_FILE`` is Nextflow's documented setting
of where that log goes (``-log`` wins over it); the wrapper followed ``.nextflow.log`` whatever
it said, so with it set a run was recorded as "recorded 0 task try(s)", every task lost.

Real ``nextflow-ledger`` runs (tests/support/nextflow.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

PIPELINE = """
process MAKE {
  output: path 'made.txt'
  script: "echo made > made.txt"
}
workflow { MAKE() }
"""


def _run(here: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(nf.BIN / "nextflow-ledger"), *args], cwd=here, env=nf.env(here, **extra),
                          capture_output=True, text=True, timeout=300)


def test_the_log_named_by_nxf_log_file_is_followed_and_log_wins_over_it(tmp_path):
    nf.require_nextflow()
    here = tmp_path / "launch"
    here.mkdir()
    (here / "main.nf").write_text(PIPELINE)
    (here / "logs").mkdir()
    done = _run(here, "run", "main.nf", NXF_LOG_FILE="logs/run.log")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (here / "logs" / "run.log").is_file() and not (here / ".nextflow.log").exists()  # where Nextflow wrote it
    assert "recorded 1 task try(s)" in done.stderr, done.stderr
    again = _run(here, "-log", "option.log", "run", "main.nf", NXF_LOG_FILE="logs/run.log")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (here / "option.log").is_file()
    assert "recorded 1 task try(s)" in again.stderr, again.stderr
    assert [r["task_name"] for r in nf.records(here)] == ["MAKE", "MAKE"]


def test_a_resume_with_nxf_cache_dir_set_is_checked(tmp_path):
    """``NXF_CACHE_DIR`` moves Nextflow's ``.nextflow`` (its history, which names the session
    ``-resume`` takes, and its cache): the session is read there."""
    nf.require_nextflow()
    here = nf.copy_example(tmp_path / "example")
    cache = {"NXF_CACHE_DIR": str(tmp_path / "nxf-cache")}
    first = _run(here, "run", "main.nf", **cache)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "nxf-cache" / "history").is_file() and not (here / ".nextflow").exists()
    (count,) = [p for p in here.glob("work/*/*/alpha.count") if not p.is_symlink()]  # COUNT's, not REPORT's link
    nf.keep_mtime(count, lambda: count.write_text("alpha\t8\n"))  # same size, mtime put back
    strict = _run(here, "run", "main.nf", "-resume", "--ledger-policy", "strict", **cache)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: reused unchecked
    assert str(count) in strict.stderr and "Launching" not in strict.stdout, strict.stderr
