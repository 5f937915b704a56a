"""The index rebuilt in place from the verified records (``lineage-ledger repair-index``).

Shared by :class:`~.sqlite.SQLiteBackend` (:mod:`sqlite3`) and :class:`~.sql.SQLBackend`
(SQLAlchemy, on PostgreSQL): both run :func:`rebuild` inside their own write transaction,
handing it their ``execute`` and ``executemany`` (each back-end keeps its own error
translation) and its parameter style.

Block by block, the stored index rows of the block's records (their record rows' height,
position and run id; the artifact rows of their sequence numbers) are read and compared
with what the verified records derive, and only a block whose rows differ is written: a
repair after a few edited rows writes a few rows, not the whole index again (at a million
records, rewriting every artifact row and its three indexes cost minutes and a WAL the
size of the table). A block whose artifact rows differ gets all of them replaced, read by
their range of sequence numbers, so a row whose key columns were edited to another type
goes too. Memory is one block's rows at a time, whatever the ledger's size.

Then nothing stays that no verified block placed: record and artifact rows before the
first sequence number or past the last (a row inserted by hand, or left past the chain),
and block rows below height 0, are deleted, and counted. Before that, the block rows must place each block's records
right after the previous block's, as every reader assumes: where they do not, records
are stored out of place, and deleting "rows past the chain" would delete records. That
is refused (``ChainBroken``, everything rolled back): moving records is a matter for a
backup, not for the index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lineage_ledger._errors import ChainBroken

__all__ = ["Rebuilt", "rebuild"]

UPDATE_RECORD = "UPDATE ll_records SET height = ?, pos = ?, run_id = ? WHERE seq = ?"
INSERT_ARTIFACT = "INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES (?, ?, ?, ?, ?)"
_RECORD_ROWS = "SELECT height, pos, run_id, seq FROM ll_records WHERE seq >= ? AND seq < ?"
_ARTIFACT_ROWS = "SELECT path, role, seq, digest, ended FROM ll_artifacts WHERE seq >= ? AND seq < ?"
_DROP_ARTIFACTS = "DELETE FROM ll_artifacts WHERE seq >= ? AND seq < ?"
# Where each block's records start, as the counts below it place them (heights and counts
# are verified by the derivation; only the stored first_seq is compared here). Blocks at
# negative heights are no part of the chain: the audit reports them.
_MISPLACED = (
    "SELECT height, first_seq, placed FROM (SELECT height, first_seq,"
    " sum(count) OVER (ORDER BY height ROWS UNBOUNDED PRECEDING) - count AS placed"
    " FROM ll_blocks WHERE height >= 0) AS b WHERE first_seq <> placed ORDER BY height LIMIT 1"
)
# Outside 0 .. records - 1. (On SQLite a key edited to text or a blob compares above every
# number, so it is past the chain here too.)
_RECORDS_OUTSIDE = "DELETE FROM ll_records WHERE seq < 0 OR seq >= ?"
_ARTIFACTS_OUTSIDE = "DELETE FROM ll_artifacts WHERE seq < 0 OR seq >= ?"
# Block rows below height 0: no chain starts there (the derivation reads from 0 to the top).
_BLOCKS_OUTSIDE = "DELETE FROM ll_blocks WHERE height < 0"

Derived = Callable[[int], Iterable[tuple[list[tuple], list[tuple]]]]


@dataclass
class Rebuilt:
    """What a rebuild found and did."""

    records: int = 0  # records in the verified chain
    artifacts: int = 0  # artifact rows they derive
    records_corrected: int = 0  # record rows whose height, position or run id was rewritten
    artifacts_deleted: int = 0  # artifact rows deleted in blocks whose rows differed
    artifacts_written: int = 0  # artifact rows written there
    records_removed: int = 0  # record rows no verified block places, deleted
    artifacts_removed: int = 0  # artifact rows past the chain, deleted
    blocks_removed: int = 0  # block rows below height 0, deleted


def rebuild(execute: Callable[[str, Sequence], Any], executemany: Callable[[str, list[tuple]], Any],
            derived: Derived, sql: Callable[[str], str] = str) -> Rebuilt:
    """Make the index exactly what ``derived(stop)`` derives (see the module docstring),
    inside the caller's write transaction: ``derived`` is
    :func:`lineage_ledger._log.reindex.verified_index` over blocks ``0 .. stop - 1``, and an
    error from it (or a misplaced block) propagates for the caller to roll back.
    ``execute(statement, params)`` returns a cursor or result (``fetchall``, ``fetchone``,
    ``rowcount``); ``sql`` turns the ``?`` placeholders into the driver's."""
    done = Rebuilt()
    top = execute(sql("SELECT max(height) FROM ll_blocks"), ()).fetchone()[0]
    for record_rows, artifact_rows in derived(0 if top is None else int(top) + 1):
        if record_rows:
            _reconcile(execute, executemany, sql, record_rows, artifact_rows, done)
        done.records += len(record_rows)
        done.artifacts += len(artifact_rows)
    misplaced = execute(sql(_MISPLACED), ()).fetchone()
    if misplaced is not None:
        height, stored, placed = misplaced
        raise ChainBroken(f"block {height}'s records are stored from sequence number {stored}, where the blocks "
                          f"below it place them from {placed}: records out of place are not moved by "
                          "repair-index", height=int(height))
    done.records_removed = _count(execute(sql(_RECORDS_OUTSIDE), (done.records,)))
    done.artifacts_removed = _count(execute(sql(_ARTIFACTS_OUTSIDE), (done.records,)))
    done.blocks_removed = _count(execute(sql(_BLOCKS_OUTSIDE), ()))
    return done


def _reconcile(execute, executemany, sql, record_rows: list[tuple], artifact_rows: list[tuple],
               done: Rebuilt) -> None:
    """One block: its records occupy ``first .. last - 1`` (verified_index numbers them)."""
    first, last = record_rows[0][3], record_rows[-1][3] + 1
    stored = {row[3]: tuple(row) for row in execute(sql(_RECORD_ROWS), (first, last)).fetchall()}
    wrong = [row for row in record_rows if stored.get(row[3]) != row]
    if wrong:
        executemany(sql(UPDATE_RECORD), wrong)
        done.records_corrected += len(wrong)
    present = [tuple(row) for row in execute(sql(_ARTIFACT_ROWS), (first, last)).fetchall()]
    if len(present) == len(artifact_rows) and set(present) == set(artifact_rows):
        return
    done.artifacts_deleted += _count(execute(sql(_DROP_ARTIFACTS), (first, last)))
    if artifact_rows:
        executemany(sql(INSERT_ARTIFACT), artifact_rows)
    done.artifacts_written += len(artifact_rows)


def _count(result: Any) -> int:
    return max(0, int(result.rowcount or 0))
