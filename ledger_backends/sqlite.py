"""SQLite ledgers read and appended through the standard library's :mod:`sqlite3`.

Recording processes are short: ``lineage-ledger run``, ``lineage-ledger spool ship``, the
engines' recording processes and shippers each open the default SQLite ledger, append a
few records and exit. ``import sqlalchemy`` alone cost such a process 0.15-0.33 s of CPU,
several times what the append itself costs, so :class:`SQLiteBackend` (what
``open_backend`` gives for a writable ``sqlite:`` URL) does the append, the reads it
needs and the creation of a new ledger with :mod:`sqlite3`; the reads are
:class:`~._sql_reads._SQLReads`', shared with ``SQLBackend`` and ``SQLiteReader``.

It writes exactly what :class:`~.sql.SQLBackend` writes: the same statements, in one
``BEGIN IMMEDIATE`` transaction, on a connection in WAL mode with ``synchronous = FULL``
and the same busy timeout; a new ledger gets the same DDL text, so that its schema is
byte for byte the one SQLAlchemy creates (a test compares them). SQLAlchemy is imported
only where it is still needed: to migrate an old schema, to report on a database that is
no current ledger, and for URL spellings this module does not parse itself (a query
string, a percent sign, another driver); those are handed to ``SQLBackend`` whole. A
ledger this process may not write is read as ``SQLBackend`` reads it, by
:class:`~._sqlite_reader.SQLiteReader`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

from lineage_ledger._errors import AppendConflict, BackendError, BackendUnavailable
from lineage_ledger._model import StoredBlock

from ._base import Backend
from ._sql_reads import SCHEMA_VERSION, _SQLReads
from ._sql_rebuild import Rebuilt, rebuild
from ._sqlite_files import (
    _BUSY_TIMEOUT_S,
    SQLiteFile,
    _connect,
    _sqlite_uri,
    _translated,
    _writable,
    database_error,
    driver_text,
    ledger_path,
    refuse_without_locks,
    sqlite_file,
)

# The connection pool (with the fork rules) and the statements and rows both writers share
# are in two private modules (see their docstrings for the seam); this module keeps the
# writer class, and re-exports the shared names so that ``from .sqlite import ...`` (sql.py,
# _sql_schema.py) keeps working. _BUSY_TIMEOUT_S stays read here: tests shorten it here.
from ._sqlite_pool import _FORKED_MID_USE, _OPEN, ConnectionPool, _check_forked, _file_key
from ._sqlite_reader import SQLiteReader
from ._sqlite_writes import INSERT_ARTIFACTS as INSERT_ARTIFACTS
from ._sqlite_writes import INSERT_BLOCKS as INSERT_BLOCKS
from ._sqlite_writes import INSERT_RECORDS as INSERT_RECORDS
from ._sqlite_writes import ORIGIN_PREFIX as ORIGIN_PREFIX
from ._sqlite_writes import SCHEMA_DDL as SCHEMA_DDL
from ._sqlite_writes import append_rows as append_rows
from ._sqlite_writes import create_private_file as create_private_file
from ._sqlite_writes import ended_of as ended_of
from ._sqlite_writes import enter_wal as enter_wal
from ._sqlite_writes import make_private_dirs as make_private_dirs
from ._sqlite_writes import new_blocks as new_blocks

__all__ = ["SQLiteBackend"]

_TABLE_NAMES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"


def plain_sqlite_file(url: str) -> str | None:
    """The file a ``sqlite:`` URL or plain path names, where this module reads the URL
    exactly as SQLAlchemy would; ``None`` for every other spelling (left to SQLBackend)."""
    if "?" in url or "%" in url:  # connect arguments, percent-escapes: SQLAlchemy's reading
        return None
    if "://" in url and url.split("://", 1)[0].lower() not in ("sqlite", "sqlite+pysqlite"):
        return None
    return sqlite_file(url)


@contextlib.contextmanager
def _translated_write(what: str, shown: str) -> Iterator[None]:
    """As ``SQLBackend`` translates a failed write: a taken height or record id is an
    :class:`AppendConflict`, a locked, read-only or damaged file the database's error."""
    try:
        yield
    except sqlite3.IntegrityError as err:
        raise AppendConflict(f"{what}: another writer stored this height or record first") from err
    except sqlite3.DatabaseError as err:
        raise database_error(what, shown, driver_text(err)) from err
    except sqlite3.Error as err:
        raise BackendError(f"{shown}: {what} failed: {driver_text(err)}") from err


