"""The SQLAlchemy engine under :class:`~.sql.SQLBackend`: how a ledger URL becomes one, what
each new connection is set up with, and how SQLAlchemy's errors become the library's own.

PostgreSQL connections are opened through the hang guard (:mod:`._pg_watch`) and get the
session settings the reader uses; SQLite connections get the busy timeout, WAL and full
sync where they may write, and take their write lock at ``BEGIN`` (``BEGIN IMMEDIATE``),
because a read transaction that upgrades to a write fails at once instead of waiting.
Every engine made is remembered, so that a forked child lets go of its parent's pooled
connections.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import event, exc

from lineage_ledger._errors import AppendConflict, BackendError, ServerInRecovery

from ._base import redact, safe_cause
from ._pg_reader import set_up_session
from ._pg_watch import guarded_connect
from ._sqlite_files import database_error, driver_text
from ._sqlite_writes import enter_wal

__all__ = ["guard_postgres_connections", "set_up_sqlite_connections"]


def _engine_url(url: str) -> str:
    scheme, rest = url.split("://", 1) if "://" in url else ("sqlite", None)
    if rest is None:  # a plain path
        return "sqlite:///" + url
    if scheme == "postgresql":  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
        return "postgresql+psycopg://" + rest
    return url


def _sqlite_path(engine_url: sa.URL) -> str | None:
    database = engine_url.database
    return None if database in (None, "", ":memory:") else database


# PostgreSQL's read_only_sql_transaction: a database or server an administrator set
# read-only (for good), or a hot standby (until it is promoted); pg_is_in_recovery() tells.
_READ_ONLY_SQLSTATE = "25006"


@contextlib.contextmanager
def _translated(what: str, url: str, in_recovery: Callable[[], bool] | None = None):
    """Turn SQLAlchemy and driver errors into the library's own, with the cause attached;
    the URL's password never appears in the message or the cause. ``in_recovery``: asked
    after a write refused as read-only (the failed transaction rolled back by then), whether
    the server is a standby; if so the error is :class:`ServerInRecovery`."""
    shown = redact(url, url)
    try:
        yield
    except exc.IntegrityError as err:
        raise AppendConflict(f"{what}: another writer stored this height or record first") from safe_cause(
            err, url
        )
    except exc.DatabaseError as err:
        text = driver_text(getattr(err, "orig", None) or err, url)
        if in_recovery is not None and getattr(err.orig, "sqlstate", None) == _READ_ONLY_SQLSTATE \
                and in_recovery():
            raise ServerInRecovery(
                f"{shown}: {what} failed: the server is a standby in recovery, which takes no writes until it is "
                f"promoted (or give the primary's URL): {text}") from safe_cause(err, url)
        raise database_error(what, shown, text) from safe_cause(err, url)
    except exc.SQLAlchemyError as err:
        raise BackendError(f"{shown}: {what} failed: {driver_text(err, url)}") from safe_cause(err, url)


_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    # A forked child must not use the parent's pooled connections (one socket or SQLite
    # handle shared by two processes). A PostgreSQL socket is left to the parent
    # (dispose(close=False)): closing it here would end the parent's session. An SQLite
    # handle must be closed here, though: SQLite keeps one record per file of the locks
    # its process holds, the child inherits the parent's, and while an inherited handle
    # is open the child's own connections take no lock; the parent, closing its last
    # connection, then deletes the -wal under the child, and the child's acknowledged
    # appends are lost (tests/test_sqlite_faults.py). An idle pooled handle holds no
    # transaction, so closing it in the child changes nothing for the parent.
    for engine in list(_ENGINES):
        engine.dispose(close=engine.dialect.name == "sqlite")


os.register_at_fork(after_in_child=_forget_connections_after_fork)


def guard_postgres_connections(engine: sa.Engine, limit: float) -> None:
    """Open ``engine``'s PostgreSQL connections through the hang guard, with the reader's
    session settings."""

    @event.listens_for(engine, "do_connect")
    def _connect_guarded(_dialect, _record, cargs, cparams):
        # Every wait of the session (the pool's ping, appends, reads) is watched for a
        # server that stopped answering: an error then, as the reader's, not a hang.
        return guarded_connect(limit, *cargs, **cparams)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # No JIT for look-ups (see _pg_reader), set outside any transaction of ours.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            set_up_session(dbapi_connection.cursor())
        finally:
            dbapi_connection.autocommit = autocommit


def set_up_sqlite_connections(engine: sa.Engine, *, read_only: bool, busy_timeout_s: int) -> None:
    """Set up ``engine``'s SQLite connections: the busy timeout; WAL and full sync unless
    ``read_only``; the write lock taken at ``BEGIN`` for a write."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised via sqlite
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_s * 1000}")
        if not read_only:
            enter_wal(dbapi_connection, busy_timeout_s)
            cursor.execute("PRAGMA synchronous = FULL")  # the spool is trimmed after this ack
        cursor.execute("PRAGMA cache_size = -65536")  # 64 MiB: index pages stay in memory
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover - exercised via sqlite
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")
