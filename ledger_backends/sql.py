"""SQL storage through SQLAlchemy 2: SQLite (the embedded default) and PostgreSQL.

Tables are prefixed ``ll_`` so a ledger can share a PostgreSQL database. The block
height is the primary key: two writers building on the same head collide there, and the
loser gets :class:`AppendConflict` and rebuilds. SQLite runs in WAL mode with a busy
timeout and takes its write lock up front (``BEGIN IMMEDIATE``), because a read
transaction that upgrades to a write fails at once instead of waiting for the lock.

Opened with ``create=False`` (what read commands do) the store is only read: a missing or
empty file is :class:`NoLedger`, nothing is created, migrated or switched to WAL, and a
ledger we may not write is read completely, the committed transactions still in its
``-wal`` file included (see :func:`_read_only_uri`).

A new SQLite file is created 0600 (its ``-wal`` and ``-shm`` get the same mode from
SQLite) and a directory this code creates for it 0700, whatever the umask. To share a
ledger with a group, give the file and its directory to the group afterwards:
``chgrp -R lab DIR; chmod 2770 DIR; chmod 0660 DIR/ledger.db*`` (the setgid directory
makes the ``-wal``/``-shm`` files SQLite creates later belong to the group as well).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy import event, exc

from lineage_ledger._errors import (
    AppendConflict,
    BackendError,
    BackendUnavailable,
    ConfigError,
    CorruptStore,
    MissingExtra,
    NoLedger,
)
from lineage_ledger._model import BlockColumns, StoredBlock, StoredRecord

from ._base import Backend, ChainHead, IndexRow, IndexSummary, Located, Role, redact

__all__ = ["SQLBackend"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "3"
ORIGIN_PREFIX = "lineage-ledger:"
_INDEX_ROWS_PER_READ = 20_000  # index rows fetched per query by index_rows()
# Serialises schema creation and migration between processes on PostgreSQL.
_PG_SCHEMA_LOCK = 0x6C6C_7363_6865_6D61 & 0x7FFF_FFFF_FFFF_FFFF
_CHUNK = 500  # block headers fetched per query while iterating
_ROWS_PER_READ = 20_000  # records fetched per query (at least one whole block)
_ONLY_STR = frozenset({str})
_ONLY_BYTES = frozenset({bytes})
_BUSY_TIMEOUT_S = 60
_IN, _OUT = 0, 1  # artifact roles as stored

# Every record gets a sequence number, its place in the whole ledger. Sequence numbers
# are the records table's integer key, so appends go to the end of the B-tree and a
# block's records are one range scan (a block owns first_seq .. first_seq + count - 1).
# Artifacts live in one table clustered by (seq, role, path) (schema 3): appends go to
# the end of it too, and the audit reads it once in ledger order beside ll_records. The
# index on (path, role, seq) keeps "who wrote / read this path" one index range, already
# in ledger order, and so does the one on (digest, role, seq). (On SQLite a WITHOUT
# ROWID table's index carries the whole primary key anyway; naming seq makes PostgreSQL
# keep it in the index too.) Paths compare byte-wise on both databases ("C" collation
# on PostgreSQL), so that ordering and paging agree with Python's.
# SQLite makes only "INTEGER PRIMARY KEY" an alias of the rowid (no separate index).
_INT64 = sa.BigInteger().with_variant(sa.Integer, "sqlite")
metadata = sa.MetaData()
meta_table = sa.Table(
    "ll_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
blocks_table = sa.Table(
    "ll_blocks", metadata,
    sa.Column("height", _INT64, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("header", sa.LargeBinary, nullable=False),
)
records_table = sa.Table(
    "ll_records", metadata,
    sa.Column("seq", _INT64, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("height", sa.BigInteger, nullable=False),
    sa.Column("pos", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Index("ll_records_run", "run_id"),
)
_PATH = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
artifacts_table = sa.Table(
    "ll_artifacts", metadata,
    # Declared in schema 2's column order (what a positional INSERT expects); stored in
    # primary-key order all the same (WITHOUT ROWID on SQLite, the key's index on PostgreSQL).
    sa.Column("path", _PATH, nullable=False),
    sa.Column("role", sa.SmallInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    # When the record's task ended (canonical UTC text, which sorts as time): "the record
    # that saw this path last" is then one step down ll_artifacts_latest, not a scan of
    # every record that ever read a file every task reads.
    sa.Column("ended", sa.String(32), nullable=False, server_default=""),
    sa.PrimaryKeyConstraint("seq", "role", "path", name="ll_artifacts_pkey"),
    sa.Index("ll_artifacts_path", "path", "role", "seq"),
    sa.Index("ll_artifacts_digest", "digest", "role", "seq"),
    sa.Index("ll_artifacts_latest", "path", "role", "ended", "seq"),
    sqlite_with_rowid=False,
)


def _ended_of(body: bytes) -> str:
    """The ``ended`` field of a record body (for records stored without it extracted)."""
    import json

    try:
        value = json.loads(body).get("ended", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _engine_url(url: str) -> str:
    scheme, rest = url.split("://", 1) if "://" in url else ("sqlite", None)
    if rest is None:  # a plain path
        return "sqlite:///" + url
    if scheme == "postgresql":  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
        return "postgresql+psycopg://" + rest
    return url


def _as_bytes(value) -> bytes:
    """Stored bytes as they are; a value someone rewrote as TEXT or a number still verifies
    (and fails) instead of crashing the reader."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def _sqlite_path(engine_url: sa.URL) -> str | None:
    database = engine_url.database
    return None if database in (None, "", ":memory:") else database


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


