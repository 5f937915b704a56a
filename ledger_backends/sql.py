"""SQL storage through SQLAlchemy 2: SQLite (the embedded default) and PostgreSQL.

Tables are prefixed ``ll_`` so a ledger can share a PostgreSQL database. The block
height is the primary key: two writers building on the same head collide there, and the
loser gets :class:`AppendConflict` and rebuilds. SQLite runs in WAL mode with a busy
timeout and takes its write lock up front (``BEGIN IMMEDIATE``), because a read
transaction that upgrades to a write fails at once instead of waiting for the lock (the
engine, its connections' set-up and the translation of its errors are :mod:`._sql_engine`'s).

Opened with ``create=False`` (what read commands do) the store is only read: a missing or
empty file is :class:`NoLedger`, nothing is created, migrated or switched to WAL, and a
ledger we may not write is read completely, the committed transactions still in its
``-wal`` file included (see :func:`~._sqlite_files.read_only_uri`). An SQLite ledger opened so
is a :class:`~._sqlite_reader.SQLiteReader`, which reads through :mod:`sqlite3` and never
imports SQLAlchemy (what a fresh read-only process would otherwise spend most of its time
on); the queries of both are in :class:`~._sql_reads._SQLReads`. An SQLite ledger opened
for writing through ``open_backend`` is a :class:`~.sqlite.SQLiteBackend`, which appends
through :mod:`sqlite3` as well and comes here only to migrate an old schema.

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
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from lineage_ledger._errors import (
    BackendUnavailable,
    ConfigError,
    MissingExtra,
)
from lineage_ledger._model import StoredBlock

from . import READABLE_SCHEMES
from ._base import Backend, redact, safe_cause
from ._pg_reader import PG_CONNECT_TIMEOUT_S, PostgresReader, identity_of
from ._pg_watch import HANG_TIMEOUT_KEY, hang_limit
from ._sql_engine import (
    _ENGINES,
    _engine_url,
    _sqlite_path,
    _translated,
    guard_postgres_connections,
    set_up_sqlite_connections,
)
from ._sql_reads import SCHEMA_VERSION, _SQLReads
from ._sql_rebuild import Rebuilt, rebuild
from ._sql_schema import blocks_table, prepare_schema, stored_meta
from ._sqlite_files import (
    _BUSY_TIMEOUT_S,
    _connect,
    _writable,
    is_sqlite_url,
    read_only_uri,
    refusal,
    refuse_without_locks,
)
from ._sqlite_reader import SQLiteReader
from .sqlite import INSERT_ARTIFACTS, INSERT_BLOCKS, INSERT_RECORDS, append_rows, new_blocks
from .sqlite import create_private_file as _create_private_file
from .sqlite import make_private_dirs as _make_private_dirs

__all__ = ["SQLBackend"]

logger = logging.getLogger(__name__)

# Serialises schema creation and migration between processes on PostgreSQL.
_PG_SCHEMA_LOCK = 0x6C6C_7363_6865_6D61 & 0x7FFF_FFFF_FFFF_FFFF


class SQLBackend(_SQLReads, Backend):
    keeps_end_times = True
    """SQLite or PostgreSQL through SQLAlchemy.

    ``create=False`` opens an existing ledger for reading only: see the module docstring.
    Attributes: ``read_only`` (nothing can be appended through this object),
    ``read_strategy`` (SQLite read-only opens: ``"ro"`` reads the file in place with
    SQLite's ``mode=ro``, its WAL included; ``"immutable"`` when there is no WAL to read
    and no ``-shm`` can be created; ``"copy"`` reads a private copy of the file and its
    WAL), ``migrated_from`` (the schema version this object migrated the ledger from).
    """

    def __new__(cls, url: str, *, create: bool = True):
        if not create and cls is SQLBackend and isinstance(url, str) and is_sqlite_url(url):
            return SQLiteReader(url)  # the one read-only SQLite path (no __init__ here)
        if not create and cls is SQLBackend and isinstance(url, str) and \
                url.split("://", 1)[0].lower() in READABLE_SCHEMES:
            return PostgresReader(url)  # and the one read-only PostgreSQL path
        return super().__new__(cls)

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
            raise ConfigError(f"malformed ledger URL {shown!r}: {redact(str(err), url)}") from safe_cause(
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
            # (create=False never gets here for SQLite: __new__ hands it to SQLiteReader.)
            path = os.path.abspath(path)  # "x/../a.db" is a.db to SQLite, x or not
            parent = os.path.dirname(path)
            _make_private_dirs(parent, shown)
            refuse_without_locks(path, shown)
            if os.path.exists(path):
                # A copy we may not write (or whose directory cannot take the WAL files):
                # read it, as a read-only open would.
                self.read_only = not (_writable(path) and _writable(parent))
            else:
                _create_private_file(path, shown)
            if self.read_only:
                uri, self.read_strategy, self._copy_dir = read_only_uri(path, shown)
                if self._copy_dir is not None:
                    self._copy_cleanup = weakref.finalize(self, shutil.rmtree, self._copy_dir, True)
                kwargs["creator"] = lambda: _connect(uri)
        else:
            kwargs["pool_pre_ping"] = True
            # Ours (see _pg_watch): libpq would refuse the key. Like the other keys that only
            # tune the connection, it is not part of the identity (_pg_reader.TUNING_KEYS).
            self._hang_limit = hang_limit(engine_url.query.get(HANG_TIMEOUT_KEY), shown)
            engine_url = engine_url.difference_update_query([HANG_TIMEOUT_KEY])
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in engine_url.query:
                connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
            if self.read_only:
                options = engine_url.query.get("options")
                options = (options if isinstance(options, str) else " ".join(options or ())).strip()
                connect_args["options"] = (options + " -c default_transaction_read_only=on").strip()
            kwargs["connect_args"] = connect_args
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
            raise ConfigError(f"bad ledger URL {shown!r}: {redact(str(err), url)}") from safe_cause(err, url)
        _ENGINES.add(self._engine)
        try:
            if self._sqlite:
                set_up_sqlite_connections(self._engine, read_only=self.read_only, busy_timeout_s=_BUSY_TIMEOUT_S)
            else:
                guard_postgres_connections(self._engine, self._hang_limit)
            self._open_schema()
        except BaseException:
            self.close()
            raise

    @property
    def identity(self) -> str:
        if self._sqlite:  # x.db, sqlite:///x.db and ./x.db from another directory: one file
            return "sqlite:///" + os.path.realpath(str(self._engine.url.database))
        return identity_of(self.url)  # what PostgresReader says too (SQLAlchemy's rendering, less TUNING_KEYS)

    @property
    def trust_identity(self) -> str:  # a file by its path as named (see Backend.trust_identity)
        if self._sqlite:
            return "sqlite:///" + os.path.abspath(str(self._engine.url.database))
        return self.identity

    @property
    def origin(self) -> str:
        """``lineage-ledger:`` and 32 hex digits, made with the ledger and never changed: it
        names the ledger across copies and URLs (checkpoints carry it)."""
        assert self._origin is not None
        return self._origin

    # -- set-up ---------------------------------------------------------------------------
    def _remove_copy(self) -> None:
        if self._copy_cleanup is not None:
            self._copy_cleanup()

    def _open_schema(self) -> None:
        with _translated("opening the ledger", self.url, self._in_recovery):
            with self._engine.connect() as conn:  # no write lock: read-only copies open
                names, version, origin = stored_meta(conn)
            if version == SCHEMA_VERSION and origin:
                self._origin = origin
                return
            if self.read_only:
                self._refuse(names, version)
            self._prepare_schema()

    def _refuse(self, names: set[str], version: str | None) -> None:
        """Why a ledger opened for reading cannot be read."""
        where = self._engine.url.database if self._sqlite else self.display_url
        raise refusal(self.display_url, sqlite=self._sqlite, tables=names, version=version, where=str(where))

    def _prepare_schema(self) -> None:
        """Create, or migrate, the schema in one write transaction, then keep the origin."""
        with self._write() as conn:
            if not self._sqlite:  # two processes creating one ledger take turns
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
            started = time.monotonic()
            origin, moved = prepare_schema(conn, sqlite=self._sqlite, shown=self.display_url)
            if moved is not None:
                self.migrated_from = "2"
                logger.info(
                    "migrated the ledger at %s from schema 2 to %s (%d index rows rebuilt) in %.1f s",
                    self.display_url, SCHEMA_VERSION, moved, time.monotonic() - started,
                )
        self._origin = origin

    def migrate(self) -> str | None:
        """Bring the ledger to the current schema (what ``lineage-ledger migrate`` runs), in
        one write transaction. A writable open already does this, so this is idempotent.
        Returns the schema version this object migrated the ledger from (now or when it
        opened it), or ``None`` when it found it current."""
        if self.read_only:
            raise ConfigError(f"{self.display_url}: opened read-only, cannot migrate it")
        if self.migrated_from is None:
            with _translated("migrating the ledger", self.url, self._in_recovery):
                self._prepare_schema()
        return self.migrated_from

    def _in_recovery(self) -> bool:
        """Whether the server is a standby (``pg_is_in_recovery()``); False if unknown."""
        try:
            with self._engine.connect() as conn:
                return bool(conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar())
        except Exception:  # noqa: BLE001 - unknown: the refusal stays what it said
            return False

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
                # An invalidated connection (the server went away mid-append) would reconnect
                # to reach its info, and that attempt's error would replace the real one.
                if not conn.invalidated:
                    conn.info["write"] = False

    # -- writes ---------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        """Statements go to the driver as written: '?' for sqlite3, '%s' for psycopg."""
        return text if self._sqlite else text.replace("?", "%s")

    def append(self, blocks: Sequence[StoredBlock]) -> None:
        if not blocks:
            return
        with _translated("append", self.url, self._in_recovery), self._write() as conn:
            heights = [b.height for b in blocks]
            existing = dict(
                conn.execute(
                    sa.select(blocks_table.c.height, blocks_table.c.id).where(blocks_table.c.height.in_(heights))
                ).all()
            )
            fresh = new_blocks(blocks, existing)
            if not fresh:
                return
            below = conn.execute(
                sa.select(blocks_table.c.first_seq + blocks_table.c.count).where(
                    blocks_table.c.height == fresh[0].height - 1
                )
            ).scalar()
            seq = 0 if below is None else int(below)
            block_rows, record_rows, artifact_rows = append_rows(fresh, seq)
            # Straight to the driver: SQLAlchemy's per-row parameter processing cost
            # more than SQLite's own work here.
            conn.exec_driver_sql(self._sql(INSERT_BLOCKS), block_rows)
            if record_rows:
                conn.exec_driver_sql(self._sql(INSERT_RECORDS), record_rows)
            if artifact_rows:
                conn.exec_driver_sql(self._sql(INSERT_ARTIFACTS), artifact_rows)

    def rebuild_index(self, rows: Callable[[int], Iterable[tuple[list[tuple], list[tuple]]]]) -> Rebuilt:
        """As ``SQLiteBackend.rebuild_index``: one transaction; on PostgreSQL, a lock on the
        block table that lets readers in and keeps appenders out until it commits."""
        with _translated("rebuilding the index", self.url, self._in_recovery), self._write() as conn:
            if not self._sqlite:
                conn.exec_driver_sql("LOCK TABLE ll_blocks IN SHARE ROW EXCLUSIVE MODE")
            return rebuild(conn.exec_driver_sql, conn.exec_driver_sql, rows, self._sql)

    # -- reads (the queries are _SQLReads') --------------------------------------------
    def _fetch(self, what: str, statement: str, params: tuple) -> list:
        """All rows of one query, read through the driver's own cursor: SQLAlchemy's row
        objects cost more per row than SQLite's read and verification together."""
        statement = self._sql(statement)
        with _translated(what, self.url), self._engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(statement, params)
                return list(cursor.fetchall())
            except self._engine.dialect.loaded_dbapi.Error as err:
                # Give the driver's error to SQLAlchemy's wrapper, which _translated maps.
                raise exc.DBAPIError.instance(statement, params, err, Exception) from err
            finally:
                cursor.close()

    def close(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.dispose()
        self._remove_copy()
