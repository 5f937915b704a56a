"""The SQL store's reads, and SQLite opened for reading only, without SQLAlchemy.

A command that only reads an SQLite ledger (``verify-lineage FILE``, ``lineage-ledger
why``, the plugins' checks before a run) starts a fresh process, and ``import sqlalchemy``
alone cost it about 0.15 s (0.14-0.19 s measured with ``python -X importtime``), while its
reading took about 0.02 s. So every read the core asks of the SQL store is written here as
plain SQL through one primitive, ``self._fetch(what, statement, params) -> list[tuple]``
(``?`` placeholders; :class:`~lineage_ledger.backends.sql.SQLBackend` turns them into
``%s`` for psycopg), shared by two classes: ``SQLBackend`` (writers, PostgreSQL, through
SQLAlchemy) and :class:`SQLiteReader` here, which opens an SQLite ledger read-only with the
standard library's :mod:`sqlite3` (what ``open_backend(url, create=False)`` gives for SQLite).

A ledger is read completely, the committed transactions still in its ``-wal`` file
included, and nothing is written: see :func:`read_only_uri`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

from lineage_ledger._errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    CorruptStore,
    LedgerError,
    NoLedger,
)
from lineage_ledger._model import BlockColumns, StoredBlock, StoredRecord

from ._base import Backend, ChainHead, IndexRow, IndexSummary, Located, Role
from ._sqlite_audit import SQLiteAuditReads

__all__ = ["SQLiteReader", "read_only_uri", "sqlite_file"]

SCHEMA_VERSION = "3"
_INDEX_ROWS_PER_READ = 20_000  # index rows fetched per query by index_rows()
_CHUNK = 500  # block headers fetched per query while iterating
_ROWS_PER_READ = 20_000  # records fetched per query (at least one whole block)
_ID_CHUNK = 500  # record ids per IN list in known()
_ONLY_STR = frozenset({str})
_ONLY_BYTES = frozenset({bytes})
_BUSY_TIMEOUT_S = 60
_IN, _OUT = 0, 1  # artifact roles as stored
_HEX = "0123456789abcdef"


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


def _successor(prefix: str) -> str | None:
    """The least hex string above every string that starts with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip("f")
    if not stripped:
        return None
    return stripped[:-1] + _HEX[_HEX.index(stripped[-1]) + 1]


# -- errors -----------------------------------------------------------------------------------
def database_error(what: str, shown: str, text: str) -> LedgerError:
    """The library's error for a database error whose (redacted) message is ``text``."""
    lowered = text.lower()
    if any(s in lowered for s in ("not a database", "malformed", "corrupt", "disk image")):
        return CorruptStore(
            f"{shown}: the ledger database is corrupt or truncated ({text}); "
            "restore it from a copy, or verify a replica"
        )
    if "no such table" in lowered or "does not exist" in lowered and "relation" in lowered:
        return CorruptStore(f"{shown}: ledger tables are missing ({text})")
    return BackendUnavailable(f"{shown}: {what} failed: {text}")


def refusal(shown: str, *, sqlite: bool, tables: set[str], version: str | None, where: str) -> LedgerError:
    """Why a ledger opened for reading cannot be read (``where``: what a missing one is called)."""
    if version is None:
        if sqlite and tables:
            return ConfigError(f"{shown}: this database is not a lineage ledger")
        return NoLedger(f"no ledger at {where}")
    if version == "2":
        return ConfigError(
            f"{shown}: this ledger has schema 2 and must be migrated to schema {SCHEMA_VERSION} once: "
            f"run `lineage-ledger migrate --ledger {shown}` (with write access to it)"
        )
    if version == SCHEMA_VERSION:
        return CorruptStore(f"{shown}: the ledger's origin is missing from ll_meta")
    return ConfigError(f"{shown}: ledger schema {version}, expected {SCHEMA_VERSION}")


# -- SQLite files ------------------------------------------------------------------------------
def sqlite_file(url: str) -> str | None:
    """The file an SQLite URL (or plain path) names, as SQLAlchemy reads it: ``None`` for
    ``sqlite://`` and ``:memory:``. ``None`` too for a URL of another database."""
    if "://" not in url:
        url = "sqlite:///" + url
    scheme, rest = url.split("://", 1)
    if scheme.split("+", 1)[0].lower() != "sqlite":
        return None
    rest = rest.split("?", 1)[0]
    if "/" not in rest:
        return None
    database = rest.split("/", 1)[1]
    return None if database in ("", ":memory:") else database


