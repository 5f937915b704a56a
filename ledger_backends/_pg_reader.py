"""A PostgreSQL ledger opened for reading only, through psycopg (no SQLAlchemy).

A command that only reads (``verify-lineage FILE``, ``lineage-ledger why``, the plugins'
checks before a run) starts a fresh process, and ``import sqlalchemy`` cost it about 0.16 s
of its 0.45 s on a PostgreSQL ledger. The queries are :class:`~._sql_reads._SQLReads`',
as for the writer (:class:`~.sql.SQLBackend`), which reads through psycopg's own cursor
anyway; only the connection is made here. The session is read-only
(``default_transaction_read_only``), so nothing this object runs can write.

The ledger's identity (the key of its trusted state and spool) must be the writer's: both
use :func:`identity_of`, SQLAlchemy's rendering of the URL without :data:`TUNING_KEYS`,
rendered here for URLs it can read plainly and by SQLAlchemy only for anything else (tests
compare the two).
"""

from __future__ import annotations

import os
import re
import select
import threading
import urllib.parse
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lineage_ledger._errors import BackendError, BackendUnavailable, ConfigError, CorruptStore, MissingExtra
from lineage_ledger._ledger.spool import note_earlier_name
from lineage_ledger._model import StoredBlock

from ._base import Backend, redact, safe_cause
from ._pg_audit import PostgresAuditReads
from ._pg_watch import HANG_TIMEOUT_KEY, forget_watches_after_fork, guarded_connect, hang_limit
from ._sql_reads import SCHEMA_VERSION, _SQLReads
from ._sqlite_files import database_error, driver_text, refusal

__all__ = ["SESSION_SETUP", "TUNING_KEYS", "PostgresReader", "identity_of", "set_up_session"]

# libpq waits for ever by default on a server that takes the connection and never answers
# (a hung host, a proxy): a pre-run check would then hang the workflow. A URL's own
# ``connect_timeout`` wins.
PG_CONNECT_TIMEOUT_S = 10

# Query keys that say how long to wait for the server, how to keep the connection alive, how
# to check the server and prove who we are, never which server, database, role or schema: the
# ledger's name leaves them out, so that adding ``?connect_timeout=10`` (or moving to TLS) keeps
# its spool (records a crash left behind are replayed, not stranded) and its trusted tree head.
# A key left out wrongly would let two stores share a spool, so only keys that cannot change
# the store reached are here. TLS and authentication settings either reach the same server or
# fail; with them in the name a connection made without TLS would also start from a fresh
# trusted head instead of the one verified over TLS, and ``sslpassword`` would be written to
# the spool's URL file. Kept in the name: host, hostaddr, port, dbname, user, options (a
# search_path names other tables), service and passfile (they can name a host or role),
# target_session_attrs (picks among hosts), sslsni and sslnegotiation (a proxy may route by
# them), client_encoding, and every key not listed.
TUNING_KEYS = frozenset({
    "connect_timeout", HANG_TIMEOUT_KEY, "application_name", "fallback_application_name",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir", "sslcompression",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "channel_binding", "gssencmode", "require_auth",
})

# postgresql[+psycopg]://[user[:password]@]host[:port]/database[?key=value&...], every part
# in characters that SQLAlchemy neither decodes nor quotes differently.
_PLAIN = r"[A-Za-z0-9_.~-]"
_SIMPLE_URL = re.compile(
    rf"(?P<scheme>postgresql(?:\+psycopg)?)://"
    rf"(?:(?P<user>{_PLAIN}+)(?::(?P<password>[^@/?#\[\]]*))?@)?"
    rf"(?P<host>{_PLAIN}+)(?::(?P<port>[0-9]+))?"
    rf"/(?P<database>{_PLAIN}+)"
    rf"(?:\?(?P<query>{_PLAIN}+={_PLAIN}+(?:&{_PLAIN}+={_PLAIN}+)*))?\Z"
)


def _parsed(url: str) -> tuple[str, dict[str, Any]]:
    """``(rendering, connection arguments)`` exactly as the writer's SQLAlchemy reads ``url``
    (see :func:`_read`); the rendering was the ledger's name before :data:`TUNING_KEYS`."""
    _, rendering, args = _read(url)
    return rendering, args


