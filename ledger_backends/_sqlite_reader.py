"""An SQLite ledger opened for reading only, through :mod:`sqlite3` (no SQLAlchemy).

A command that only reads an SQLite ledger (``verify-lineage FILE``, ``lineage-ledger
why``, the plugins' checks before a run) starts a fresh process, and ``import sqlalchemy``
alone cost it about 0.15 s; the queries are :class:`~._sql_reads._SQLReads`', the file's
opening :mod:`._sqlite_files`'.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import weakref
from collections.abc import Sequence

from lineage_ledger._errors import BackendUnavailable, ConfigError, NoLedger
from lineage_ledger._model import StoredBlock

from ._base import Backend
from ._sql_reads import SCHEMA_VERSION, _SQLReads
from ._sqlite_audit import SQLiteAuditReads
from ._sqlite_files import (
    _BUSY_TIMEOUT_S,
    SQLiteFile,
    _connect,
    _translated,
    ledger_path,
    read_only_uri,
    refusal,
    sqlite_file,
)

__all__ = ["SQLiteReader"]


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
        given, path = ledger_path(sqlite_file(url), shown)
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

