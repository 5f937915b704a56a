"""Snakemake in a working directory whose name is not UTF-8 (``$'w\\xff'``).

A job's files are named in its record by their paths, which are ledger keys and text: under
such a directory none can be. The plugin ran every job and then refused each record after
it ran ("could not record task all ... the file name is not valid UTF-8"), ending with "the
pending-jobs journal keeps them, and the next run records them", which no run ever does:
the journal only grew. Now it says once, at workflow start, that nothing of the run can be
recorded there, and records nothing (the jobs run); ``--logger-ledger-policy strict``
refuses to start. The same for a ledger whose own path is not UTF-8.

A real ``snakemake-ledger`` run (tests/support/snakemake.py).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import run_cli
from tests.support.snakemake import BIN, clean_env, require_snakemake

BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)
SNAKEFILE = 'rule all:\n    output: "a.txt"\n    shell: "echo hi > {output}"\n'
SAID = "nothing of this run can be recorded"


def _snakemake(cwd, *args, **env):
    return subprocess.run([str(BIN / "snakemake-ledger"), "-c1", *args], cwd=cwd, capture_output=True, text=True,
                          errors="surrogateescape", timeout=300, env=clean_env(**env))


def _workdir(tmp_path):
    require_snakemake()
    here = tmp_path / ("w" + BYTE)
    here.mkdir()
    (here / "Snakefile").write_text(SNAKEFILE)
    return here


@pytest.mark.parametrize("ledger", ["elsewhere", "default"])
def test_a_run_in_a_directory_that_is_not_utf8_says_once_that_nothing_is_recorded(tmp_path, ledger):
    here = _workdir(tmp_path)
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "state")}
    if ledger == "elsewhere":
        env["LINEAGE_LEDGER_URL"] = str(tmp_path / "ledger.db")
    for _ in range(2):  # and again: nothing was left for a next run
        done = _snakemake(here, "--forceall", **env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (here / "a.txt").read_text() == "hi\n"  # the job ran
        assert done.stderr.count(SAID) == 1, done.stderr[-3000:]
        assert "w\\xff" in done.stderr  # names the directory, escaped
        assert "could not record" not in done.stderr and "next run" not in done.stderr, done.stderr[-3000:]
    assert not (here / ".lineage").exists()  # no spool, journal or ledger made there
    if ledger == "elsewhere":
        shown = run_cli("log", "--ledger", env["LINEAGE_LEDGER_URL"], cwd=tmp_path)
        assert shown.returncode == 2 and "no ledger" in shown.stderr.lower(), shown.stderr


def test_strict_refuses_to_start_in_a_directory_that_is_not_utf8(tmp_path):
    here = _workdir(tmp_path)
    done = _snakemake(here, "--ledger-policy", "strict", LINEAGE_LEDGER_URL=str(tmp_path / "ledger.db"),
                      LINEAGE_STATE_DIR=str(tmp_path / "state"))
    assert done.returncode != 0, done.stderr[-3000:]
    assert "refusing to run" in done.stderr and SAID in done.stderr, done.stderr[-3000:]
    assert not (here / "a.txt").exists()  # nothing ran


def test_a_ledger_whose_path_is_not_utf8_is_said_once(tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    elsewhere = tmp_path / ("l" + BYTE)
    elsewhere.mkdir()
    done = _snakemake(tmp_path, LINEAGE_LEDGER_URL=f"{elsewhere}/l.db", LINEAGE_STATE_DIR=str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count(SAID) == 1 and "l\\xff" in done.stderr, done.stderr[-3000:]
    assert "could not record" not in done.stderr and "next run" not in done.stderr, done.stderr[-3000:]
