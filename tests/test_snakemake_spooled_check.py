"""A Snakemake output edited while the record that wrote it still waits in the spool.

Run 1 finds its SQLite ledger write-locked by another process: its records wait in the spool,
as they should. A kept output is then edited outside the workflow, and run 2, under
``--logger-ledger-policy strict``, runs a job that reads it. The pre-run check
(``check_before_run``) compared each file with the ledger's record of it; the ledger had none
yet, so the file counted as one no record names, and strict let the job run on the edited
file. A file that a record still waiting in this user's spool wrote is now checked against
that record, by the core check every plugin calls.

Real ``snakemake`` runs; the lock is a real SQLite ``BEGIN IMMEDIATE``. Run 1 (under the
lock, its records left in the spool) is made once for the module and put back before each
case (``tests/support/first_run.py``); the ``held`` case takes the lock again before run 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.faults import hold_write_lock
from tests.support.first_run import FirstRun
from tests.support.snakemake import require_snakemake, run

pytestmark = pytest.mark.slow

TWO_RULES = """
rule all:
    input: "b.txt"

rule a:
    output: "a.txt"
    shell: "echo made by a > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "cat {input} {input} > {output}"
"""


def run_with_the_ledger_locked(workflow: Path) -> None:
    """Run 1: the workflow run while another process holds the ledger's write lock; its
    records wait in the spool."""
    (workflow / "Snakefile").write_text(TWO_RULES)
    run_cli("run", "--", "true", cwd=workflow, check_rc=0)  # the ledger exists
    holder = hold_write_lock(workflow / ".lineage" / "ledger.db")
    try:
        first = run("snakemake", "--cores", "1", "--logger", "ledger", cwd=workflow)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "wait in the spool" in first.stderr
        waiting, = json.loads(run_cli("spool", "status", "--json", cwd=workflow, check_rc=0).stdout)
        assert waiting["records"] >= 2  # a, b (and the target rule all)
    finally:
        holder.communicate("")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    require_snakemake()
    return FirstRun(tmp_path_factory.mktemp("spooled"), run_with_the_ledger_locked)


@pytest.mark.parametrize("lock", ["held", "released"])
def test_an_output_edited_while_its_record_waits_in_the_spool_is_refused(first_run, monkeypatch, lock):
    tmp_path = first_run.put_back(monkeypatch)  # run 1's records still wait in the spool
    holder = hold_write_lock(tmp_path / ".lineage" / "ledger.db")
    try:
        a, b = tmp_path / "a.txt", tmp_path / "b.txt"
        a.write_text("EDITED by hand\n")
        b.unlink()  # b runs again, on the edited a.txt
        if lock == "released":
            holder.communicate("")
        second = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "strict",
                     cwd=tmp_path)
        assert second.returncode == 1, second.stderr[-3000:]
        assert str(a) in second.stderr and "refusing to run" in second.stderr, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        assert not b.exists()  # nothing ran on the edited file
    finally:
        if holder.poll() is None:
            holder.communicate("")
    # Nothing was lost meanwhile: run 1's records ship, and the audit names the edited file.
    run_cli("spool", "ship", cwd=tmp_path, check_rc=0)
    audit = run_cli("verify", cwd=tmp_path)
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert "ledger: OK" in audit.stdout and "audited 4 records" in audit.stdout  # `run true`, a, b, all
    assert f"{tmp_path / 'a.txt'}: MODIFIED" in audit.stdout
