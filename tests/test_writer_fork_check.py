"""A long-running writer checks, before every shipment, that the block its account's
remembered tree head ended on is still stored as it was.

Before, a process checked that block once per remembered head (``_extends.check_extends``'s
``confirmed``): where the head did not move (it lags more than 64 blocks behind the tip,
so a writer does not extend it), a fork made after the process's first shipment that left
the ledger no shorter went unnoticed for the rest of the process's life, and every record
it shipped went into the rewritten history. Now each shipment reads that block's id (one
indexed row). Through ``spool_first``, what the engines' recorders and shippers ship
through; about 3 s.
"""

from __future__ import annotations

import sqlite3

import pytest

from lineage_ledger import open_ledger, spool_first
from lineage_ledger._errors import HistoryRewritten
from tests.support.factories import make_record

LAG = 70  # blocks appended by another account past this account's head (> _REMEMBER_BLOCKS)


def _append(url: str, first: int, count: int, state: str, spool: str, salt: str = "") -> None:
    with open_ledger(url, spool=spool, state_dir=state) as ledger:
        for i in range(first, first + count):
            ledger.append_records([make_record(i, run_id=f"run{salt}-{i}").stored()])


def test_a_fork_made_while_a_writer_runs_is_refused_at_its_next_shipment(tmp_path, monkeypatch):
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    mine, other = str(tmp_path / "state-mine"), str(tmp_path / "state-other")
    spool = str(tmp_path / "spool")
    _append(url, 0, 3, other, spool)
    with open_ledger(url, read_only=True, state_dir=mine) as ledger:
        ledger.tree_head()  # this account verifies the ledger: its head ends on block 2
    _append(url, 3, LAG, other, spool)  # another account appends far past that head

    monkeypatch.setenv("LINEAGE_STATE_DIR", mine)
    writer = spool_first(url, spool=spool)  # a long-running process (a scheduler, a DataFlowKernel)
    try:
        assert writer.append_records([make_record(1000).stored()]) == 1  # checked: the ledger extends the head

        # Meanwhile, whoever can write the ledger rewrites it from block 2 on, longer than before.
        with sqlite3.connect(db) as con:
            seq = con.execute("SELECT MIN(seq) FROM ll_records WHERE height >= 2").fetchone()[0]
            con.execute("DELETE FROM ll_artifacts WHERE seq >= ?", (seq,))
            con.execute("DELETE FROM ll_records WHERE height >= 2")
            con.execute("DELETE FROM ll_blocks WHERE height >= 2")
        _append(url, 2, LAG + 5, str(tmp_path / "state-forger"), str(tmp_path / "spool-forger"), salt="forged")

        late = make_record(1001).stored()
        with pytest.raises(HistoryRewritten, match="rewritten"):
            writer.append_records([late])
    finally:
        writer.close()
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "state-fresh")) as ledger:
        assert not ledger.backend.known([late.id])  # nothing was appended to the forked history
