"""The pool of :mod:`sqlite3` connections behind :class:`~.sqlite.SQLiteBackend`, and what
keeps a forked child off its parent's connections.

Split from :mod:`.sqlite` along this seam: the pool hands a connection to one thread at a
time and knows nothing of the ledger's schema or statements; the fork rules below concern
every open ledger object at once, so they live with the pool, not with one ledger. The
connection itself is opened by the class that uses the pool (``_open_connection``): its
settings (the busy timeout that tests shorten on :mod:`.sqlite`) are that module's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator

_OPEN: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
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


class ConnectionPool:
    """A small pool of connections of this process, as SQLAlchemy's (see
    :class:`~.sqlite.SQLiteBackend`); the class using it opens each connection."""

    _path: str

    def _open_connection(self) -> sqlite3.Connection:
        raise NotImplementedError

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
