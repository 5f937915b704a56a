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
import json
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

from lineage_ledger._errors import AppendConflict, BackendError, BackendUnavailable
from lineage_ledger._model import StoredBlock

from ._base import Backend
from ._sql_reads import _IN, _OUT, SCHEMA_VERSION, _SQLReads
from ._sql_rebuild import Rebuilt, rebuild
from ._sqlite_files import (
    _BUSY_TIMEOUT_S,
    SQLiteFile,
    _connect,
    _sqlite_uri,
    _translated,
    _writable,
    database_error,
    ledger_path,
    sqlite_file,
)
from ._sqlite_reader import SQLiteReader

__all__ = ["SQLiteBackend"]

ORIGIN_PREFIX = "lineage-ledger:"

# The schema, as SQLAlchemy's ``metadata.create_all`` emits it for SQLite from the tables
# in _sql_schema.py, statement for statement: SQLite keeps each statement's text in sqlite_master,
# so a ledger created here has the schema of one created there, byte for byte. (SQLAlchemy
# creates a table's indexes in no fixed order, so only their order in the file may differ,
# as it does between two of its own ledgers.) tests/test_sqlite_writer.py compares both:
# a change to the tables in _sql_schema.py fails it until this list follows.
SCHEMA_DDL = (
    '\nCREATE TABLE ll_meta (\n\t"key" VARCHAR(64) NOT NULL, \n\tvalue TEXT NOT NULL, \n\tPRIMARY KEY ("key")\n)\n\n',
    "\nCREATE TABLE ll_blocks (\n\theight INTEGER NOT NULL, \n\tid VARCHAR(64) NOT NULL, \n\tfirst_seq BIGINT NOT NULL,"
    " \n\tcount INTEGER NOT NULL, \n\theader BLOB NOT NULL, \n\tPRIMARY KEY (height), \n\tUNIQUE (id)\n)\n\n",
    "\nCREATE TABLE ll_records (\n\tseq INTEGER NOT NULL, \n\tid VARCHAR(64) NOT NULL, \n\theight BIGINT NOT NULL,"
    " \n\tpos INTEGER NOT NULL, \n\trun_id TEXT NOT NULL, \n\tbody BLOB NOT NULL, \n\tPRIMARY KEY (seq),"
    " \n\tUNIQUE (id)\n)\n\n",
    "CREATE INDEX ll_records_run ON ll_records (run_id)",
    "\nCREATE TABLE ll_artifacts (\n\tpath TEXT NOT NULL, \n\trole SMALLINT NOT NULL, \n\tseq BIGINT NOT NULL,"
    " \n\tdigest VARCHAR(64) NOT NULL, \n\tended VARCHAR(32) DEFAULT '' NOT NULL,"
    " \n\tCONSTRAINT ll_artifacts_pkey PRIMARY KEY (seq, role, path)\n)\n WITHOUT ROWID\n\n",
    "CREATE INDEX ll_artifacts_path ON ll_artifacts (path, role, seq)",
    "CREATE INDEX ll_artifacts_digest ON ll_artifacts (digest, role, seq)",
    "CREATE INDEX ll_artifacts_latest ON ll_artifacts (path, role, ended, seq)",
)
_TABLE_NAMES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"
INSERT_BLOCKS = "INSERT INTO ll_blocks (height, id, first_seq, count, header) VALUES (?, ?, ?, ?, ?)"
INSERT_RECORDS = "INSERT INTO ll_records (seq, id, height, pos, run_id, body) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_ARTIFACTS = "INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES (?, ?, ?, ?, ?)"


# -- helpers SQLBackend shares (no SQLAlchemy here) ------------------------------------------
def enter_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode = WAL``, waiting up to ``timeout`` seconds for the file.

    Leaving a rollback journal needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection holds a write
    transaction (waiting could deadlock): four processes opening a schema-2 ledger together
    failed that way. The statement is repeated until it succeeds or the time is up."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def new_blocks(blocks: Sequence[StoredBlock], existing: dict[int, str]) -> list[StoredBlock]:
    """The blocks not stored yet, given the ids ``existing`` holds by height: a block already
    stored with its id is a repeat (a shipment retried) and is skipped; another id at its
    height is :class:`AppendConflict`. What both writers check before they insert."""
    fresh = []
    for block in blocks:
        if block.height in existing:
            if existing[block.height] != block.id:
                raise AppendConflict(f"height {block.height} is taken by another block")
        else:
            fresh.append(block)
    return fresh


