"""The reads of an audit worker's bulk check of a range of records (SQLite only).

An audit worker (``lineage_ledger._log.audit_bulk``) checks a range of blocks with a few
comparisons of whole columns instead of a Python comparison per index row. These reads
hand it the stored values untouched (no coercion: a value of an unexpected type simply
fails to compare equal, and the worker then runs the row-by-row check) and one text that
SQLite folds from the artifact index, in C, in the exact form ``msgspec`` encodes the
same facts read from the record bodies (see :meth:`SQLiteAuditReads.audit_index_text`).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SQLiteAuditReads"]

_MAP_BYTES = 1 << 40  # map the whole file (SQLite caps it at its compiled maximum, 2 GiB by default)

# One record's artifact rows as ``[SEQ,"ENDED",{INPUTS},{OUTPUTS}]``, built by SQLite's JSON
# functions in C (about 20% less than concatenating json_quote()d text): each object's
# members ``"PATH":{"blake3":"DIGEST"}`` in primary-key order (role, then path: the order of a
# record body's sorted keys). json_object() makes a string only of a text digest (a number
# comes out bare, a BLOB fails the statement, and the worker then checks row by row); an
# object key, though, is any value made text, so every path must be text, and every role an
# integer, or the end time is given as ``null``, which never matches. The end time is given
# only when every row carries the same one, none NULL (which min() and max() would skip).
# Rows whose role is neither 0 nor 1 are in neither object; the count in the second column,
# of every row of the range whatever its role, then disagrees with what the bodies name.
_INDEX_TEXT = """SELECT CAST('[' || coalesce(group_concat(folded, ','), '') || ']' AS BLOB), coalesce(sum(rows), 0)
  FROM (SELECT json_array(seq,
        iif(min(ended) = max(ended) AND count(ended) = count(*)
            AND sum(typeof(role) = 'integer' AND typeof(path) = 'text') = count(*), min(ended), NULL),
        json_group_object(path, json_object('blake3', digest)) FILTER (WHERE role = 0),
        json_group_object(path, json_object('blake3', digest)) FILTER (WHERE role = 1)) AS folded,
      count(*) AS rows
  FROM ll_artifacts WHERE seq >= ? AND seq < ? GROUP BY seq)"""


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

    def audit_chunk(self, start_seq: int, stop_seq: int) -> tuple[list[tuple], bytes, int]:
        """The record rows of sequence numbers ``start_seq`` to ``stop_seq``, as stored
        (``(seq, id, height, pos, run_id, body)``: each record with its own index columns),
        their artifact rows folded into one JSON text (UTF-8 bytes), and how many artifact
        rows the range holds: all from one snapshot.

        The text is ``[[SEQ,"ENDED",{"PATH":{"blake3":"DIGEST"},...},{...}],...]``, one entry
        per sequence number that has rows, inputs (role 0) then outputs (role 1); a record
        whose body names the same facts encodes (``msgspec``) to the same bytes.

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
                text, rows = conn.execute(_INDEX_TEXT, (int(start_seq), int(stop_seq))).fetchone()
                conn.execute("COMMIT")
            finally:
                conn.close()
        return records, text, rows
