"""The reads of an audit worker's bulk check of a range of records, on PostgreSQL.

The same contract as :class:`~._sqlite_audit.SQLiteAuditReads` (read it first): the worker
(``lineage_ledger._log.audit_bulk``) gets the stored record rows untouched and one text that
the database folds from the artifact index in the exact form ``msgspec`` encodes the same
facts read from the record bodies; anything unequal sends it to the row-by-row check, which
decides. PostgreSQL's own JSON functions put spaces in their output (``{"a" : 1}``), so the
text is built here from pieces: ``to_json(text)`` quotes a string with the escapes msgspec
writes (``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, ``\\u00xx`` in lower case for the other
control characters, everything else as it is), so a path or digest either comes out as the
same bytes or makes the texts differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ._sql_reads import FIRST_BODY_BYTES

__all__ = ["PostgresAuditReads"]

# One record's artifact members, "PATH":{"blake3":"DIGEST"}, joined in the order the rows come
# in: sorted below by path in byte order (COLLATE "C": a record body's keys are sorted by
# code point, which UTF-8 byte order keeps; the column's own collation could put them
# otherwise, or call different paths equal). An ORDER BY inside each aggregate cost a sort
# per record and role (a third of the statement); the sorted subquery is read in order from
# the primary key's index. Should a plan ever feed the rows in another order, the texts
# differ and the row-by-row check decides: order costs speed, never a wrong answer.
_MEMBERS = ("""coalesce(string_agg(to_json(path)::text || ':{"blake3":' || to_json(digest)::text || '}', ',')"""
            """ FILTER (WHERE role = ROLE), '')""")

# ``[SEQ,"ENDED",{INPUTS},{OUTPUTS}]`` per sequence number with rows, joined in seq order into
# ``[...]``, and the number of rows of the range whatever their role (a row of another role is
# in neither object: the count then disagrees with what the bodies name). The end time is
# given only when every row carries the same one (compared in "C", where equal means the
# same bytes), none NULL; otherwise ``null``, which never matches.
#
# Typed columns decide most of what SQLite checks with typeof(), but a column could have been
# altered to another type: an integer path or digest would come out bare (no match), yet a
# ``jsonb`` digest holding the string would come out quoted, the same bytes, where the
# row-by-row check reads its text with the quotes and fails. So the text is NULL unless the
# five columns have the writer's types (_sql_schema.py), read from the catalog in the same statement.
# (A column altered while this transaction runs cannot be: its lock on the table is held to
# the end, and a rewrite by a transaction begun after its snapshot leaves the table empty to
# it, which does not match either.)
_TYPES_AS_WRITTEN = """(SELECT count(*) = 5 FROM pg_attribute
   WHERE attrelid = 'll_artifacts'::regclass AND attnum > 0 AND NOT attisdropped
     AND (attname, atttypid) IN (('seq', 'bigint'::regtype), ('role', 'smallint'::regtype),
       ('path', 'text'::regtype), ('digest', 'character varying'::regtype),
       ('ended', 'character varying'::regtype)))"""

_INDEX_TEXT = f"""SELECT CASE WHEN {_TYPES_AS_WRITTEN}
    THEN convert_to('[' || coalesce(string_agg(folded, ','), '') || ']', 'UTF8') END,
    coalesce(sum(n), 0)::bigint
  FROM (SELECT seq, '[' || seq::text || ','
      || CASE WHEN min(ended COLLATE "C") = max(ended COLLATE "C") AND count(ended) = count(*)
              THEN to_json(min(ended COLLATE "C"))::text ELSE 'null' END
      || ',{{' || {_MEMBERS.replace('ROLE', '0')} || '}},{{' || {_MEMBERS.replace('ROLE', '1')} || '}}]' AS folded,
      count(*) AS n
    FROM (SELECT seq, role, path, digest, ended FROM ll_artifacts WHERE seq >= %s AND seq < %s
          ORDER BY seq, role, path COLLATE "C") AS sorted
    GROUP BY seq ORDER BY seq) AS per_record"""

_RECORDS = "SELECT seq, id, height, pos, run_id, body FROM ll_records WHERE seq >= %s AND seq < %s ORDER BY seq"
_BLOCKS = ("SELECT b.height, b.id, b.first_seq, b.count, b.header, " + FIRST_BODY_BYTES +
           " FROM ll_blocks b WHERE b.height >= ? AND b.height < ? ORDER BY b.height")
# One snapshot for the records, the text and the count; read only, like every session here.
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class PostgresAuditReads:
    """Mixed into :class:`~lineage_ledger.backends._pg_reader.PostgresReader`."""

    _fetch: Callable[[str, str, tuple], list]
    _borrow: Callable[[], Any]
    _give_back: Callable[[Any], None]
    _translated: Callable[[str], AbstractContextManager[None]]

    def audit_blocks(self, start: int, stop: int) -> list[tuple]:
        """``(height, id, first_seq, count, header, first body's bytes)`` of blocks ``start`` to
        ``stop``, as stored (the last column only sizes the worker's chunks)."""
        return self._fetch("reading blocks", _BLOCKS, (int(start), int(stop)))

    def audit_chunk(self, start_seq: int, stop_seq: int) -> tuple[list[tuple], bytes | None, int]:
        """The record rows of sequence numbers ``start_seq`` to ``stop_seq``, as stored
        (``(seq, id, height, pos, run_id, body)``), their artifact rows folded into one JSON
        text (UTF-8 bytes; None where a column has another type than the writer's), and how
        many artifact rows the range holds: all from one REPEATABLE READ snapshot. The text
        is :meth:`~._sqlite_audit.SQLiteAuditReads.audit_chunk`'s, byte for byte."""
        bounds = (int(start_seq), int(stop_seq))
        with self._translated("reading records"), self._session() as conn:
            conn.execute(_BEGIN)
            # Binary results: bodies come as bytes, not hex text (1.1 ms of this process's
            # CPU for 1,000 bodies, against 3.9-5.2 ms as text); every column still comes
            # as the Python type psycopg gives it either way.
            records = conn.cursor(binary=True).execute(_RECORDS, bounds).fetchall()
            text, rows = conn.cursor(binary=True).execute(_INDEX_TEXT, bounds).fetchone()
            conn.execute("COMMIT")
        return records, text, rows

    @contextmanager
    def _session(self) -> Iterator[Any]:
        conn = self._borrow()
        try:
            yield conn
        except BaseException:
            conn.close()  # a transaction may be open: never lend it again
            raise
        self._give_back(conn)