class RedactedError(Exception):
    """Stands in, as the cause of an error this back-end raises, for a library error whose
    text held the URL's password (the password replaced by ``***``)."""


def _safe_cause(err: BaseException, url: str) -> BaseException:
    text = str(err)
    clean = redact(text, url)
    if clean == text:
        return err
    return RedactedError(f"{type(err).__module__}.{type(err).__qualname__}: {clean}")


@contextlib.contextmanager
def _translated(what: str, url: str):
    """Turn SQLAlchemy and driver errors into the library's own, with the cause attached;
    the URL's password never appears in the message or the cause."""
    shown = redact(url, url)
    try:
        yield
    except exc.IntegrityError as err:
        raise AppendConflict(f"{what}: another writer stored this height or record first") from _safe_cause(
            err, url
        )
    except exc.DatabaseError as err:
        text = redact(str(err.orig if getattr(err, "orig", None) else err).strip(), url)
        cause = _safe_cause(err, url)
        lowered = text.lower()
        if any(s in lowered for s in ("not a database", "malformed", "corrupt", "disk image")):
            raise CorruptStore(
                f"{shown}: the ledger database is corrupt or truncated ({text}); "
                "restore it from a copy, or verify a replica"
            ) from cause
        if "no such table" in lowered or "does not exist" in lowered and "relation" in lowered:
            raise CorruptStore(f"{shown}: ledger tables are missing ({text})") from cause
        raise BackendUnavailable(f"{shown}: {what} failed: {text}") from cause
    except exc.SQLAlchemyError as err:
        raise BackendError(f"{shown}: {what} failed: {redact(str(err), url)}") from _safe_cause(err, url)


def _make_private_dirs(directory: str, shown: str) -> None:
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


def _create_private_file(path: str, shown: str) -> None:
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
    state = []
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


_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    # A forked child must not use the parent's pooled connections (one socket or SQLite
    # handle shared by two processes); dispose(close=False) leaves them to the parent.
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_connections_after_fork)