def append_rows(blocks: Sequence[StoredBlock], seq: int) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The rows of ``blocks`` for INSERT_BLOCKS, INSERT_RECORDS and INSERT_ARTIFACTS, the
    first record at ``seq``: what both writers insert, so both write the same rows."""
    block_rows, record_rows, artifact_rows = [], [], []
    for block in blocks:
        block_rows.append((block.height, block.id, seq, len(block.records), block.header))
        for position, record in enumerate(block.records):
            record_rows.append((seq, record.id, block.height, position, record.run_id, record.body))
            ended = record.ended or ended_of(record.body)
            for path, digest in record.inputs:
                artifact_rows.append((path, _IN, seq, digest, ended))
            for path, digest in record.outputs:
                artifact_rows.append((path, _OUT, seq, digest, ended))
            seq += 1
    return block_rows, record_rows, artifact_rows


def ended_of(body: bytes) -> str:
    """The ``ended`` field of a record body (for records stored without it extracted)."""
    try:
        value = json.loads(body).get("ended", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def make_private_dirs(directory: str, shown: str) -> None:
    """Create ``directory`` and any missing parents 0700 (whatever the umask); directories
    that exist, or that another process creates meanwhile, keep their mode."""
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as err:
            raise BackendUnavailable(f"{shown}: cannot create {path}: {err.strerror}") from err
        os.chmod(path, 0o700)


def create_private_file(path: str, shown: str) -> None:
    """Create the ledger file 0600 before SQLite opens it (SQLite gives its -wal and -shm
    files the database file's mode). An existing file is left as it is."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    except OSError as err:
        raise BackendUnavailable(f"{shown}: cannot create {path}: {err.strerror}") from err
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


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
        raise database_error(what, shown, str(err).strip()) from err
    except sqlite3.Error as err:
        raise BackendError(f"{shown}: {what} failed: {err}") from err


_OPEN: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()
# Files (device, inode) a forked child must not append to: see _forget_connections_after_fork.
_FORKED_MID_USE: set[tuple[int, int]] = set()
# The parent's connections that were in use at the fork, kept from the child's garbage
# collector: closing one in the child would roll back the parent's transaction in shared memory.
_PINNED: list[sqlite3.Connection] = []


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _forget_connections_after_fork() -> None:
    # A forked child must not use the parent's connections (one SQLite handle in two
    # processes), nor a pool lock another thread of the parent held at the fork. It must
    # close them, too: SQLite keeps one record per file of the locks its process holds,
    # and the child inherits the parent's, so a connection the child opens while one of
    # the parent's is still open in it takes no lock of its own; the parent, closing its
    # last connection, then sees no other process, checkpoints and deletes the -wal, and
    # every append the child commits after that goes into a deleted file (lost). An idle
    # connection holds no transaction: closing it in the child changes nothing for the
    # parent. One another thread was using at the fork may be inside a write, which
    # closing would undo in the shared WAL index: it is kept open (pinned), and this
    # child appends nothing to that file (its records wait in the spool).
    _PROCESS[0] = os.getpid()
    for backend in list(_OPEN):
        backend._leave_parents_connections()


_PROCESS = [os.getpid()]  # the process whose connections the pools hold


def _check_forked() -> None:
    """The fork hook's work, in a child forked by C code (no Python fork hook ran): every
    ledger object's, not only the one in hand (a new one beside an old one is as unsafe)."""
    if _PROCESS[0] != os.getpid():
        _forget_connections_after_fork()


os.register_at_fork(after_in_child=_forget_connections_after_fork)


class SQLiteBackend(SQLiteFile, _SQLReads, Backend):
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
        create_private_file(path, shown)
        self._path = path
        self._uri = _sqlite_uri(path)
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------------
    def _leave_parents_connections(self) -> None:
        """In a forked child: close the parent's idle connections, pin those in use at the
        fork (see _forget_connections_after_fork), and start an empty pool."""
        if self._pool_pid == os.getpid():
            return
        idle = {id(conn) for conn in self._idle}
        for conn in self._opened:
            if id(conn) in idle:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            else:
                _PINNED.append(conn)
                key = _file_key(self._path) if hasattr(self, "_path") else None
                if key is not None:
                    _FORKED_MID_USE.add(key)
        self._reset_pool()

    def _reset_pool(self) -> None:
        """An empty pool of this process (the parent's connections are left to the parent)."""
        self._pool_lock = threading.Lock()
        self._pool_pid = os.getpid()
        self._idle: list[sqlite3.Connection] = []
        self._opened: list[sqlite3.Connection] = []

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

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of this process that no other thread is using, for one statement
        or transaction."""
        pid = os.getpid()
        _check_forked()
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open_connection()
            with self._pool_lock:
                self._opened.append(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction and not self._rolled_back(conn):
                with self._pool_lock:  # unusable: dropped from the pool (and closed below)
                    self._opened = [c for c in self._opened if c is not conn]
            with self._pool_lock:
                returned = any(c is conn for c in self._opened)
                if returned:
                    self._idle.append(conn)
            if not returned and os.getpid() == pid:  # the pool was closed while we used it
                conn.close()

    @staticmethod
    def _rolled_back(conn: sqlite3.Connection) -> bool:
        """Roll back a transaction left open (an exception between BEGIN and the ``try``
        that guards it: a signal handler's, say Airflow's task timeout): a connection goes
        back to the pool with no transaction, else it would keep the write lock from every
        other process and refuse every later BEGIN of this one."""
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        return not conn.in_transaction

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """``begin`` (``BEGIN`` or ``BEGIN IMMEDIATE``) ... ``COMMIT``, rolled back on error."""
        with self._connection() as conn:
            try:
                conn.execute(begin)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT too: the connection is used again
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

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
