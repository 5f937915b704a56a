"""A PostgreSQL ledger opened for reading only, through psycopg (no SQLAlchemy).

A command that only reads (``verify-lineage FILE``, ``lineage-ledger why``, the plugins'
checks before a run) starts a fresh process, and ``import sqlalchemy`` cost it about 0.16 s
of its 0.45 s on a PostgreSQL ledger. The queries are :class:`~._sql_reads._SQLReads`',
as for the writer (:class:`~.sql.SQLBackend`), which reads through psycopg's own cursor
anyway; only the connection is made here. The session is read-only
(``default_transaction_read_only``), so nothing this object runs can write.

The ledger's identity (the key of its trusted state and spool) must be the writer's, which
SQLAlchemy renders: :func:`identity_of` renders the same string for URLs it can read
plainly and asks SQLAlchemy only for anything else (tests compare the two).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lineage_ledger._errors import BackendError, BackendUnavailable, ConfigError, MissingExtra
from lineage_ledger._model import StoredBlock

from ._base import Backend, redact, safe_cause
from ._sql_reads import SCHEMA_VERSION, _SQLReads
from ._sqlite_files import database_error, refusal

__all__ = ["SESSION_OPTIONS", "PostgresReader", "identity_of"]

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


def identity_of(url: str) -> str:
    """The URL as :class:`~.sql.SQLBackend` names its ledger: SQLAlchemy's rendering of it,
    driver ``+psycopg``, password hidden, query keys sorted."""
    match = _SIMPLE_URL.match(url)
    if match is None:
        import sqlalchemy as sa

        from .sql import _engine_url

        return sa.make_url(_engine_url(url)).render_as_string(hide_password=True)
    shown = "postgresql+psycopg://"
    if match["user"] is not None:
        shown += match["user"] + (":***" if match["password"] is not None else "") + "@"
    shown += match["host"]
    if match["port"] is not None:
        shown += ":" + str(int(match["port"]))
    shown += "/" + match["database"]
    if match["query"]:
        pairs = [pair.partition("=") for pair in match["query"].split("&")]
        shown += "?" + "&".join(f"{key}={value}" for key, _, value in sorted(pairs, key=lambda p: p[0]))
    return shown


# Every query here is a short index look-up or a range scan, which PostgreSQL's JIT would
# compile first: the planner's estimate for a path every task read (a million rows, the role
# asked for none) passed jit_above_cost, and compiling took 5-25 ms of a 1 ms query.
SESSION_OPTIONS = "-c jit=off"

_READERS: weakref.WeakSet[PostgresReader] = weakref.WeakSet()


def _forget_parents_connections_after_fork() -> None:
    # A forked child must not use the parent's session (one socket, two processes) and must
    # not end it either: closing would end the parent's session. psycopg never finishes a
    # connection that another process opened when it is collected, so forgetting is enough.
    for reader in list(_READERS):
        reader._local = threading.local()


os.register_at_fork(after_in_child=_forget_parents_connections_after_fork)


class PostgresReader(_SQLReads, Backend):
    """A PostgreSQL ledger opened for reading only, through psycopg: what
    ``open_backend(url, create=False)`` gives for ``postgresql://``. Nothing is created or
    migrated; a database without a ledger is :class:`~lineage_ledger.NoLedger`.
    One connection per thread and process, in autocommit: each read sees what is committed
    when it runs, as with the writer."""

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
        self._params = self._connection_params(url)
        self._local = threading.local()
        self._opened: list[tuple[int, Any]] = []
        self._opened_lock = threading.Lock()
        self._origin: str | None = None
        _READERS.add(self)
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise

    def _connection_params(self, url: str) -> dict[str, Any]:
        from psycopg.conninfo import conninfo_to_dict

        scheme, _, rest = url.partition("://")
        try:
            params = conninfo_to_dict("postgresql://" + rest)
        except self._psycopg.Error as err:
            raise ConfigError(f"malformed ledger URL {self.display_url!r}: "
                              f"{redact(str(err).strip(), url)}") from None
        options = str(params.get("options") or "")
        params["options"] = (options + " " + SESSION_OPTIONS + " -c default_transaction_read_only=on").strip()
        params["autocommit"] = True
        return params

    @property
    def identity(self) -> str:
        return identity_of(self.url)

    @property
    def origin(self) -> str:
        """``lineage-ledger:`` and 32 hex digits, made with the ledger and never changed."""
        assert self._origin is not None
        return self._origin

    def _open_schema(self) -> None:
        with self._translated("opening the ledger"):
            try:
                meta = dict(self._connection().execute("SELECT key, value FROM ll_meta").fetchall())
            except self._psycopg.errors.UndefinedTable:
                meta = {}  # a database without a ledger
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
            text = redact(str(err).strip(), self.url)
            raise database_error(what, self.display_url, text) from safe_cause(err, self.url)
        except psycopg.Error as err:
            text = redact(str(err).strip(), self.url)
            raise BackendError(f"{self.display_url}: {what} failed: {text}") from safe_cause(err, self.url)

    def _connection(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(**self._params)
            local.conn = conn
            with self._opened_lock:
                self._opened.append((os.getpid(), conn))
        return conn

    def _fetch(self, what: str, statement: str, params: tuple) -> list:
        with self._translated(what):
            return self._connection().execute(statement.replace("?", "%s"), params).fetchall()

    def worker_spec(self) -> tuple[str, str]:
        """What an audit worker needs to read the same ledger: the URL (no SQLite URI)."""
        return self.url, ""

    def append(self, blocks: Sequence[StoredBlock]) -> None:
        raise BackendUnavailable(f"{self.display_url}: opened for reading only")

    def migrate(self) -> str | None:
        raise ConfigError(f"{self.display_url}: opened read-only, cannot migrate it")

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for pid, conn in opened:
            if pid == os.getpid():
                conn.close()
        self._local = threading.local()
