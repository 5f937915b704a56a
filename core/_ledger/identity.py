"""What names a ledger, worked out from its URL without connecting to it: its identity (what
its spool is keyed by) and its trust identity (what this user's remembered head is kept
under). Apart from :mod:`.deferred` so that :mod:`.ledger` can name a ledger that is gone
without an import cycle."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from .._errors import ConfigError

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend

__all__ = ["ledger_identity", "redact", "refuse_path_not_utf8", "refuse_url_not_utf8", "trust_identity_of"]

_SQL_SCHEMES = frozenset({"sqlite", "postgresql"})


def redact(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (``scheme://user:password@host``) replaced by ``***``."""
    match = re.match(r"^[^:/?#]+://[^:/@?#]*:([^@/?#]+)@", url)
    return text.replace(match.group(1), "***") if match else text


def refuse_path_not_utf8(path: str, shown: str) -> None:
    """:class:`ConfigError` where the ledger file ``path`` (absolute) is not UTF-8 text: the
    default ledger in a working directory whose name is not, or a URL that names such a
    path. A ledger is named by its path: its spool, this account's remembered tree head and
    every message name it as text, which such a path cannot be. Every command refuses it
    here, where its identity or its file is worked out, before anything is created."""
    from .._environment import not_utf8

    if not_utf8(path):
        # Raw text: whoever shows the message escapes it once (the CLI's printable shows the
        # byte as \xNN); escaped here too, every backslash came out doubled ("wd-\\xff").
        raise ConfigError(
            f"the ledger {shown} is at {path}, a path that is not valid UTF-8 text (a "
            "ledger is named by its path; for the default one, the working directory's name): give --ledger "
            "(or LINEAGE_LEDGER_URL) a ledger whose path is")


def ledger_identity(url: str) -> tuple[str, Backend | None]:
    """``(identity, backend or None)`` for ``url`` without connecting to the back-end.

    Raises :class:`ConfigError` (``UnknownScheme``, ``MissingExtra``, a malformed URL) for
    what no retry can fix. The SQL back-end connects when constructed, so its identity is
    worked out here the way it works it out (and compared when it opens); the other
    back-ends connect only when used, so one is constructed and returned for shipping.
    """
    from lineage_ledger.backends import backend_class, split_url

    scheme, _ = split_url(url)
    if scheme == "sqlite" and "%" not in url:
        # The embedded default, worked out as SQLAlchemy would without importing it (a third
        # of a second that every short engine task would otherwise pay before its first record).
        from lineage_ledger.backends._sqlite_files import sqlite_file

        return _sqlite_identity(url, sqlite_file(url)), None
    cls = backend_class(scheme)  # unknown scheme, missing extra
    if scheme not in _SQL_SCHEMES:
        backend = cls(url)
        return refuse_url_not_utf8(backend.identity, url), backend
    return refuse_url_not_utf8(_sql_identity(url), url), None


def refuse_url_not_utf8(text: str, url: str) -> str:
    """``text`` (``url``, or the identity worked out from it), or :class:`ConfigError` where
    it is not UTF-8 text: a URL given from bytes (an environment variable, a shell's
    ``$'...'``) names no ledger the spool, the trust state or a message can name."""
    from .._environment import not_utf8

    if not_utf8(text):
        raise ConfigError(f"the ledger URL {redact(url, url)} is not valid UTF-8 text: give --ledger "
                          "(or LINEAGE_LEDGER_URL) one that is")
    return text


def trust_identity_of(url: str) -> str:
    """What this user's remembered head of the ledger at ``url`` is kept under, without
    opening it (``Backend.trust_identity``): a SQLite file by its path as named."""
    from lineage_ledger.backends import split_url

    if split_url(url)[0] == "sqlite" and "%" not in url:
        from lineage_ledger.backends._sqlite_files import sqlite_file

        path = sqlite_file(url)
        _sqlite_identity(url, path)  # the same refusals
        return "sqlite:///" + os.path.abspath(str(path))
    identity, backend = ledger_identity(url)
    return backend.trust_identity if backend is not None else identity


def _sqlite_identity(url: str, path: str | None) -> str:
    """The identity of the SQLite file ``path`` that ``url`` names (None: it names none)."""
    shown = redact(url, url)
    if path is None:
        raise ConfigError(f"{shown}: give a file path, e.g. sqlite:///ledger.db")
    if os.path.isdir(path):
        raise ConfigError(f"{shown}: {path} is a directory, not a ledger file")
    real = os.path.realpath(path)
    refuse_path_not_utf8(real, shown)
    return "sqlite:///" + real


def _sql_identity(url: str) -> str:
    import sqlalchemy as sa
    from sqlalchemy import exc

    from lineage_ledger.backends.sql import _engine_url, _sqlite_path

    shown = redact(url, url)
    try:
        engine_url = sa.make_url(_engine_url(url))
    except exc.ArgumentError as err:
        raise ConfigError(f"malformed ledger URL {shown!r}: {redact(str(err), url)}") from None
    if engine_url.get_backend_name() == "sqlite":
        return _sqlite_identity(url, _sqlite_path(engine_url))
    try:
        engine = sa.create_engine(engine_url)  # imports the driver; connects to nothing
    except ModuleNotFoundError as err:
        from .._errors import MissingExtra

        raise MissingExtra(
            f"the {engine_url.get_backend_name()} back-end needs {err.name!r}, which is not "
            "installed: pip install 'lineage-ledger[postgres]'"
        ) from None
    except exc.ArgumentError as err:
        raise ConfigError(f"bad ledger URL {shown!r}: {redact(str(err), url)}") from None
    engine.dispose()
    from lineage_ledger.backends._pg_reader import identity_of

    return identity_of(url)  # the back-end's own name (without the keys that only tune the connection)
