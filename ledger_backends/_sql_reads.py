"""The SQL store's reads, written once as plain SQL.

Every read the core asks of the SQL store is written here through one primitive,
``self._fetch(what, statement, params) -> list[tuple]`` (``?`` placeholders;
:class:`~lineage_ledger.backends.sql.SQLBackend` turns them into ``%s`` for psycopg), shared
by ``SQLBackend`` (writers, PostgreSQL, through SQLAlchemy), the stdlib SQLite writer and
:class:`~._sqlite_reader.SQLiteReader`, which opens an SQLite ledger read-only with the
standard library's :mod:`sqlite3` without importing SQLAlchemy (about 0.15 s of a fresh
process's start).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from lineage_ledger._errors import IndexTampered
from lineage_ledger._model import BlockColumns, StoredBlock, StoredRecord

from ._base import ChainHead, IndexRow, IndexSummary, Located, Role

__all__ = ["SCHEMA_VERSION"]


SCHEMA_VERSION = "3"
_INDEX_ROWS_PER_READ = 20_000  # index rows fetched per query by index_rows()
_CHUNK = 500  # block headers fetched per query while iterating
_ROWS_PER_READ = 20_000  # records fetched per query (at least one whole block)
_ID_CHUNK = 500  # record ids per IN list in known()
_ONLY_STR = frozenset({str})
_ONLY_BYTES = frozenset({bytes})
_IN, _OUT = 0, 1  # artifact roles as stored
_HEX = "0123456789abcdef"
_PAGE_CURSORS = 64  # pages' last sequence numbers remembered, for the next page of each


def _chunks(items: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Distinct items, ``_ID_CHUNK`` at a time (one statement's parameters)."""
    unique = list(dict.fromkeys(items))
    for start in range(0, len(unique), _ID_CHUNK):
        yield tuple(unique[start : start + _ID_CHUNK])


# -- stored values --------------------------------------------------------------------------
def _as_bytes(value) -> bytes:
    """Stored bytes as they are; a value someone rewrote as TEXT or a number still verifies
    (and fails) instead of crashing the reader."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def _as_text(value) -> str:
    """A stored text column as ``str``; a value rewritten as bytes or a number still comes out."""
    if type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _as_int(value, default: int = -1) -> int:
    """A stored integer column as ``int``; anything a tamperer wrote there that is no whole
    number comes out as ``default``, for verification to report."""
    if type(value) is int:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if number == value or isinstance(value, (str, bytes)) else default


def _dangling(seq) -> IndexTampered:
    return IndexTampered(f"an index row names record number {seq}, which the ledger does not hold:"
                         " a row outside the chain")


def _successor(prefix: str) -> str | None:
    """The least hex string above every string that starts with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip("f")
    if not stripped:
        return None
    return stripped[:-1] + _HEX[_HEX.index(stripped[-1]) + 1]


