"""The test run's own promises: no test touches the real home directory, yet the tool
builds cached there (Fabric, Nextflow, Go's caches) are still found."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)


def test_home_and_xdg_directories_are_private_to_the_test(tmp_path_factory):
    home = Path(os.environ["HOME"])
    assert home != REAL_HOME and REAL_HOME not in home.parents
    assert Path(tmp_path_factory.getbasetemp()) in home.parents  # this test's own, removed with the run
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        assert REAL_HOME not in Path(os.environ[name]).parents, name
    # what a subprocess (an engine, a console script) sees as `~`
    seen = subprocess.run([sys.executable, "-c", "import os; print(os.path.expanduser('~'))"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert seen == str(home)


@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_has_a_home_of_its_own(turn):
    """Both turns leave a file in `~`; neither finds the other's."""
    left = sorted(p.name for p in Path.home().glob("left-by-*"))
    assert left == [], f"the {turn} turn found {left} in its home"
    (Path.home() / f"left-by-{turn}").write_text("a test wrote this")


INNER_TEST = """
import os, subprocess, sys
from pathlib import Path

def test_writes_to_its_home():
    Path.home().joinpath("by-the-test").write_text("x")
    subprocess.run([sys.executable, "-c", "import os; open(os.path.expanduser('~/by-a-child'), 'w').write('x')"],
                   check=True)
    print("FABRIC_CACHE=" + os.environ["LINEAGE_LEDGER_FABRIC_CACHE"])
"""


def test_a_session_leaves_the_real_home_untouched_and_keeps_its_tool_caches(tmp_path):
    """A pytest session with this conftest, under a stand-in for the real home: a test and its
    subprocess write to `~`, and the stand-in stays empty (the conftest's own `go env` included),
    while the Fabric cache is still looked for in the stand-in's ~/.cache/lineage-ledger."""
    real = tmp_path / "real-home"
    real.mkdir()
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "LINEAGE_", "GO")) and k not in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}
    env["HOME"] = str(real)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "tests.conftest", "-p", "no:randomly",
                             "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"FABRIC_CACHE={real / '.cache' / 'lineage-ledger'}" in result.stdout
    assert sorted(str(p.relative_to(real)) for p in real.rglob("*")) == []
