"""A writer extends the head this account remembers over the blocks it appends.

Before, only readers moved the remembered head: a copy of the ledger taken before a run and put
back after it (or a consistent rewrite of the run's own blocks) still extended the head
remembered from before the run, so the next pre-run check and ``verify-lineage`` passed
outputs of that run edited meanwhile. Found by the outside reviews of the engines (helpers 63
and 64: Snakemake, Nextflow); here through the CLI as users run it, about 3 s.
"""

from __future__ import annotations

import shutil

from tests.conftest import run_cli


def test_a_ledger_rolled_back_past_a_run_is_caught(tmp_path):
    run_cli("run", "-o", "a.txt", "--", "sh", "-c", "echo a > a.txt", cwd=tmp_path, check_rc=0)
    run_cli("a.txt", cwd=tmp_path, program="verify-lineage", check_rc=0)  # a head remembered
    db = tmp_path / ".lineage" / "ledger.db"
    shutil.copy(db, tmp_path / "before.db")  # taken before the run below
    run_cli("run", "-i", "a.txt", "-o", "b.txt", "--", "sh", "-c", "cat a.txt > b.txt; echo b >> b.txt",
            cwd=tmp_path, check_rc=0)
    for suffix in ("-wal", "-shm"):
        (tmp_path / ".lineage" / f"ledger.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "before.db", db)  # put back: the run's record is gone
    (tmp_path / "b.txt").write_text("edited\n")
    result = run_cli("b.txt", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1, result.stdout  # was: b.txt UNRECORDED only, the ledger "OK"
    assert "HistoryRewritten" in result.stdout + result.stderr and "shrank" in result.stdout + result.stderr, result


def test_appends_with_nothing_remembered_remember_nothing(tmp_path):
    """A writer whose account never verified the ledger makes no state for it (no audit on
    the write path): the first reader audits it in full, as before."""
    state = tmp_path / "state"
    env = {"LINEAGE_STATE_DIR": str(state)}
    run_cli("run", "-o", "a.txt", "--", "sh", "-c", "echo a > a.txt", cwd=tmp_path, check_rc=0, env=env)
    assert not any(state.glob("*/head.json")), list(state.rglob("*"))
    result = run_cli("a.txt", cwd=tmp_path, program="verify-lineage", check_rc=0, env=env)
    assert "audited in full first" in result.stdout, result.stdout