# -- the reads ---------------------------------------------------------------------------------
class _SQLReads:
    """Every read the core asks of the SQL store, as plain SQL through ``self._fetch``.
    ``self._sqlite`` says which dialect (SQLite, or else PostgreSQL)."""

    _sqlite: bool
    #: ``_fetch(what, statement, params) -> rows``: each class reads through its own driver.
    _fetch: Callable[[str, str, tuple], list]

    def head(self) -> ChainHead | None:
        rows = self._fetch("reading the head", "SELECT height, id FROM ll_blocks ORDER BY height DESC LIMIT 1", ())
        return None if not rows else ChainHead(int(rows[0][0]), rows[0][1])

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

    def record_count(self) -> int:
        return int(self._fetch("counting records", "SELECT count(*) FROM ll_records", ())[0][0] or 0)

    def known(self, record_ids: Iterable[str]) -> set[str]:
        ids = list(record_ids)
        found: set[str] = set()
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = tuple(ids[i : i + _ID_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._fetch("looking up records", f"SELECT id FROM ll_records WHERE id IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def _located(self, where: str, params: tuple, *, bodies: bool = True) -> list[Located]:
        body = "body" if bodies else "NULL"
        rows = self._fetch(
            "query", f"SELECT height, pos, id, {body} FROM ll_records WHERE {where} ORDER BY seq", params
        )
        return [Located(int(h), int(p), StoredRecord(str(i), b"" if b is None else _as_bytes(b)))
                for h, p, i, b in rows]

    def _named(self, seqs: str, params: tuple, *, bodies: bool = True) -> list[Located]:
        """The records that the sequence numbers ``seqs`` (a query on ``ll_artifacts``) name,
        in ledger order, once each; an index row that names no stored record raises."""
        return self._named_seqs(seqs, params, bodies=bodies)[0]

    def _named_seqs(self, seqs: str, params: tuple, *, bodies: bool = True) -> tuple[list[Located], object]:
        """:meth:`_named`, and the last sequence number (None where there was none).

        Read from the index side (a left join): a forged row that names a record the ledger
        does not hold would otherwise vanish from the answer, and take a place of a page
        with it, so that a paged reader stopped early and left real readers out."""
        body = "r.body" if bodies else "NULL"
        rows = self._fetch(
            "query",
            f"SELECT a.seq, r.height, r.pos, r.id, {body} FROM (SELECT DISTINCT seq FROM ({seqs}) s) a"
            " LEFT JOIN ll_records r ON r.seq = a.seq ORDER BY a.seq",
            params,
        )
        found = []
        for seq, height, pos, record_id, stored in rows:
            if record_id is None:
                raise _dangling(seq)
            found.append(Located(int(height), int(pos),
                                 StoredRecord(str(record_id), b"" if stored is None else _as_bytes(stored))))
        return found, (rows[-1][0] if rows else None)

    def find_places(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        """:meth:`find` without the bodies (the core has most of them proved already)."""
        condition, params = self._artifact_condition(role, path, digest)
        return self._named(f"SELECT seq FROM ll_artifacts WHERE {condition}", params, bodies=False)

    def bodies(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        ids = list(record_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for record_id, body in self._fetch("query", f"SELECT id, body FROM ll_records WHERE id IN ({marks})",
                                               tuple(chunk)):
                found[_as_text(record_id)] = _as_bytes(body)
        return found

    def records_at(self, seqs: Sequence[int]) -> dict[int, StoredRecord]:
        found: dict[int, StoredRecord] = {}
        wanted = sorted({int(s) for s in seqs})
        for start in range(0, len(wanted), _ID_CHUNK):
            chunk = tuple(wanted[start : start + _ID_CHUNK])
            marks = ",".join("?" * len(chunk))
            for seq, record_id, body in self._fetch(
                    "query", f"SELECT seq, id, body FROM ll_records WHERE seq IN ({marks})", chunk):
                found[_as_int(seq)] = StoredRecord(_as_text(record_id), _as_bytes(body))
        return found

    @staticmethod
    def _artifact_condition(role: Role, path: str | None, digest: str | None) -> tuple[str, tuple]:
        """The WHERE clause on ``ll_artifacts`` and its parameters."""
        condition = "role = ?"
        params: list[object] = [_IN if role == "in" else _OUT]
        if path is not None:
            condition += " AND path = ?"
            params.append(path)
        if digest is not None:
            condition += " AND digest = ?"
            params.append(digest)
        return condition, tuple(params)

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        condition, params = self._artifact_condition(role, path, digest)
        return self._named(f"SELECT seq FROM ll_artifacts WHERE {condition}", params)

    def find_page(
        self, role: Role, *, path: str | None = None, digest: str | None = None,
        offset: int = 0, limit: int | None = None,
    ) -> list[Located]:
        """One page of :meth:`find`, read as one range of the path (or digest) index, which
        is in ledger order already, then only that page's records."""
        offset = start = max(0, int(offset))
        if limit is not None and int(limit) <= 0:
            return []
        condition, params = self._artifact_condition(role, path, digest)
        # The page after one read before starts past its last sequence number (one step down
        # the index) instead of skipping ``offset`` rows: paging through the million readers
        # of a file is then linear, not quadratic. Appends only add higher numbers, so the
        # answer is the one ``offset`` gives.
        cursors: dict = self.__dict__.setdefault("_page_cursors", {})
        query = (role, path, digest)
        after = cursors.get((*query, offset)) if offset else None
        if after is not None:
            condition, params, offset = condition + " AND seq > ?", (*params, after), 0
        # One record may hold a digest (or a role) under several paths: count it once.
        distinct = "DISTINCT " if path is None else ""
        # No limit: -1 to SQLite, NULL to PostgreSQL (which refuses a negative one).
        bound = int(limit) if limit is not None else (-1 if self._sqlite else None)
        found, last = self._named_seqs(
            f"SELECT {distinct}seq FROM ll_artifacts WHERE {condition} ORDER BY seq LIMIT ? OFFSET ?",
            (*params, bound, offset),
        )
        if last is not None and limit is not None and len(found) == int(limit):
            if len(cursors) >= _PAGE_CURSORS:
                cursors.clear()
            cursors[(*query, start + len(found))] = last
        return found

    def find_latest(self, role: Role, path: str) -> tuple[Located, str] | None:
        """The record that read (``in``) or wrote (``out``) ``path`` with the latest end
        time (then the latest in ledger order), and the end time the index claims for it:
        one step down ``ll_artifacts_latest``."""
        rows = self._fetch(
            "query",
            "SELECT a.seq, r.height, r.pos, r.id, a.ended FROM"
            " (SELECT seq, ended FROM ll_artifacts WHERE path = ? AND role = ?"
            " ORDER BY ended DESC, seq DESC LIMIT 1) a LEFT JOIN ll_records r ON r.seq = a.seq",
            (path, _IN if role == "in" else _OUT),
        )
        if not rows:
            return None
        seq, height, pos, record_id, ended = rows[0]  # the core asks bodies() if it needs it
        if record_id is None:
            raise _dangling(seq)
        return Located(_as_int(height), _as_int(pos), StoredRecord(_as_text(record_id), b"")), _as_text(ended)

    def find_latest_many(self, role: Role, paths: Sequence[str]) -> dict[str, tuple[Located, str]]:
        """:meth:`find_latest` of many paths, ``_ID_CHUNK`` a statement: each path one step
        down ``ll_artifacts_latest``, inside the database."""
        found: dict[str, tuple[Located, str]] = {}
        code = _IN if role == "in" else _OUT
        # PostgreSQL compares the given paths in the column's "C" collation (byte order).
        given = "p.path" if self._sqlite else 'p.path COLLATE "C"'
        # The seq and the end time come from the same first row of one order (as find_latest
        # reads them), never from a second look-up that duplicated rows could answer otherwise.
        latest = (f"FROM ll_artifacts a WHERE a.path = {given} AND a.role = ?"
                  " ORDER BY a.ended DESC, a.seq DESC LIMIT 1")
        for chunk in _chunks(paths):
            rows = self._fetch(
                "query",
                f"WITH p(path) AS (VALUES {','.join(['(?)'] * len(chunk))}),"
                f" l(path, seq, ended) AS (SELECT p.path, (SELECT a.seq {latest}), (SELECT a.ended {latest}) FROM p)"
                " SELECT l.path, l.seq, r.height, r.pos, r.id, l.ended FROM l LEFT JOIN ll_records r ON r.seq = l.seq"
                " WHERE l.seq IS NOT NULL",
                (*chunk, code, code),
            )
            for path, seq, height, pos, record_id, ended in rows:
                if record_id is None:
                    raise _dangling(seq)
                located = Located(_as_int(height), _as_int(pos), StoredRecord(_as_text(record_id), b""))
                found[_as_text(path)] = (located, _as_text(ended))
        return found

    def find_places_many(self, role: Role, paths: Sequence[str]) -> dict[str, list[Located]]:
        """:meth:`find_places` by path for many paths: one range of ``ll_artifacts_path``
        per path, ``_ID_CHUNK`` paths a statement, in ledger order per path."""
        found: dict[str, list[Located]] = {}
        code = _IN if role == "in" else _OUT
        for chunk in _chunks(paths):
            rows = self._fetch(
                "query",
                # DISTINCT: one row a record, as find_places' "seq IN (...)" gives, even where a
                # tamperer stored a (seq, role, path) twice.
                "SELECT DISTINCT a.path, a.seq, r.height, r.pos, r.id FROM ll_artifacts a"
                " LEFT JOIN ll_records r ON r.seq = a.seq"
                f" WHERE a.role = ? AND a.path IN ({','.join('?' * len(chunk))}) ORDER BY a.path, a.seq",
                (code, *chunk),
            )
            for path, seq, height, pos, record_id in rows:
                if record_id is None:
                    raise _dangling(seq)
                found.setdefault(_as_text(path), []).append(
                    Located(int(height), int(pos), StoredRecord(str(record_id), b"")))
        return found

    def count_found(self, role: Role, *, path: str | None = None, digest: str | None = None,
                    at_most: int | None = None) -> int:
        """Counted on the artifacts index alone: the records it names. (A row whose record
        was deleted behind our back still counts; readers verify what they read.) With
        ``at_most``, the count stops there: a file ten million tasks read costs no more."""
        condition, params = self._artifact_condition(role, path, digest)
        distinct = "" if path is not None else "DISTINCT "
        if at_most is None:
            statement = f"SELECT count({distinct}seq) FROM ll_artifacts WHERE {condition}"
        else:
            statement = f"SELECT count(*) FROM (SELECT {distinct}seq FROM ll_artifacts WHERE {condition} LIMIT ?) c"
            params = (*params, max(0, int(at_most)))
        rows = self._fetch("counting", statement, params)
        return int(rows[0][0] or 0)

    def by_run(self, run_id: str) -> list[Located]:
        return self._located("run_id = ?", (run_id,))

    def by_run_last(self, run_id: str, limit: int) -> tuple[list[Located], int]:
        """The run's last records from the end of its index range, not the whole run."""
        count = int(self._fetch("counting", "SELECT count(*) FROM ll_records WHERE run_id = ?", (run_id,))[0][0] or 0)
        if int(limit) <= 0:
            return [], count
        last = self._located("seq IN (SELECT seq FROM ll_records WHERE run_id = ? ORDER BY seq DESC LIMIT ?)",
                             (run_id, int(limit)))
        return last, count

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        """Records whose id starts with ``prefix`` (lower-case hex): one range of the ids'
        unique index, ``prefix <= id < successor``. (The check in Python keeps a collation
        that is not byte order on PostgreSQL from adding any other id.)"""
        if not prefix or any(c not in _HEX for c in prefix):
            return []
        upper = _successor(prefix)
        if upper is None:
            found = self._located("id >= ?", (prefix,))
        else:
            found = self._located("id >= ? AND id < ?", (prefix, upper))
        return [f for f in found if f.record.id.startswith(prefix)][:limit]

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

    def paths_under(self, directory: str, after: str = "", limit: int = 10_000) -> list[str] | None:
        """One range of ``ll_artifacts_path`` (byte order: the "C" collation on PostgreSQL):
        every path that starts with ``directory/`` lies in ``[directory/, directory0)``."""
        base = directory.rstrip("/")
        low, high = base + "/", base + "0"  # "0" follows "/" in byte order
        # One lower bound: given two, SQLite starts the range at the first and filters on the
        # second, reading every entry below the directory (6 s cold at 1M records).
        start = "path > ?" if after >= low else "path >= ?"  # str order is UTF-8 byte order
        # Each next path is one step down the index (the least one past the last), not a scan
        # of every row of each path: a file a million tasks read is one step, not a million.
        rows = self._fetch(
            "query",
            "WITH RECURSIVE p(path, n) AS ("
            f" SELECT (SELECT min(path) FROM ll_artifacts WHERE {start} AND path < ?), 1"
            " UNION ALL SELECT (SELECT min(a.path) FROM ll_artifacts a WHERE a.path > p.path AND a.path < ?), p.n + 1"
            " FROM p WHERE p.path IS NOT NULL AND p.n < ?)"
            " SELECT path FROM p WHERE path IS NOT NULL",
            (max(after, low), high, high, max(1, int(limit))),
        )
        return [_as_text(row[0]) for row in rows]

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