class SQLBackend(Backend):
    keeps_end_times = True
    """SQLite or PostgreSQL through SQLAlchemy.

    ``create=False`` opens an existing ledger for reading only: see the module docstring.
    Attributes: ``read_only`` (nothing can be appended through this object),
    ``read_strategy`` (SQLite read-only opens: ``"ro"`` reads the file in place with
    SQLite's ``mode=ro``, its WAL included; ``"immutable"`` when there is no WAL to read
    and no ``-shm`` can be created; ``"copy"`` reads a private copy of the file and its
    WAL), ``migrated_from`` (the schema version this object migrated the ledger from).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__(url)
        self.read_only = not create
        self.read_strategy: str | None = None
        self.migrated_from: str | None = None
        self._origin: str | None = None
        self._copy_cleanup: weakref.finalize | None = None
        self._copy_dir: str | None = None  # the private copy a read-only open reads, if any
        shown = self.display_url
        try:
            engine_url = sa.make_url(_engine_url(url))
        except (exc.ArgumentError, ValueError) as err:
            raise ConfigError(f"malformed ledger URL {shown!r}: {redact(str(err), url)}") from _safe_cause(
                err, url
            )
        self._sqlite = engine_url.get_backend_name() == "sqlite"
        kwargs: dict = {}
        if self._sqlite:
            path = _sqlite_path(engine_url)
            if path is None:
                raise ConfigError(f"{shown}: give a file path, e.g. sqlite:///ledger.db")
            if os.path.isdir(path):
                raise ConfigError(f"{shown}: {path} is a directory, not a ledger file")
            kwargs["connect_args"] = {"timeout": _BUSY_TIMEOUT_S}
            given, path = path, os.path.abspath(path)  # "x/../a.db" is a.db to SQLite, x or not
            if not create:
                try:
                    empty = os.path.getsize(path) == 0
                except FileNotFoundError:
                    empty = True
                except OSError as err:
                    raise BackendUnavailable(f"{shown}: cannot read {path}: {err.strerror}") from err
                if empty:
                    raise NoLedger(f"no ledger at {given}")
            else:
                parent = os.path.dirname(os.path.abspath(path))
                _make_private_dirs(parent, shown)
                if os.path.exists(path):
                    # A copy we may not write (or whose directory cannot take the WAL
                    # files): read it, as with create=False.
                    self.read_only = not (_writable(path) and _writable(parent))
                else:
                    _create_private_file(path, shown)
            if self.read_only:
                uri = self._read_only_uri(path, shown)
                kwargs["creator"] = lambda: _connect(uri)
        else:
            kwargs["pool_pre_ping"] = True
            if self.read_only:
                options = engine_url.query.get("options")
                options = (options if isinstance(options, str) else " ".join(options or ())).strip()
                kwargs["connect_args"] = {
                    "options": (options + " -c default_transaction_read_only=on").strip()
                }
        try:
            self._engine = sa.create_engine(engine_url, **kwargs)
        except ModuleNotFoundError as err:
            self._remove_copy()
            raise MissingExtra(
                f"the {engine_url.get_backend_name()} back-end needs {err.name!r}, which is not "
                "installed: pip install 'lineage-ledger[postgres]'"
            ) from err
        except exc.ArgumentError as err:
            self._remove_copy()
            raise ConfigError(f"bad ledger URL {shown!r}: {redact(str(err), url)}") from _safe_cause(err, url)
        _ENGINES.add(self._engine)
        try:
            if self._sqlite:
                self._setup_sqlite()
            self._open_schema()
        except BaseException:
            self.close()
            raise

    @property
    def identity(self) -> str:
        if self._sqlite:  # x.db, sqlite:///x.db and ./x.db from another directory: one file
            return "sqlite:///" + os.path.realpath(str(self._engine.url.database))
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def origin(self) -> str:
        """``lineage-ledger:`` and 32 hex digits, made with the ledger and never changed: it
        names the ledger across copies and URLs (checkpoints carry it)."""
        assert self._origin is not None
        return self._origin

    # -- set-up ---------------------------------------------------------------------------
    def _read_only_uri(self, path: str, shown: str) -> str:
        """How to read a ledger without writing it, WAL included.

        A ledger we may write (its file, directory and any ``-shm``) is read in place with
        SQLite's ``mode=ro``, which takes part in the WAL's locking (other processes may
        append meanwhile). One we may not write (by its modes: root too leaves a 0444
        copy alone) is read with ``mode=ro&readonly_shm=1`` when its ``-shm`` exists (the
        WAL index is then rebuilt in private memory, nothing is written); with no ``-shm``
        but a ``-wal``, the file and its WAL are copied into a private 0700 directory,
        removed on close; with no WAL at all, ``immutable=1`` loses nothing. (``immutable=1``
        alone, as before, ignored the WAL and lost committed records.)
        """
        wal, shm = path + "-wal", path + "-shm"
        has_wal = os.path.exists(wal) and os.path.getsize(wal) > 0
        writable = _writable(path) and _writable(os.path.dirname(os.path.abspath(path)))
        if writable and (not os.path.exists(shm) or _writable(shm)):
            uri = _sqlite_uri(path, mode="ro")
            error = _probe(uri)
            if error is None or not _cannot_open_read_only(error):
                self.read_strategy = "ro"  # a real error shows up, translated, on the first read
                return uri
        elif os.path.exists(shm):
            uri = _sqlite_uri(path, mode="ro", readonly_shm="1")
            error = _probe(uri)
            if error is None or not _cannot_open_read_only(error):
                self.read_strategy = "ro"
                return uri
        if not has_wal:
            self.read_strategy = "immutable"
            return _sqlite_uri(path, mode="ro", immutable="1")
        directory = _private_copy(path, shown)
        self._copy_dir = directory
        self._copy_cleanup = weakref.finalize(self, shutil.rmtree, directory, True)
        self.read_strategy = "copy"
        return _sqlite_uri(os.path.join(directory, "ledger.db"), mode="ro")

    def _remove_copy(self) -> None:
        if self._copy_cleanup is not None:
            self._copy_cleanup()

    def _setup_sqlite(self) -> None:
        read_only = self.read_only

        @event.listens_for(self._engine, "connect")
        def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised via sqlite
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_S * 1000}")
            if not read_only:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = FULL")  # the spool is trimmed after this ack
            cursor.execute("PRAGMA cache_size = -65536")  # 64 MiB: index pages stay in memory
            cursor.close()

        @event.listens_for(self._engine, "begin")
        def _on_begin(conn):  # pragma: no cover - exercised via sqlite
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

    def _stored_meta(self, conn) -> tuple[set[str], str | None, str | None]:
        """(table names, schema version, origin) as stored."""
        names = set(sa.inspect(conn).get_table_names())
        if "ll_meta" not in names:
            return names, None, None
        meta = dict(conn.execute(sa.select(meta_table.c.key, meta_table.c.value)).all())
        return names, meta.get("schema"), meta.get("origin")

    def _open_schema(self) -> None:
        with _translated("opening the ledger", self.url):
            with self._engine.connect() as conn:  # no write lock: read-only copies open
                names, version, origin = self._stored_meta(conn)
            if version == SCHEMA_VERSION and origin:
                self._origin = origin
                return
            if self.read_only:
                self._refuse(names, version)
            self._prepare_schema()

    def _refuse(self, names: set[str], version: str | None) -> None:
        """Why a ledger opened for reading cannot be read."""
        shown = self.display_url
        if version is None:
            if self._sqlite and names:
                raise ConfigError(f"{shown}: this database is not a lineage ledger")
            raise NoLedger(f"no ledger at {self._engine.url.database if self._sqlite else shown}")
        if version == "2":
            raise ConfigError(
                f"{shown}: this ledger has schema 2 and must be migrated to schema {SCHEMA_VERSION} once: "
                f"run `lineage-ledger migrate --ledger {shown}` (with write access to it)"
            )
        if version == SCHEMA_VERSION:
            raise CorruptStore(f"{shown}: the ledger's origin is missing from ll_meta")
        raise ConfigError(f"{shown}: ledger schema {version}, expected {SCHEMA_VERSION}")

    def _prepare_schema(self) -> None:
        """Create, or migrate, the schema in one write transaction, then keep the origin."""
        shown = self.display_url
        with self._write() as conn:
            if not self._sqlite:  # two processes creating one ledger take turns
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
            names, version, origin = self._stored_meta(conn)
            if version is None:
                if names and self._sqlite:
                    raise ConfigError(f"{shown}: this database is not a lineage ledger")
                metadata.create_all(conn, checkfirst=True)
                origin = ORIGIN_PREFIX + uuid.uuid4().hex
                conn.execute(
                    sa.insert(meta_table),
                    [{"key": "schema", "value": SCHEMA_VERSION}, {"key": "origin", "value": origin}],
                )
            elif version == "2":
                origin = self._migrate_from_2(conn)
            elif version != SCHEMA_VERSION:
                raise ConfigError(f"{shown}: ledger schema {version}, expected {SCHEMA_VERSION}")
            if not origin:
                raise CorruptStore(f"{shown}: the ledger's origin is missing from ll_meta")
        self._origin = origin

    def _migrate_from_2(self, conn) -> str:
        """Schema 2 -> 3 inside the caller's write transaction: the artifacts table, clustered
        by (path, role, seq) before, is rebuilt clustered by (seq, role, path) with its
        indexes, and the ledger gets its origin."""
        started = time.monotonic()
        conn.exec_driver_sql("ALTER TABLE ll_artifacts RENAME TO ll_artifacts_v2")
        if not self._sqlite:  # PostgreSQL names constraints per schema: free the name
            conn.exec_driver_sql("ALTER TABLE ll_artifacts_v2 RENAME CONSTRAINT ll_artifacts_pkey TO ll_artifacts_v2_pkey")
        conn.exec_driver_sql("DROP INDEX IF EXISTS ll_artifacts_digest")
        conn.execute(sa.schema.CreateTable(artifacts_table))
        ended = ("json_extract(CAST(r.body AS TEXT), '$.ended')" if self._sqlite
                 else "convert_from(r.body, 'UTF8')::json->>'ended'")
        moved = conn.exec_driver_sql(
            "INSERT INTO ll_artifacts (seq, role, path, digest, ended)"
            f" SELECT a.seq, a.role, a.path, a.digest, coalesce({ended}, '') FROM ll_artifacts_v2 a"
            " LEFT JOIN ll_records r ON r.seq = a.seq ORDER BY a.seq, a.role, a.path"
        ).rowcount
        for index in sorted(artifacts_table.indexes, key=lambda i: i.name):
            index.create(conn)
        conn.exec_driver_sql("DROP TABLE ll_artifacts_v2")
        origin = ORIGIN_PREFIX + uuid.uuid4().hex
        conn.execute(sa.update(meta_table).where(meta_table.c.key == "schema").values(value=SCHEMA_VERSION))
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == "origin"))
        conn.execute(sa.insert(meta_table).values(key="origin", value=origin))
        self.migrated_from = "2"
        logger.info(
            "migrated the ledger at %s from schema 2 to %s (%d index rows rebuilt) in %.1f s",
            self.display_url, SCHEMA_VERSION, moved, time.monotonic() - started,
        )
        return origin

    def migrate(self) -> str | None:
        """Bring the ledger to the current schema (what ``lineage-ledger migrate`` runs), in
        one write transaction. A writable open already does this, so this is idempotent.
        Returns the schema version this object migrated the ledger from (now or when it
        opened it), or ``None`` when it found it current."""
        if self.read_only:
            raise ConfigError(f"{self.display_url}: opened read-only, cannot migrate it")
        if self.migrated_from is None:
            with _translated("migrating the ledger", self.url):
                self._prepare_schema()
        return self.migrated_from

    @contextlib.contextmanager
    def _write(self):
        if self.read_only:
            raise BackendUnavailable(f"{self.display_url}: opened for reading only")
        with self._engine.connect() as conn:
            conn.info["write"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info["write"] = False

    # -- writes ---------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        """Statements go to the driver as written: '?' for sqlite3, '%s' for psycopg."""
        return text if self._sqlite else text.replace("?", "%s")

    def append(self, blocks: Sequence[StoredBlock]) -> None:
        if not blocks:
            return
        with _translated("append", self.url), self._write() as conn:
            heights = [b.height for b in blocks]
            existing = dict(
                conn.execute(
                    sa.select(blocks_table.c.height, blocks_table.c.id).where(blocks_table.c.height.in_(heights))
                ).all()
            )
            fresh = []
            for block in blocks:
                if block.height in existing:
                    if existing[block.height] != block.id:
                        raise AppendConflict(f"height {block.height} is taken by another block")
                else:
                    fresh.append(block)
            if not fresh:
                return
            below = conn.execute(
                sa.select(blocks_table.c.first_seq + blocks_table.c.count).where(
                    blocks_table.c.height == fresh[0].height - 1
                )
            ).scalar()
            seq = 0 if below is None else int(below)
            block_rows, record_rows, artifact_rows = [], [], []
            for block in fresh:
                block_rows.append((block.height, block.id, seq, len(block.records), block.header))
                for position, record in enumerate(block.records):
                    record_rows.append((seq, record.id, block.height, position, record.run_id, record.body))
                    ended = record.ended or _ended_of(record.body)
                    for path, digest in record.inputs:
                        artifact_rows.append((path, _IN, seq, digest, ended))
                    for path, digest in record.outputs:
                        artifact_rows.append((path, _OUT, seq, digest, ended))
                    seq += 1
            # Straight to the driver: SQLAlchemy's per-row parameter processing cost
            # more than SQLite's own work here.
            conn.exec_driver_sql(
                self._sql("INSERT INTO ll_blocks (height, id, first_seq, count, header) VALUES (?, ?, ?, ?, ?)"),
                block_rows,
            )
            if record_rows:
                conn.exec_driver_sql(
                    self._sql("INSERT INTO ll_records (seq, id, height, pos, run_id, body) VALUES (?, ?, ?, ?, ?, ?)"),
                    record_rows,
                )
            if artifact_rows:
                conn.exec_driver_sql(
                    self._sql("INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES (?, ?, ?, ?, ?)"),
                    artifact_rows,
                )

    # -- reads ----------------------------------------------------------------------------
    def head(self) -> ChainHead | None:
        with _translated("reading the head", self.url), self._engine.connect() as conn:
            row = conn.execute(
                sa.select(blocks_table.c.height, blocks_table.c.id)
                .order_by(blocks_table.c.height.desc())
                .limit(1)
            ).first()
        return None if row is None else ChainHead(int(row[0]), row[1])

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
            with _translated("reading blocks", self.url), self._engine.connect() as conn:
                headers = conn.exec_driver_sql(
                    self._sql(
                        "SELECT height, id, first_seq, count, header FROM ll_blocks"
                        " WHERE height >= ? AND height < ? ORDER BY height"
                    ),
                    (low, high),
                ).fetchall()
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

    def _fetch(self, what: str, statement: str, params: tuple) -> list:
        """All rows of one query, read through the driver's own cursor: SQLAlchemy's row
        objects cost more per row than SQLite's read and verification together."""
        statement = self._sql(statement)
        with _translated(what, self.url), self._engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(statement, params)
                return cursor.fetchall()
            except self._engine.dialect.loaded_dbapi.Error as err:
                # Give the driver's error to SQLAlchemy's wrapper, which _translated maps.
                raise exc.DBAPIError.instance(statement, params, err, Exception) from err
            finally:
                cursor.close()

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
            yield int(height), str(block_id), _as_bytes(header), chunk

    def record_count(self) -> int:
        with _translated("counting records", self.url), self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(records_table)).scalar() or 0)

    def known(self, record_ids: Iterable[str]) -> set[str]:
        ids = list(record_ids)
        found: set[str] = set()
        with _translated("looking up records", self.url), self._engine.connect() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                # Straight to the driver: SQLAlchemy coerced and rendered each id of the IN
                # list, which cost more than the lookup (this runs before every append).
                marks = ",".join("?" * len(chunk))
                rows = conn.exec_driver_sql(self._sql(f"SELECT id FROM ll_records WHERE id IN ({marks})"), tuple(chunk))
                found.update(row[0] for row in rows)
        return found

    def _located(self, where) -> list[Located]:
        query = (
            sa.select(records_table.c.height, records_table.c.pos, records_table.c.id, records_table.c.body)
            .where(where)
            .order_by(records_table.c.seq)
        )
        with _translated("query", self.url), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Located(int(h), int(p), StoredRecord(str(i), _as_bytes(b))) for h, p, i, b in rows]

    @staticmethod
    def _artifact_condition(role: Role, path: str | None, digest: str | None):
        condition = artifacts_table.c.role == (_IN if role == "in" else _OUT)
        if path is not None:
            condition &= artifacts_table.c.path == path
        if digest is not None:
            condition &= artifacts_table.c.digest == digest
        return condition

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        seqs = sa.select(artifacts_table.c.seq).where(self._artifact_condition(role, path, digest))
        return self._located(records_table.c.seq.in_(seqs))

    def find_page(
        self, role: Role, *, path: str | None = None, digest: str | None = None,
        offset: int = 0, limit: int | None = None,
    ) -> list[Located]:
        """One page of :meth:`find`, read as one range of the path (or digest) index, which
        is in ledger order already, then only that page's records."""
        offset = max(0, int(offset))
        if limit is not None and int(limit) <= 0:
            return []
        seqs = sa.select(artifacts_table.c.seq).where(self._artifact_condition(role, path, digest))
        if path is None:  # one record may hold a digest (or a role) under several paths
            seqs = seqs.distinct()
        seqs = seqs.order_by(artifacts_table.c.seq).offset(offset)
        if limit is not None:
            seqs = seqs.limit(int(limit))
        return self._located(records_table.c.seq.in_(seqs))

    def find_latest(self, role: Role, path: str) -> tuple[Located, str] | None:
        """The record that read (``in``) or wrote (``out``) ``path`` with the latest end
        time (then the latest in ledger order), and the end time the index claims for it:
        one step down ``ll_artifacts_latest``."""
        rows = self._fetch(
            "query",
            "SELECT r.height, r.pos, r.id, r.body, a.ended FROM ll_records r JOIN"
            " (SELECT seq, ended FROM ll_artifacts WHERE path = ? AND role = ?"
            " ORDER BY ended DESC, seq DESC LIMIT 1) a ON r.seq = a.seq",
            (path, _IN if role == "in" else _OUT),
        )
        if not rows:
            return None
        height, pos, record_id, body, ended = rows[0]
        return Located(_as_int(height), _as_int(pos), StoredRecord(_as_text(record_id), _as_bytes(body))), \
            _as_text(ended)

    def count_found(self, role: Role, *, path: str | None = None, digest: str | None = None) -> int:
        """Counted on the artifacts index alone: the records it names. (A row whose record
        was deleted behind our back still counts; readers verify what they read.)"""
        seq = artifacts_table.c.seq
        counted = sa.func.count() if path is not None else sa.func.count(sa.distinct(seq))
        query = sa.select(counted).select_from(artifacts_table).where(self._artifact_condition(role, path, digest))
        with _translated("counting", self.url), self._engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

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

    def artifact_count(self, stop_seq: int) -> int:
        rows = self._fetch("counting the index", "SELECT count(*) FROM ll_artifacts WHERE seq < ?", (int(stop_seq),))
        return int(rows[0][0])

    def _merged_index_rows(self, stop: int) -> Iterator[IndexRow]:
        records = self._record_rows(stop)
        artifacts = self._artifact_rows(stop)
        record = next(records, None)
        artifact = next(artifacts, None)
        while record is not None or artifact is not None:
            if artifact is None or (record is not None and record[0] <= artifact[0]):
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

    def by_run(self, run_id: str) -> list[Located]:
        return self._located(records_table.c.run_id == run_id)

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        return self._located(records_table.c.id.like(prefix + "%"))[:limit]

    def close(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.dispose()
        self._remove_copy()
