"""The trusted local state when HOME is not an absolute path (helper-122).

With neither LINEAGE_STATE_DIR nor XDG_STATE_HOME, the remembered tree heads are kept in
``$HOME/.local/state/lineage-ledger``. A relative HOME (``HOME=.`` or ``HOME=build`` in a job
script or a container) made that a different state in each working directory, as a relative
XDG_STATE_HOME or LINEAGE_STATE_DIR did before a2b6bb6: a ledger verified from one directory,
then replaced by another history, passed as a first audit from the next one (exit 0) where
it must fail as replaced (exit 1); an empty HOME kept it in ``/.local/state``. Such a HOME is
now refused, as a relative LINEAGE_STATE_DIR is (exit 2), saying how to name a state.
"""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def ledger(cli, workdir):
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    return f"sqlite:///{workdir / '.lineage' / 'ledger.db'}"


def _replace(cli, workdir):
    """Another history in the ledger's place (recorded with a state of its own)."""
    shutil.rmtree(workdir / ".lineage")
    (workdir / "in.txt").write_text("other data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt",
        env={"XDG_STATE_HOME": str(workdir / "elsewhere")}, check_rc=0)


def _refused(result, home):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert f"HOME ({home!r})" in result.stderr and "LINEAGE_STATE_DIR" in result.stderr, result.stderr


@pytest.mark.parametrize("home", ["state-home", "."])
def test_a_home_that_is_not_absolute_keeps_no_state_per_working_directory(cli, workdir, ledger, home):
    env = {"HOME": home, "XDG_STATE_HOME": "", "LINEAGE_LEDGER_URL": ledger}
    for name in ("first", "second"):
        (workdir / name / home).mkdir(parents=True, exist_ok=True)
    _refused(cli("verify", cwd=workdir / "first", env=env), home)
    _replace(cli, workdir)
    _refused(cli("verify", cwd=workdir / "second", env=env), home)  # the other history: exit 0 before
    assert not list(workdir.rglob("head.json")), list(workdir.rglob("head.json"))
    # an absolute LINEAGE_STATE_DIR (or XDG_STATE_HOME) is the way: HOME is not read then
    cli("verify", cwd=workdir / "first", env={**env, "LINEAGE_STATE_DIR": str(workdir / "state")}, check_rc=0)
