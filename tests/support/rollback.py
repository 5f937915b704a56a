"""A SQLite ledger put back to an older copy of itself, behind the ledger's back: what a
restore from backup does, and the first half of an attacker's rewrite of history (who then
appends other records in its place, with every id recomputed)."""

from __future__ import annotations

import contextlib
import os
import sqlite3

__all__ = ["drop_last_block"]


def drop_last_block(db: str | os.PathLike[str]) -> int:
    """Delete the last block of the SQLite ledger ``db``, its records and their index rows,
    in one transaction and with plain :mod:`sqlite3` (no lineage-ledger code); nothing else
    (the remembered tree head, the checkpoints) is touched. Returns how many records went."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        last, first = conn.execute("SELECT height, first_seq FROM ll_blocks ORDER BY height DESC LIMIT 1").fetchone()
        dropped = conn.execute("SELECT count(*) FROM ll_records WHERE seq >= ?", (first,)).fetchone()[0]
        conn.execute("DELETE FROM ll_artifacts WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_records WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_blocks WHERE height = ?", (last,))
    return dropped