def _read(url: str) -> tuple[str, str, dict[str, Any]]:
    """``(identity, rendering, connection arguments)`` of ``url``: SQLAlchemy's rendering
    (driver ``+psycopg``, password hidden, query keys sorted), the same without
    :data:`TUNING_KEYS`, and the keyword arguments the writer's psycopg dialect connects with
    (``user``, ``password``, ``host``, ``port``, ``dbname`` and the query's own,
    percent-decoded). Plain URLs are read here; anything else by SQLAlchemy (whose import only
    such URLs pay): never by libpq's own URI parser, which reads some passwords differently."""
    match = _SIMPLE_URL.match(url)
    if match is None:
        return _read_by_sqlalchemy(url)
    shown = "postgresql+psycopg://"
    args: dict[str, Any] = {"host": match["host"], "dbname": match["database"]}
    if match["user"] is not None:
        shown += match["user"] + (":***" if match["password"] is not None else "") + "@"
        args["user"] = match["user"]
        if match["password"]:  # an empty one is no argument to SQLAlchemy either
            args["password"] = urllib.parse.unquote(match["password"])
    shown += match["host"]
    if match["port"] is not None:
        shown += ":" + str(int(match["port"]))
        args["port"] = int(match["port"])
    shown += "/" + match["database"]
    identity = shown
    if match["query"]:
        pairs = sorted((pair.partition("=") for pair in match["query"].split("&")), key=lambda p: p[0])
        shown += "?" + "&".join(f"{key}={value}" for key, _, value in pairs)
        kept = [f"{key}={value}" for key, _, value in pairs if key not in TUNING_KEYS]
        if kept:
            identity += "?" + "&".join(kept)
        for key, _, value in pairs:
            args[key] = value if key not in args else (*_as_tuple(args[key]), value)
    return identity, shown, args


def _as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _read_by_sqlalchemy(url: str) -> tuple[str, str, dict[str, Any]]:
    import sqlalchemy as sa

    from .sql import _engine_url

    problem = None
    try:
        parsed = sa.make_url(_engine_url(url))
        args = parsed.translate_connect_args(username="user", database="dbname")
        args.update({key: (tuple(value) if isinstance(value, (list, tuple)) else value)
                     for key, value in parsed.query.items()})
        identity = parsed.difference_update_query(TUNING_KEYS).render_as_string(hide_password=True)
        return identity, parsed.render_as_string(hide_password=True), args
    except (sa.exc.ArgumentError, ValueError) as err:
        problem = redact(str(err), url)
    # Raised outside the handler, so that the parser's error (which may quote the password)
    # is not kept as this one's context.
    raise ConfigError(f"malformed ledger URL {redact(url, url)!r}: {problem}")


def identity_of(url: str) -> str:
    """The name of the ledger at ``url``, what :class:`~.sql.SQLBackend` and
    :class:`PostgresReader` give as ``identity``: SQLAlchemy's rendering of the URL without
    :data:`TUNING_KEYS`. The rendering with them (the name before) is noted as an earlier
    name, so that a spool directory an earlier release left under it is still replayed."""
    identity, rendering, _ = _read(url)
    note_earlier_name(identity, rendering)
    return identity


# Every query here is a short index look-up or a range scan, which PostgreSQL's JIT would
# compile first: the planner's estimate for a path every task read (a million rows, the role
# asked for none) passed jit_above_cost, and compiling took 5-25 ms of a 1 ms query. Set once
# a session, by a statement (a server without the setting, before PostgreSQL 11, or a pooler
# that refuses startup options, keeps working).
SESSION_SETUP = "SET jit = off"
_IDLE = 4  # sessions kept open for the next read; a thread's read borrows one


def set_up_session(cursor: Any) -> None:
    """Run :data:`SESSION_SETUP` on a new session (autocommit), ignoring a refusal."""
    try:
        cursor.execute(SESSION_SETUP)
    except Exception:  # noqa: BLE001 - an older server: its plans are only slower
        pass


def _ended_by_the_server(conn: Any) -> bool:
    """Whether the server ended this idle session (a restart, ``idle_session_timeout``,
    ``pg_terminate_backend``): it then sends its last error and closes, and the socket is
    readable. Nothing else comes to an idle session in autocommit that LISTENs to nothing,
    so this costs one poll, not a round trip as a ping would; a session this wrongly drops
    is replaced by a new one. (A session whose route silently went is not told apart here:
    its read fails, or the hang guard ends it.)"""
    try:
        fd = conn.pgconn.socket
    except Exception:  # noqa: BLE001 - psycopg: no socket, the connection is lost
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


_READERS: weakref.WeakSet[PostgresReader] = weakref.WeakSet()


