"""The pre-run check reads only what was appended since the last verification, and a ledger
rewritten below the verified head is refused, not silently adopted.

The engine plugins call ``check_before_run`` before every guarded task; reading and verifying
the whole ledger each time made a run's checks grow with the length of the ledger.
"""

from __future__ import annotations

import sqlite3

import pytest

from lineage_ledger import HistoryRewritten, LedgerError, check_before_run, open_ledger
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record, make_records


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_a_later_check_reads_only_the_blocks_appended_since(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        for start in range(0, 30, 10):
            ledger.append_records([r.stored() for r in make_records(10, start=start)])
        read: list[int] = []
        real_columns = ledger.backend.block_columns

        def counting(start=0, stop=None):  # the real store, counted
            for block in real_columns(start, stop):
                read.append(block.height)
                yield block

        ledger.backend.block_columns = counting  # type: ignore[method-assign]
        asked: list[int] = []
        real_id_at = ledger.backend.block_id_at

        def id_counted(height):  # the id of the block a remembered head ended on, asked
            asked.append(height)
            return real_id_at(height)

        ledger.backend.block_id_at = id_counted  # type: ignore[method-assign]
        first = ledger.tree_head()
        # Nothing remembered: the whole ledger, audited once (through a read-only view of the
        # same file, since the ledger was opened for writing: not through the counted reads).
        assert ledger.verifier.audited_now and first.size == 30
        read.clear()
        assert ledger.tree_head() == first and read == []  # nothing new: nothing read

        made = _write(tmp_path / "made.txt", "made")
        ledger.append_records([make_record(99, outputs=[artifact(made, "made")]).stored()])
        (tmp_path / "made.txt").write_text("edited by hand")
        tampered = check_before_run(ledger, [made], "warn")
        assert [c.path for c in tampered] == [made]  # the new block was read and used
        # The block the last check ended on is compared by its stored id (unchanged?), one
        # row; then the new block is read.
        assert asked[-1:] == [2] and read == [3]


def test_a_tampered_block_appended_after_a_check_is_refused_every_time(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([r.stored() for r in make_records(5)])
        ledger.tree_head()
        # Appended by another account's process (a writer extends its own account's head only).
        with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "other")) as other:
            other.append_records([r.stored() for r in make_records(5, start=5)])
        with sqlite3.connect(f"{tmp_path}/ledger.db") as db:
            db.execute("UPDATE ll_records SET body = replace(body, 'step', 'stop') WHERE seq = 7")
        for _ in range(2):  # nothing of the bad block is kept after the failure
            with pytest.raises(LedgerError):
                check_before_run(ledger, [], "warn")


def test_a_chain_rewritten_below_the_verified_head_is_refused_until_trust_is_reset(tmp_path):
    """Someone replaces the ledger's contents with another valid chain: the block the last
    check ended on is gone, so every command refuses, until the user says the restore was
    deliberate (``reset-trust``); then the new chain is audited and vouches for files."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    out = _write(tmp_path / "out.txt", "second")
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([make_record(1, outputs=[artifact(out, "first")]).stored()])
        assert [c.path for c in check_before_run(ledger, [out], "warn")] == [out]
        with sqlite3.connect(db) as conn:
            for table in ("ll_artifacts", "ll_records", "ll_blocks"):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - our own table names
        ledger.append_records([make_record(2, outputs=[artifact(out, "second")]).stored()])
        for _ in range(2):
            with pytest.raises(HistoryRewritten, match="reset-trust"):
                check_before_run(ledger, [out], "warn")
    result = run_cli(out, "--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1 and "HistoryRewritten" in result.stdout, result
    run_cli("reset-trust", "--ledger", url, cwd=tmp_path, check_rc=0)
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        assert check_before_run(ledger, [out], "warn") == []  # the new chain vouches for it