def is_sqlite_url(url: str) -> bool:
    return "://" not in url or url.split("://", 1)[0].split("+", 1)[0].lower() == "sqlite"


def _writable(path: str) -> bool:
    """Whether we may write ``path``, by its mode as well: root may write anything, but a
    file or directory whose mode grants nobody write access is a read-only copy to it too."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & 0o222)


def _sqlite_uri(path: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + ("?" + query if query else "")


def _connect(uri: str) -> sqlite3.Connection:
    return sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, check_same_thread=False)


def _probe(uri: str) -> sqlite3.Error | None:
    """The error a read through ``uri`` gets, or None when it reads."""
    try:
        conn = _connect(uri)
    except sqlite3.Error as err:
        return err
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return None
    except sqlite3.Error as err:
        return err
    finally:
        conn.close()


def _cannot_open_read_only(err: sqlite3.Error) -> bool:
    """Errors of a read-only WAL database that needs a -shm it may not create."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY)
    text = str(err).lower()
    return "unable to open" in text or "readonly" in text or "read-only" in text


def _file_state(path: str) -> tuple:
    state: list[tuple[int, int, int] | None] = []
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            state.append(None)
        else:
            state.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(state)


def _copy_private(source: str, target: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    with open(source, "rb") as src:
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _private_copy(path: str, shown: str) -> str:
    """Copy the database and its -wal into a new 0700 directory; returns the directory.
    The copy is taken again if either file changed while it was read."""
    directory = tempfile.mkdtemp(prefix="lineage-ledger-ro-")
    try:
        os.chmod(directory, 0o700)
        target = os.path.join(directory, "ledger.db")
        for _attempt in range(10):
            before = _file_state(path)
            _copy_private(path, target)
            if before[1] is not None:
                _copy_private(path + "-wal", target + "-wal")
            elif os.path.exists(target + "-wal"):
                os.unlink(target + "-wal")
            if _file_state(path) == before:
                return directory
            time.sleep(0.05)
        raise BackendUnavailable(f"{shown}: the ledger kept changing while a private copy was taken")
    except OSError as err:
        shutil.rmtree(directory, ignore_errors=True)
        raise BackendUnavailable(f"{shown}: cannot read {path}: {err.strerror}") from err
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def read_only_uri(path: str, shown: str) -> tuple[str, str, str | None]:
    """How to read a ledger without writing it, WAL included: (SQLite URI, strategy, the
    private copy's directory or None; the caller removes it when done).

    A ledger we may write (its file, directory and any ``-shm``) is read in place with
    SQLite's ``mode=ro``, which takes part in the WAL's locking (other processes may
    append meanwhile): strategy ``"ro"``. One we may not write (by its modes: root too
    leaves a 0444 copy alone) is read with ``mode=ro&readonly_shm=1`` when its ``-shm``
    exists (the WAL index is then rebuilt in private memory, nothing is written; ``"ro"``);
    with no ``-shm`` but a ``-wal``, the file and its WAL are copied into a private 0700
    directory (``"copy"``); with no WAL at all, ``immutable=1`` loses nothing
    (``"immutable"``). (``immutable=1`` alone, as before, ignored the WAL and lost
    committed records.)
    """
    wal, shm = path + "-wal", path + "-shm"
    has_wal = os.path.exists(wal) and os.path.getsize(wal) > 0
    writable = _writable(path) and _writable(os.path.dirname(os.path.abspath(path)))
    if writable and (not os.path.exists(shm) or _writable(shm)):
        uri = _sqlite_uri(path, mode="ro")
        error = _probe(uri)
        if error is None or not _cannot_open_read_only(error):
            return uri, "ro", None  # a real error shows up, translated, on the first read
    elif os.path.exists(shm):
        uri = _sqlite_uri(path, mode="ro", readonly_shm="1")
        error = _probe(uri)
        if error is None or not _cannot_open_read_only(error):
            return uri, "ro", None
    if not has_wal:
        return _sqlite_uri(path, mode="ro", immutable="1"), "immutable", None
    directory = _private_copy(path, shown)
    return _sqlite_uri(os.path.join(directory, "ledger.db"), mode="ro"), "copy", directory


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

    def find_places(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        """:meth:`find` without the bodies (the core has most of them proved already)."""
        condition, params = self._artifact_condition(role, path, digest)
        return self._located(f"seq IN (SELECT seq FROM ll_artifacts WHERE {condition})", params, bodies=False)

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
        return self._located(f"seq IN (SELECT seq FROM ll_artifacts WHERE {condition})", params)

    def find_page(
        self, role: Role, *, path: str | None = None, digest: str | None = None,
        offset: int = 0, limit: int | None = None,
    ) -> list[Located]:
        """One page of :meth:`find`, read as one range of the path (or digest) index, which
        is in ledger order already, then only that page's records."""
        offset = max(0, int(offset))
        if limit is not None and int(limit) <= 0:
            return []
        condition, params = self._artifact_condition(role, path, digest)
        # One record may hold a digest (or a role) under several paths: count it once.
        distinct = "DISTINCT " if path is None else ""
        # No limit: -1 to SQLite, NULL to PostgreSQL (which refuses a negative one).
        bound = int(limit) if limit is not None else (-1 if self._sqlite else None)
        return self._located(
            f"seq IN (SELECT {distinct}seq FROM ll_artifacts WHERE {condition} ORDER BY seq LIMIT ? OFFSET ?)",
            (*params, bound, offset),
        )

    def find_latest(self, role: Role, path: str) -> tuple[Located, str] | None:
        """The record that read (``in``) or wrote (``out``) ``path`` with the latest end
        time (then the latest in ledger order), and the end time the index claims for it:
        one step down ``ll_artifacts_latest``."""
        rows = self._fetch(
            "query",
            "SELECT r.height, r.pos, r.id, NULL, a.ended FROM ll_records r JOIN"
            " (SELECT seq, ended FROM ll_artifacts WHERE path = ? AND role = ?"
            " ORDER BY ended DESC, seq DESC LIMIT 1) a ON r.seq = a.seq",
            (path, _IN if role == "in" else _OUT),
        )
        if not rows:
            return None
        height, pos, record_id, _no_body, ended = rows[0]  # the core asks bodies() if it needs it
        return Located(_as_int(height), _as_int(pos), StoredRecord(_as_text(record_id), b"")), _as_text(ended)

    def count_found(self, role: Role, *, path: str | None = None, digest: str | None = None) -> int:
        """Counted on the artifacts index alone: the records it names. (A row whose record
        was deleted behind our back still counts; readers verify what they read.)"""
        condition, params = self._artifact_condition(role, path, digest)
        counted = "count(*)" if path is not None else "count(DISTINCT seq)"
        rows = self._fetch("counting", f"SELECT {counted} FROM ll_artifacts WHERE {condition}", params)
        return int(rows[0][0] or 0)

    def by_run(self, run_id: str) -> list[Located]:
        return self._located("run_id = ?", (run_id,))

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


# -- SQLite, read-only -------------------------------------------------------------------------
@contextlib.contextmanager
def _translated(what: str, shown: str):
    """:mod:`sqlite3` errors as the library's own, with the cause attached."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        raise database_error(what, shown, str(err).strip()) from err
    except sqlite3.Error as err:
        raise BackendError(f"{shown}: {what} failed: {err}") from err


class SQLiteFile:
    """What both SQLite classes (this reader, ``sqlite.SQLiteBackend``) say of their file."""

    _path: str
    _origin: str | None

    @property
    def identity(self) -> str:  # x.db, sqlite:///x.db and ./x.db from another directory: one file
        return "sqlite:///" + os.path.realpath(self._path)

    @property
    def origin(self) -> str:
        """``lineage-ledger:`` and 32 hex digits, made with the ledger and never changed."""
        assert self._origin is not None
        return self._origin


_READERS: weakref.WeakSet[SQLiteReader] = weakref.WeakSet()


def _close_parents_readers_after_fork() -> None:
    # A forked child must close the read connections it inherited, not only stop using
    # them: while one is open in the child, SQLite counts the parent's locks on that file
    # as the child's, so a writer the child opens takes no lock of its own, the parent's
    # last close deletes the -wal under it, and the child's acknowledged appends are lost
    # (tests/test_sqlite_faults.py). They are read-only (mode=ro, immutable or a private
    # copy): closing one in the child never writes or checkpoints the parent's file.
    for reader in list(_READERS):
        reader._close_inherited()


os.register_at_fork(after_in_child=_close_parents_readers_after_fork)


class SQLiteReader(SQLiteFile, _SQLReads, SQLiteAuditReads, Backend):
    """An SQLite ledger opened for reading only, through :mod:`sqlite3` (no SQLAlchemy):
    what ``open_backend(url, create=False)`` gives for SQLite. Nothing is created, migrated,
    switched to WAL or written; a missing or empty file is :class:`NoLedger`.

    Attributes: ``read_only`` (always true), ``read_strategy`` (``"ro"`` reads the file in
    place with SQLite's ``mode=ro``, its WAL included; ``"immutable"`` when there is no WAL
    to read and no ``-shm`` can be created; ``"copy"`` reads a private copy of the file and
    its WAL, removed on close), ``migrated_from`` (always ``None``).
    """

    keeps_end_times = True
    read_only = True
    migrated_from: str | None = None
    _sqlite = True

    def __init__(self, url: str, *, _uri: str | None = None) -> None:
        super().__init__(url)
        self.read_strategy: str | None = None
        self._origin: str | None = None
        self._copy_dir: str | None = None  # the private copy read, if any
        self._copy_cleanup: weakref.finalize | None = None
        # One connection per thread (an audit reads the index on a second thread while the
        # first verifies blocks: SQLite releases the GIL while it steps), per process.
        self._local = threading.local()
        self._opened: list[tuple[int, sqlite3.Connection]] = []
        self._opened_lock = threading.Lock()
        _READERS.add(self)
        shown = self.display_url
        given = sqlite_file(url)
        if given is None:
            raise ConfigError(f"{shown}: give a file path, e.g. sqlite:///ledger.db")
        if os.path.isdir(given):
            raise ConfigError(f"{shown}: {given} is a directory, not a ledger file")
        path = os.path.abspath(given)  # "x/../a.db" is a.db to SQLite, x or not
        try:
            empty = os.path.getsize(path) == 0
        except FileNotFoundError:
            empty = True
        except OSError as err:
            raise BackendUnavailable(f"{shown}: cannot read {path}: {err.strerror}") from err
        if empty:
            raise NoLedger(f"no ledger at {given}")
        self._path = path
        if _uri is not None:  # a worker of the process that chose how to read it (worker_spec)
            self._uri, self.read_strategy = _uri, "worker"
        else:
            self._uri, self.read_strategy, self._copy_dir = read_only_uri(path, shown)
        if self._copy_dir is not None:
            self._copy_cleanup = weakref.finalize(self, shutil.rmtree, self._copy_dir, True)
        try:
            self._open_schema(given)
        except BaseException:
            self.close()
            raise

    def _open_schema(self, given: str) -> None:
        tables = {
            row[0] for row in self._fetch(
                "opening the ledger",
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'", (),
            )
        }
        version = origin = None
        if "ll_meta" in tables:
            meta = dict(self._fetch("opening the ledger", "SELECT key, value FROM ll_meta", ()))
            version, origin = meta.get("schema"), meta.get("origin")
        if version == SCHEMA_VERSION and origin:
            self._origin = origin
            return
        raise refusal(self.display_url, sqlite=True, tables=tables, version=version, where=given)

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            # A forked child opens its own: the parent's handle is the parent's to use.
            conn = _connect(self._uri)
            conn.isolation_level = None
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_S * 1000}")
            # 64 MiB: index pages stay in memory; an audit worker reads one range once (8 MiB).
            conn.execute("PRAGMA cache_size = -8192" if self.read_strategy == "worker" else "PRAGMA cache_size = -65536")
            local.conn, local.pid = conn, os.getpid()
            with self._opened_lock:
                self._opened.append((os.getpid(), conn))
        return conn

    def _fetch(self, what: str, statement: str, params: tuple) -> list:
        with _translated(what, self.display_url):
            return self._connection().execute(statement, params).fetchall()

    def worker_spec(self) -> tuple[str, str]:
        """What another process needs to read the same file the same way, the private copy
        included (it lives as long as this object): ``SQLiteReader(url, _uri=uri)``."""
        return self.url, self._uri

    def block_counts(self) -> list[tuple[int, int]]:
        """(height, record count) of every block row, unverified: for planning work only."""
        return [(int(h), int(c)) for h, c in self._fetch(
            "planning the audit", "SELECT height, count FROM ll_blocks ORDER BY height", ())]

    def append(self, blocks: Sequence[StoredBlock]) -> None:
        raise BackendUnavailable(f"{self.display_url}: opened for reading only")

    def migrate(self) -> str | None:
        raise ConfigError(f"{self.display_url}: opened read-only, cannot migrate it")

    def _close_inherited(self) -> None:
        """In a forked child: close the parent's connections (see the fork hook above).
        The lock may have been held by a parent thread at the fork: a fresh one."""
        self._opened_lock = threading.Lock()
        opened, self._opened = self._opened, []
        self._local = threading.local()
        for _, conn in opened:
            try:
                conn.close()
            except sqlite3.Error:
                pass  # a statement of another parent thread was running: nothing to undo

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for pid, conn in opened:
            if pid == os.getpid():
                conn.close()
        self._local = threading.local()
        if self._copy_cleanup is not None:
            self._copy_cleanup()
