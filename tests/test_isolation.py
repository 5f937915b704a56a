"""The test run's own promises: no test touches the real home directory, yet the tool
builds cached there (Fabric, Nextflow, Go's caches) are still found."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fabric import FABRIC_RELEASE, cache_root, fabric_binaries

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


def test_tool_caches_of_the_real_home_are_still_found():
    """`make install-fabric` builds into the real ~/.cache/lineage-ledger; the tests find it
    there although HOME moved (without that, every fabric test would skip)."""
    home = Path(os.environ["HOME"])
    assert home not in cache_root().parents
    if (REAL_HOME / ".cache" / "lineage-ledger" / f"fabric-{FABRIC_RELEASE}" / "bin" / "peer").exists():
        assert fabric_binaries() is not None