def _forget_parents_connections_after_fork() -> None:
    forget_watches_after_fork()
    # A forked child must not use the parent's session (one socket, two processes) and must
    # not end it either: closing would end the parent's session. psycopg never finishes a
    # connection that another process opened when it is collected, so forgetting is enough.
    for reader in list(_READERS):
        reader._idle = []
        reader._lock = threading.Lock()  # a parent thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_parents_connections_after_fork)


class PostgresReader(PostgresAuditReads, _SQLReads, Backend):
    """A PostgreSQL ledger opened for reading only, through psycopg: what
    ``open_backend(url, create=False)`` gives for ``postgresql://``. Nothing is created or
    migrated; a database without a ledger is :class:`~lineage_ledger.NoLedger`.
    Each read borrows one of a few idle sessions of this process (in autocommit: it sees
    what is committed when it runs, as with the writer) and gives it back; an audit worker's
    bulk reads (:class:`~._pg_audit.PostgresAuditReads`) take one snapshot for a chunk."""

    keeps_end_times = True
    read_only = True
    read_strategy: str | None = None
    migrated_from: str | None = None
    _sqlite = False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            import psycopg
        except ModuleNotFoundError as err:
            raise MissingExtra(f"the postgresql back-end needs {err.name!r}, which is not installed: "
                               "pip install 'lineage-ledger[postgres]'") from err
        self._psycopg = psycopg
        self._identity, rendering, params = _read(url)
        note_earlier_name(self._identity, rendering)
        options = " ".join(_as_tuple(params.get("options") or ()))
        params["options"] = (options + " -c default_transaction_read_only=on").strip()
        params.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
        self._hang_limit = hang_limit(params.pop(HANG_TIMEOUT_KEY, None), self.display_url)
        self._params = {**params, "autocommit": True}
        # Idle sessions of this process, lent to one read at a time: threads come and go in
        # the plugins, and a session per thread would stay open until close().
        self._idle: list[tuple[int, Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._origin: str | None = None
        _READERS.add(self)
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def origin(self) -> str:
        """``lineage-ledger:`` and 32 hex digits, made with the ledger and never changed."""
        assert self._origin is not None
        return self._origin

    def _open_schema(self) -> None:
        try:
            meta = dict(self._fetch("opening the ledger", "SELECT key, value FROM ll_meta", ()))
        except CorruptStore as err:  # ll_meta does not exist: a database without a ledger
            if not isinstance(err.__cause__, self._psycopg.errors.UndefinedTable):
                raise
            meta = {}
        version, origin = meta.get("schema"), meta.get("origin")
        if version == SCHEMA_VERSION and origin:
            self._origin = origin
            return
        raise refusal(self.display_url, sqlite=False, tables=set(), version=version, where=self.display_url)

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """psycopg's errors as the library's own, the URL's password in neither the message
        nor the cause (the cause is the driver's error only where its text holds none)."""
        psycopg = self._psycopg
        try:
            yield
        except psycopg.DatabaseError as err:
            text = driver_text(err, self.url)
            raise database_error(what, self.display_url, text) from safe_cause(err, self.url)
        except psycopg.Error as err:
            text = driver_text(err, self.url)
            raise BackendError(f"{self.display_url}: {what} failed: {text}") from safe_cause(err, self.url)

    def _borrow(self) -> Any:
        pid = os.getpid()
        ended = []
        try:
            with self._lock:
                while self._idle:
                    owner, conn = self._idle.pop()
                    if owner != pid or conn.closed:
                        continue  # a parent's session is the parent's to close
                    if not _ended_by_the_server(conn):
                        return conn
                    ended.append(conn)
        finally:
            for conn in ended:
                conn.close()
        conn = guarded_connect(self._hang_limit, **self._params)
        set_up_session(conn.cursor())
        return conn

    def _give_back(self, conn: Any) -> None:
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < _IDLE:
                self._idle.append((os.getpid(), conn))
                return
        conn.close()

    def _fetch(self, what: str, statement: str, params: tuple) -> list:
        with self._translated(what):
            conn = self._borrow()
            try:
                return conn.execute(statement.replace("?", "%s"), params).fetchall()
            finally:
                self._give_back(conn)

    def worker_spec(self) -> tuple[str, str]:
        """What an audit worker needs to read the same ledger: the URL (no SQLite URI)."""
        return self.url, ""

    def append(self, blocks: Sequence[StoredBlock]) -> None:
        raise BackendUnavailable(f"{self.display_url}: opened for reading only")

    def migrate(self) -> str | None:
        raise ConfigError(f"{self.display_url}: opened read-only, cannot migrate it")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for pid, conn in idle:
            if pid == os.getpid():  # never a parent's session, which closing would end
                conn.close()
