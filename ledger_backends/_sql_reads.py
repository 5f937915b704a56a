"""The SQL store's reads, written once as plain SQL.

Every read the core asks of the SQL store is written through one primitive,
``self._fetch(what, statement, params) -> list[tuple]`` (``?`` placeholders;
:class:`~lineage_ledger.backends.sql.SQLBackend` turns them into ``%s`` for psycopg), shared
by ``SQLBackend`` (writers, PostgreSQL, through SQLAlchemy), the stdlib SQLite writer and
:class:`~._sqlite_reader.SQLiteReader`, which opens an SQLite ledger read-only with the
standard library's :mod:`sqlite3` without importing SQLAlchemy (about 0.15 s of a fresh
process's start).

This module holds the reads of everything in order: the chain's blocks, and the audit's
stream and summaries of the whole index. The look-ups of a few rows each (by path, digest,
run or id) are in :mod:`._sql_lookups`, a base of :class:`_SQLReads`; how a stored value is
read when it may have been rewritten, in :mod:`._sql_values`. Importers keep importing
:class:`_SQLReads`, ``SCHEMA_VERSION`` and the stored roles ``_IN``/``_OUT`` from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from lineage_ledger._model import BlockColumns, StoredBlock, StoredRecord

from ._base import ChainHead, IndexRow, IndexSummary
from ._sql_lookups import _SQLLookups
from ._sql_values import _IN, _OUT, _as_bytes, _as_int, _as_text

__all__ = ["SCHEMA_VERSION"]

# A block's first record's body length, read beside the block row (one key look-up): the
# audit sizes its ranges and chunks by it, so that records naming thousands of paths each
# come fewer at a time.
FIRST_BODY_BYTES = "(SELECT length(r.body) FROM ll_records r WHERE r.seq = b.first_seq)"


SCHEMA_VERSION = "3"
# Read from this module's globals at each call (tests make it small to cross read boundaries).
_INDEX_ROWS_PER_READ = 20_000  # index rows fetched per query by index_rows()
_CHUNK = 500  # block headers fetched per query while iterating
_ROWS_PER_READ = 20_000  # records fetched per query (at least one whole block)
_ONLY_STR = frozenset({str})
_ONLY_BYTES = frozenset({bytes})


# -- the reads ---------------------------------------------------------------------------------
class _SQLReads(_SQLLookups):
    """Every read the core asks of the SQL store, as plain SQL through ``self._fetch``:
    the look-ups (:class:`~._sql_lookups._SQLLookups`) and the reads in order below.
    ``self._sqlite`` says which dialect (SQLite, or else PostgreSQL)."""

    _sqlite: bool
    #: ``_fetch(what, statement, params) -> rows``: each class reads through its own driver.
    _fetch: Callable[[str, str, tuple], list]

    def head(self) -> ChainHead | None:
        rows = self._fetch("reading the head", "SELECT height, id FROM ll_blocks ORDER BY height DESC LIMIT 1", ())
        return None if not rows else ChainHead(int(rows[0][0]), rows[0][1])

    def block_id_at(self, height: int) -> str | None:
        rows = self._fetch("reading a block's id", "SELECT id FROM ll_blocks WHERE height = ?", (int(height),))
        return None if not rows else rows[0][0] if type(rows[0][0]) is str else str(rows[0][0])

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        for height, block_id, header, rows in self._block_rows(start, stop):
            records = tuple(
                StoredRecord(record_id if type(record_id) is str else str(record_id),
                             body if type(body) is bytes else _as_bytes(body))
                for _, record_id, body in rows
            )
            yield StoredBlock(height, block_id, header, records)

    def block_columns(self, start: int = 0, stop: int | None = None) -> Iterator[BlockColumns]:
        for height, block_id, header, rows in self._block_rows(start, stop):
            if rows:
                _, ids, bodies = zip(*rows, strict=True)
                # Anything but str ids and bytes bodies was rewritten behind our back:
                # coerce it as blocks() does, so that verification reports it.
                if not _ONLY_STR.issuperset(map(type, ids)):
                    ids = tuple(i if type(i) is str else str(i) for i in ids)
                if not _ONLY_BYTES.issuperset(map(type, bodies)):
                    bodies = tuple(b if type(b) is bytes else _as_bytes(b) for b in bodies)
            else:
                ids = bodies = ()
            yield BlockColumns(height, block_id, header, ids, bodies)

    def _block_rows(self, start: int, stop: int | None) -> Iterator[tuple[int, str, bytes, Sequence]]:
        """(height, id, header, [(seq, record id, body), ...]) per block, in height order."""
        # Read up to the head, not until a chunk comes back short: a deleted block row
        # must show up as a gap for verification, not end the chain early.
        if stop is None:
            head = self.head()
            stop = 0 if head is None else head.height + 1
        low = start
        while low < stop:
            high = min(low + _CHUNK, stop)
            headers = self._fetch(
                "reading blocks",
                "SELECT height, id, first_seq, count, header FROM ll_blocks"
                " WHERE height >= ? AND height < ? ORDER BY height",
                (low, high),
            )
            # Records are read a group of blocks at a time, a bounded number of rows per
            # query, so that memory does not grow with the block size times _CHUNK.
            group: list = []
            grouped = 0
            for index, header_row in enumerate(headers):
                group.append(header_row)
                grouped += max(0, int(header_row[3]))
                if grouped >= _ROWS_PER_READ or index == len(headers) - 1:
                    yield from self._read_group(group)
                    group, grouped = [], 0
            low = high

    def _read_group(self, headers: list) -> Iterator[tuple[int, str, bytes, Sequence]]:
        first = int(headers[0][2])
        last = int(headers[-1][2]) + int(headers[-1][3])
        rows = self._fetch(
            "reading blocks", "SELECT seq, id, body FROM ll_records WHERE seq >= ? AND seq < ? ORDER BY seq",
            (first, last),
        )
        position = 0
        for height, block_id, first_seq, count, header in headers:
            first_seq, count = int(first_seq), int(count)
            # Rows come sorted by their unique seq, so a block is the next `count`
            # rows when the first and last carry the seqs it owns.
            chunk = rows[position : position + count]
            if len(chunk) == count and (
                not chunk or (chunk[0][0] == first_seq and chunk[-1][0] == first_seq + count - 1)
            ):
                position += count
            else:  # rows missing or out of place: keep what is there, verify reports it
                chunk = [r for r in rows if first_seq <= r[0] < first_seq + count]
                position = next((i for i, r in enumerate(rows) if r[0] >= first_seq + count), len(rows))
                # The stored count is a claim too: a record it names that is not stored shows
                # as an empty one, so the header's count and Merkle root disagree.
                chunk += [(None, "", b"")] * max(0, count - len(chunk))
            yield int(height), str(block_id), _as_bytes(header), chunk

    def block_counts(self) -> list[tuple[int, int]]:
        """(height, record count) of every block row, unverified: for planning work only."""
        return [(int(h), int(c)) for h, c in self._fetch(
            "planning the audit", "SELECT height, count FROM ll_blocks ORDER BY height", ())]

    def block_weights(self) -> list[tuple[int, int, int]]:
        """(height, record count, bytes of its first record's body) of every block row,
        unverified: for sizing the audit's ranges (a body grows with the paths it names)."""
        return [(int(h), int(c), n if type(n) is int else 0) for h, c, n in self._fetch(
            "planning the audit", f"SELECT b.height, b.count, {FIRST_BODY_BYTES} FROM ll_blocks b ORDER BY b.height", ())]

    def record_count(self) -> int:
        return int(self._fetch("counting records", "SELECT count(*) FROM ll_records", ())[0][0] or 0)

    # -- the audit's stream ---------------------------------------------------------------
    def index_rows(self, stop_seq: int) -> Iterator[IndexRow]:
        """Both index tables read once in ledger order, ``_INDEX_ROWS_PER_READ`` rows per
        query, merged by sequence number: a range scan of ``ll_records`` and one of
        ``ll_artifacts``' primary key. A row whose role is neither in (0) nor out (1) is
        left out: no look-up reads it, and the row it was is then missing from the
        record's inputs or outputs, which the audit reports."""
        return self._merged_index_rows(int(stop_seq))

    def index_summaries(self, start_seq: int, stop_seq: int) -> list[IndexSummary]:
        """One row per record with ``start_seq <= seq < stop_seq``: its columns and its
        artifact rows folded by the database into one text (see :class:`IndexSummary`), so
        that the audit's comparison costs one string per record, not a Python object per
        artifact. A row of unexpected type is folded as ``?`` and can never match."""
        if self._sqlite:
            fold = ("CASE WHEN typeof(a.role) = 'integer' AND typeof(a.path) = 'text' AND typeof(a.digest) = 'text'"
                    " AND typeof(a.ended) = 'text'"
                    " THEN a.role || ':' || length(a.path) || ':' || a.path || a.digest || a.ended ELSE '?' END")
            artifacts = (f"(SELECT group_concat(x, char(10)) FROM (SELECT {fold} AS x FROM ll_artifacts a"
                         " WHERE a.seq = r.seq ORDER BY a.role, a.path))")
        else:
            artifacts = ("(SELECT string_agg(a.role || ':' || length(a.path) || ':' || a.path || a.digest || a.ended,"
                         " E'\\n'"
                         " ORDER BY a.role, a.path COLLATE \"C\") FROM ll_artifacts a WHERE a.seq = r.seq)")
        statement = (f"SELECT r.seq, r.id, r.height, r.pos, r.run_id, {artifacts} FROM ll_records r"
                     " WHERE r.seq >= ? AND r.seq < ? ORDER BY r.seq")
        return [IndexSummary(*row) for row in self._fetch("reading the index", statement,
                                                            (int(start_seq), int(stop_seq)))]

    def artifact_count(self, stop_seq: int, start_seq: int | None = None) -> int:
        if start_seq is None:
            rows = self._fetch("counting the index", "SELECT count(*) FROM ll_artifacts WHERE seq < ?",
                               (int(stop_seq),))
        else:
            rows = self._fetch("counting the index", "SELECT count(*) FROM ll_artifacts WHERE seq >= ? AND seq < ?",
                               (int(start_seq), int(stop_seq)))
        return int(rows[0][0])

    def rows_outside_the_chain(self, size: int, blocks: int) -> int:
        size, blocks = int(size), int(blocks)
        rows = self._fetch(
            "counting the index",
            "SELECT (SELECT count(*) FROM ll_records WHERE seq < 0)"
            " + (SELECT count(*) FROM ll_records r WHERE r.seq >= ? AND (r.height < ?"
            "    OR NOT EXISTS (SELECT 1 FROM ll_blocks b WHERE b.height = r.height)))"
            " + (SELECT count(*) FROM ll_artifacts a WHERE a.seq >= ?"
            "    AND NOT EXISTS (SELECT 1 FROM ll_records r WHERE r.seq = a.seq))"
            " + (SELECT count(*) FROM ll_blocks WHERE height < 0)",
            (size, blocks, size),
        )
        return int(rows[0][0] or 0)

    def _merged_index_rows(self, stop: int) -> Iterator[IndexRow]:
        records = self._record_rows(stop)
        artifacts = self._artifact_rows(stop)
        record = next(records, None)
        artifact = next(artifacts, None)
        while record is not None or artifact is not None:
            if artifact is None or (record is not None and record[0] <= artifact[0]):
                assert record is not None
                seq = record[0]
            else:
                seq = artifact[0]
            inputs: list[tuple[str, str]] = []
            outputs: list[tuple[str, str]] = []
            while artifact is not None and artifact[0] == seq:
                role = artifact[1]
                if role == _IN or role == _OUT:
                    (inputs if role == _IN else outputs).append((_as_text(artifact[2]), _as_text(artifact[3])))
                artifact = next(artifacts, None)
            if record is not None and record[0] == seq:
                _, record_id, height, pos, run_id = record
                record = next(records, None)
                yield IndexRow(seq, _as_text(record_id), _as_int(height), _as_int(pos), _as_text(run_id),
                               tuple(sorted(inputs)), tuple(sorted(outputs)))
            else:  # index rows that point at no record
                yield IndexRow(seq, "", -1, -1, "", tuple(sorted(inputs)), tuple(sorted(outputs)))

    def _record_rows(self, stop: int) -> Iterator[tuple]:
        columns = "SELECT seq, id, height, pos, run_id FROM ll_records"
        limit = _INDEX_ROWS_PER_READ
        rows = self._fetch("reading the index", columns + " WHERE seq < ? ORDER BY seq LIMIT ?", (stop, limit))
        while True:
            yield from rows
            if len(rows) < limit:
                return
            rows = self._fetch(
                "reading the index", columns + " WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (rows[-1][0], stop, limit),
            )

    def _artifact_rows(self, stop: int) -> Iterator[tuple]:
        """(seq, role, path, digest) in primary-key order. A read that ends inside one
        sequence number's rows is cut before them and they are read again with the next
        range; one sequence number with more rows than a read is paged by (role, path)."""
        columns = "SELECT seq, role, path, digest FROM ll_artifacts"
        limit = _INDEX_ROWS_PER_READ
        after: int | None = None
        while True:
            if after is None:
                rows = self._fetch("reading the index", columns + " WHERE seq < ? ORDER BY seq, role, path LIMIT ?",
                                   (stop, limit))
            else:
                rows = self._fetch(
                    "reading the index", columns + " WHERE seq > ? AND seq < ? ORDER BY seq, role, path LIMIT ?",
                    (after, stop, limit),
                )
            # A seq that is no integer (text written into the column) sorts after every
            # number and no reader's look-up reaches it: leave it out.
            if len(rows) < limit:
                yield from (row for row in rows if type(row[0]) is int)
                return
            last = rows[-1][0]
            if type(last) is not int:
                yield from (row for row in rows if type(row[0]) is int)
                return
            if rows[0][0] != last:
                cut = len(rows) - 1
                while rows[cut - 1][0] == last:
                    cut -= 1
                yield from rows[:cut]
                after = rows[cut - 1][0]
                continue
            yield from rows  # one seq fills a whole read
            role, path = rows[-1][1], rows[-1][2]
            while True:
                more = self._fetch(
                    "reading the index",
                    columns + " WHERE seq = ? AND (role > ? OR (role = ? AND path > ?)) ORDER BY role, path LIMIT ?",
                    (last, role, role, path, limit),
                )
                yield from more
                if len(more) < limit:
                    break
                role, path = more[-1][1], more[-1][2]
            after = last
