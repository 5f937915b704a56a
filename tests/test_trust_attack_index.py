"""An attacker who can write the SQLite ledger file, against the readers and ``repair-index``
(issue #14: "an index row that disagrees with its record is a failure, never an answer"; a
ledger rewritten after this account verified it fails in every command). Each case through
the CLI, on a real SQLite ledger, its rows edited with the ``sqlite3`` module (helper-117).

- ``depends PATH`` of a path no record names, where an index row was planted (or a producer
  row's path changed) to name it: answered "nothing in the ledger was derived from it", exit 0,
  from the planted row nobody proved (without that row: exit 2, "no record ... read or wrote
  it"; ``why`` of the same path: exit 1, IndexTampered).
- ``repair-index`` on a ledger whose last block was rewritten consistently (ids, Merkle root
  and block id recomputed) after this account verified it: the index was rewritten to match
  the forged records and committed ("1 record rows corrected, 6 artifact rows deleted and 6
  written"), and only then did the audit fail ("history was rewritten"): it must refuse
  before writing anything.

About 10 s.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.conftest import run_cli
from tests.support.state_other_user import rewrite_last_block, two_block_ledger


def _edit(db, statement, *args) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute(statement, args).rowcount, statement


@pytest.fixture
def chain(cli, workdir):
    """in.txt -> a.txt -> b.txt, recorded with the CLI and verified once (a head remembered)."""
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "a.txt", "--", "cp", "in.txt", "a.txt", check_rc=0)
    cli("run", "-i", "a.txt", "-o", "b.txt", "--", "cp", "a.txt", "b.txt", check_rc=0)
    cli("verify", check_rc=0)
    return workdir / ".lineage" / "ledger.db"


PLANTED = {
    "a row planted on a record": "INSERT INTO ll_artifacts SELECT ?, 1, seq, digest, ended FROM ll_artifacts "
                                 "WHERE path LIKE '%/b.txt' AND role = 1",
    "a producer row's path changed": "UPDATE ll_artifacts SET path = ? WHERE path LIKE '%/b.txt' AND role = 1",
}


@pytest.mark.parametrize("how", sorted(PLANTED))
def test_depends_does_not_answer_from_a_row_naming_a_path_no_record_names(cli, workdir, chain, how):
    unknown = cli("depends", "z.txt")
    assert unknown.returncode == 2 and "no record in the ledger read or wrote it" in unknown.stderr, unknown
    _edit(chain, PLANTED[how], str(workdir / "z.txt"))
    why = cli("why", "z.txt")
    assert why.returncode == 1 and "does not say so" in why.stderr, why
    depends = cli("depends", "z.txt")
    assert depends.returncode == 1, (depends.returncode, depends.stdout, depends.stderr)
    assert "verification failed" in depends.stderr and "z.txt" in depends.stderr, depends.stderr
    assert "nothing in the ledger was derived" not in depends.stdout + depends.stderr


def test_repair_index_refuses_a_history_rewritten_since_it_was_verified(tmp_path):
    url = two_block_ledger(tmp_path)
    db = tmp_path / "ledger.db"
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    rewrite_last_block(tmp_path, url)
    # And an index row edited, so that a repair has something to write.
    _edit(db, "UPDATE ll_records SET run_id = 'edited' WHERE seq = (SELECT max(seq) FROM ll_records)")
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT seq, height, pos, run_id FROM ll_records ORDER BY seq").fetchall()
        rows_before = conn.execute("SELECT * FROM ll_artifacts ORDER BY seq, role, path").fetchall()
    repair = run_cli("repair-index", "--ledger", url, cwd=tmp_path)
    assert repair.returncode == 1, (repair.returncode, repair.stderr)
    assert "rewritten" in repair.stderr and "reset-trust" in repair.stderr, repair.stderr
    assert "rebuilt the index" not in repair.stderr, repair.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT seq, height, pos, run_id FROM ll_records ORDER BY seq").fetchall() == before
        assert conn.execute("SELECT * FROM ll_artifacts ORDER BY seq, role, path").fetchall() == rows_before
    # After a deliberate restore the user resets the trust, and the repair then does its work.
    run_cli("reset-trust", "--ledger", url, cwd=tmp_path, check_rc=0)
    repaired = run_cli("repair-index", "--ledger", url, cwd=tmp_path)
    assert repaired.returncode == 0 and "1 record rows corrected" in repaired.stderr, repaired.stderr


def test_repair_index_refuses_a_ledger_that_shrank_since_it_was_verified(tmp_path):
    url = two_block_ledger(tmp_path)
    db = tmp_path / "ledger.db"
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT first_seq FROM ll_blocks WHERE height = 1").fetchone()[0]
        conn.execute("DELETE FROM ll_blocks WHERE height = 1")
        conn.execute("DELETE FROM ll_records WHERE seq >= ?", (first,))
        # The artifact rows of the removed block are left: a repair would delete them.
    with sqlite3.connect(db) as conn:
        rows_before = conn.execute("SELECT count(*) FROM ll_artifacts").fetchone()
    repair = run_cli("repair-index", "--ledger", url, cwd=tmp_path)
    assert repair.returncode == 1 and "shrank" in repair.stderr, (repair.returncode, repair.stderr)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM ll_artifacts").fetchone() == rows_before
