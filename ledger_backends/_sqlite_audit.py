"""The reads of an audit worker's bulk check of a range of records (SQLite only).

An audit worker (``lineage_ledger._log.audit_bulk``) checks a range of blocks with a few
comparisons of whole columns instead of a Python comparison per index row. These reads
hand it the stored values untouched (no coercion: a value of an unexpected type simply
fails to compare equal, and the worker then runs the row-by-row check) and the artifact
index's columns joined by SQLite in C, in the exact form the worker joins the same facts
read from the record bodies (see :meth:`SQLiteAuditReads.audit_chunk`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["SQLiteAuditReads"]

_MAP_BYTES = 1 << 40  # map the whole file (SQLite caps it at its compiled maximum, 2 GiB by default)

# The artifact rows of a range as four columns, each row's value joined by one separator in
# primary-key order (seq, role, path: the order of a record body's sorted keys, inputs
# before outputs): the paths (as UTF-8 bytes) and digests and end times by NUL, and
# ``seq * 2 + role`` by commas; then the number of rows (any role), and whether every row
# has the writer's types: a role of 0 or 1 (an integer: no other type compares equal to
# one), a path, digest and end time of type text (a BLOB of the same bytes would join the
# same), none NULL (group_concat() skips a NULL, and sum() a NULL test). The worker compares
# them with the same columns built from the record bodies (audit_bulk); its own columns have
# exactly one separator fewer than rows, so equal texts split into equal values row by row:
# a NUL inside a stored value would add a separator, and the count of rows is the same.
# A sequence number is an integer or a real in the range (a text or BLOB never lies between
# two integers), and a real prints with a point, which no integer key has. Plain columns
# joined in C cost about a third less than the JSON fold this replaces (json_group_object per
# record and role), and the Python side builds them with C-level maps. The rows come in the
# primary key's order because SQLite reads them from it (a sorted subquery, ``ORDER BY``,
# ran as a co-routine and cost a third more); should a plan ever read them in another
# order, the texts differ and the row-by-row check decides: order costs speed, never a
# wrong answer. The type guard counts the rows that pass it with an aggregate's FILTER
# (SQLite 3.30 or later): its condition is evaluated as jumps, where sum() of the same
# condition computes a value per row; about 0.9 us a record less (a sixth of the query).
_INDEX_COLUMNS = """SELECT CAST(coalesce(group_concat(path, char(0)), '') AS BLOB),
    coalesce(group_concat(digest, char(0)), ''), coalesce(group_concat(ended, char(0)), ''),
    coalesce(group_concat(seq * 2 + role, ','), ''), count(*),
    count(*) FILTER (WHERE role IN (0, 1) AND typeof(path) = 'text' AND typeof(digest) = 'text'
                     AND typeof(ended) = 'text') = count(*)
  FROM ll_artifacts WHERE seq >= ? AND seq < ?"""
# Before SQLite 3.30 (no FILTER): the same guard as a sum.
_INDEX_COLUMNS_SUM = _INDEX_COLUMNS.replace(
    "count(*) FILTER (WHERE role", "coalesce(sum(role").replace("'text')", "'text'), 0)")


class SQLiteAuditReads:
    """Mixed into :class:`~lineage_ledger.backends._sqlite_reader.SQLiteReader`."""

    _fetch: Callable[[str, str, tuple], list]
    _uri: str
    display_url: str

    def audit_blocks(self, start: int, stop: int) -> list[tuple]:
        """``(height, id, first_seq, count, header, first body's bytes)`` of blocks ``start`` to
        ``stop``, as stored (the last column only sizes the worker's chunks)."""
        from ._sql_reads import FIRST_BODY_BYTES

        return self._fetch("reading blocks", "SELECT b.height, b.id, b.first_seq, b.count, b.header, "
                           f"{FIRST_BODY_BYTES} FROM ll_blocks b WHERE b.height >= ? AND b.height < ? "
                           "ORDER BY b.height", (int(start), int(stop)))

    def audit_chunk(self, start_seq: int, stop_seq: int) -> tuple[list[tuple], tuple, int]:
        """The record rows of sequence numbers ``start_seq`` to ``stop_seq``, as stored
        (``(seq, id, height, pos, run_id, body)``: each record with its own index columns),
        their artifact rows as joined columns, and how many artifact rows the range holds:
        all from one snapshot.

        The columns are ``(paths, digests, ends, keys, typed)`` (see ``_INDEX_COLUMNS``):
        the rows' paths joined by NUL (UTF-8 bytes), their digests and end times joined by
        NUL, ``seq * 2 + role`` joined by commas, in primary-key order, and whether every
        row has the writer's types (:func:`.._log.audit_bulk.index_columns` builds the same
        from the bodies). PostgreSQL's reads give a JSON text instead (``_pg_audit``).

        Read through a connection of its own that maps the file into memory (half the CPU
        of reading pages through SQLite's cache) and is closed before returning, so that
        the mapped pages leave the resident set again: a worker's peak grows by one
        chunk's pages, not by the part of the ledger it has read."""
        from ._sqlite_files import _connect, _translated

        with _translated("reading records", self.display_url):
            conn = _connect(self._uri)
            try:
                conn.isolation_level = None
                conn.execute(f"PRAGMA mmap_size = {_MAP_BYTES}")
                conn.execute("BEGIN")
                records = conn.execute("SELECT seq, id, height, pos, run_id, body FROM ll_records"
                                       " WHERE seq >= ? AND seq < ? ORDER BY seq",
                                       (int(start_seq), int(stop_seq))).fetchall()
                query = _INDEX_COLUMNS if sqlite3.sqlite_version_info >= (3, 30) else _INDEX_COLUMNS_SUM
                *columns, rows, typed = conn.execute(query, (int(start_seq), int(stop_seq))).fetchone()
                conn.execute("COMMIT")
            finally:
                conn.close()
        return records, (*columns, bool(typed)), rows