class SQLiteBackend(SQLiteFile, _SQLReads, ConnectionPool, Backend):
    """A writable SQLite ledger through :mod:`sqlite3`: see the module docstring.

    Attributes as ``SQLBackend``'s: ``read_only`` (false: a ledger this process may not
    write opens as a :class:`SQLiteReader`), ``read_strategy`` (``None``),
    ``migrated_from`` (the schema version the ledger was migrated from when opened).
    """

    keeps_end_times = True
    read_only = False
    read_strategy: str | None = None
    _sqlite = True

    def __new__(cls, url: str, *, create: bool = True):
        if cls is SQLiteBackend and isinstance(url, str):
            given = plain_sqlite_file(url)
            if given is None:  # a spelling only SQLAlchemy reads (or refuses) as it should
                from .sql import SQLBackend

                return SQLBackend(url, create=create)
            if not create:
                return SQLiteReader(url)
            path = os.path.abspath(given)
            if os.path.exists(path) and not (_writable(path) and _writable(os.path.dirname(path))):
                # A copy we may not write (or whose directory cannot take the WAL files):
                # read it, as SQLBackend does.
                return SQLiteReader(url)
        return super().__new__(cls)

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__(url)
        self.migrated_from: str | None = None
        self._origin: str | None = None
        # A small pool, as SQLAlchemy's: a connection serves one thread at a time and goes
        # back for the next, so that threads started per shipment (the Airflow shipper's)
        # reuse one instead of leaving one open each. A forked child opens its own.
        self._reset_pool()
        _OPEN.add(self)
        shown = self.display_url
        _, path = ledger_path(plain_sqlite_file(url), shown)
        make_private_dirs(os.path.dirname(path), shown)
        refuse_without_locks(path, shown)  # before an empty ledger file is left there
        create_private_file(path, shown)
        self._path = path
        self._uri = _sqlite_uri(path)
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise


    # -- set-up (the pool's own methods are ConnectionPool's) ------------------------
    def _open_connection(self) -> sqlite3.Connection:
        conn = _connect(self._uri)
        try:
            conn.isolation_level = None  # we issue BEGIN ourselves
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_S * 1000}")
            enter_wal(conn, _BUSY_TIMEOUT_S)
            conn.execute("PRAGMA synchronous = FULL")  # the spool is trimmed after this ack
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: index pages stay in memory
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _stored_meta(conn: sqlite3.Connection) -> tuple[set[str], str | None, str | None]:
        """(table names, schema version, origin) as stored."""
        names = {row[0] for row in conn.execute(_TABLE_NAMES)}
        if "ll_meta" not in names:
            return names, None, None
        meta = dict(conn.execute("SELECT key, value FROM ll_meta").fetchall())
        return names, meta.get("schema"), meta.get("origin")

    def _open_schema(self) -> None:
        shown = self.display_url
        with _translated("opening the ledger", shown), self._transaction("BEGIN") as conn:
            names, version, origin = self._stored_meta(conn)
        if version == SCHEMA_VERSION and origin:
            self._origin = origin
            return
        if version is None and not names:
            with _translated_write("opening the ledger", shown), self._transaction("BEGIN IMMEDIATE") as conn:
                names, version, origin = self._stored_meta(conn)  # another process may have made it
                if version is None and not names:
                    origin = ORIGIN_PREFIX + uuid.uuid4().hex
                    for statement in SCHEMA_DDL:
                        conn.execute(statement)
                    conn.executemany('INSERT INTO ll_meta ("key", value) VALUES (?, ?)',
                                     [("schema", SCHEMA_VERSION), ("origin", origin)])
                    version = SCHEMA_VERSION
            if version == SCHEMA_VERSION and origin:
                self._origin = origin
                return
        self._through_sqlalchemy()

    def _through_sqlalchemy(self) -> None:
        """An old schema is migrated, and anything else refused, by SQLBackend (the one
        place that knows every schema); then this object writes the migrated file."""
        from .sql import SQLBackend

        migrating = SQLBackend(self.url)
        try:
            self.migrated_from = migrating.migrated_from
            self._origin = migrating.origin
        finally:
            migrating.close()

    def migrate(self) -> str | None:
        """As ``SQLBackend.migrate``: opening brought the ledger to the current schema already;
        returns the version it was migrated from then, or ``None``."""
        return self.migrated_from

    # -- writes ---------------------------------------------------------------------------
    def append(self, blocks: Sequence[StoredBlock]) -> None:
        """``SQLBackend.append``, statement for statement, through :mod:`sqlite3`."""
        if not blocks:
            return
        if _FORKED_MID_USE and _file_key(self._path) in _FORKED_MID_USE:
            raise BackendUnavailable(
                f"{self.display_url}: this process was forked while another thread was using the ledger, and"
                " an append from it could be lost: it appends nothing (a recorder's records wait in its spool)"
            )
        with _translated_write("append", self.display_url), self._transaction("BEGIN IMMEDIATE") as conn:
            heights = [b.height for b in blocks]
            marks = ",".join("?" * len(heights))
            existing = dict(conn.execute(f"SELECT height, id FROM ll_blocks WHERE height IN ({marks})",
                                         heights).fetchall())
            fresh = new_blocks(blocks, existing)
            if not fresh:
                return
            below = conn.execute("SELECT first_seq + count FROM ll_blocks WHERE height = ?",
                                 (fresh[0].height - 1,)).fetchone()
            seq = 0 if below is None or below[0] is None else int(below[0])
            block_rows, record_rows, artifact_rows = append_rows(fresh, seq)
            conn.executemany(INSERT_BLOCKS, block_rows)
            if record_rows:
                conn.executemany(INSERT_RECORDS, record_rows)
            if artifact_rows:
                conn.executemany(INSERT_ARTIFACTS, artifact_rows)

    def rebuild_index(self, rows: Callable[[int], Iterable[tuple[list[tuple], list[tuple]]]]) -> Rebuilt:
        """``lineage-ledger repair-index``: in one transaction, under the write lock (no
        append can come between), make the index what ``rows(stop)`` derives, the blocks
        below ``stop`` as verified by :func:`lineage_ledger._log.reindex.verified_index`,
        and delete the rows no verified block places (see :mod:`._sql_rebuild`). An error
        from it rolls back, changing nothing."""
        with _translated_write("rebuilding the index", self.display_url), \
                self._transaction("BEGIN IMMEDIATE") as conn:
            # The rebuild reads every index row once, in order, and writes few: a page
            # cache of 8 MiB serves it as well as the pool's 64 MiB (every index row
            # rewritten: 14.1 s either way at 100k records; at 1M, 163 s CPU vs 172 s) and
            # keeps 56 MiB out of its peak; the connection goes back to the pool as it was.
            conn.execute("PRAGMA cache_size = -8192")
            try:
                return rebuild(conn.execute, conn.executemany, rows)
            finally:
                conn.execute("PRAGMA cache_size = -65536")  # as _open_connection set it

    # -- reads (the queries are _SQLReads') --------------------------------------------
    def _fetch(self, what: str, statement: str, params: tuple) -> list:
        with _translated(what, self.display_url):
            with self._connection() as conn:
                return conn.execute(statement, params).fetchall()

    def close(self) -> None:
        """Close the idle connections, and each one in use when its thread is done with it,
        as SQLAlchemy's ``dispose`` does: a thread blocked in the busy timeout (a ledger
        locked elsewhere) holds its connection, and closing it here would wait that long."""
        _check_forked()
        with self._pool_lock:
            idle, self._idle, self._opened = self._idle, [], []
        for conn in idle:
            conn.close()
