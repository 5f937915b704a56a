"""Whether a ledger's refusal of records is for good, and what a closing Recorder says of the
records it leaves in the spool: apart from :mod:`.deferred` so that the Recorder (which
:mod:`.ledger` makes, which :mod:`.deferred` opens) asks it without an import cycle
(``tests/test_layout.py``)."""

from __future__ import annotations

import errno
import logging
import os
import re

__all__ = ["permanent_refusal", "say_unshipped"]

log = logging.getLogger("lineage_ledger.recorder")

# PostgreSQL's SQLSTATEs of a refusal that no retry settles: insufficient_privilege,
# read_only_sql_transaction (default_transaction_read_only; a hot standby raises it too, but
# the back-end tells one apart by pg_is_in_recovery(): ServerInRecovery), and an undefined
# table or column (a schema this version does not write).
_PERMANENT_SQLSTATES = {"42501": "permission denied", "25006": "the database is read-only",
                        "42P01": "the ledger's tables are not those of this version",
                        "42703": "the ledger's tables are not those of this version"}


def permanent_refusal(err: BaseException | None) -> str | None:
    """Why the ledger will not take records however long one waits, or None where it may
    (locked, busy, down, unreachable, slow: a later shipment may get through).

    Permanent: permission denied (a PostgreSQL role that may only read), a read-only
    database (an SQLite file or directory this user may not write, a PostgreSQL database or
    server an administrator set read-only; not a hot standby, :class:`ServerInRecovery`,
    which takes writes once a failover promotes it), a schema or store this version cannot write (``ConfigError``,
    ``CorruptStore``), and a back-end's ``AccessDenied``. The drivers' errors are found on
    the cause chain the back-ends keep (:mod:`lineage_ledger.backends._base`); their text is
    the fallback where a cause was redacted."""
    from .._errors import ConfigError, CorruptStore, ServerInRecovery

    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ServerInRecovery):
            # A hot standby refuses writes with the read-only SQLSTATE below (on its cause),
            # but only until a failover promotes it: the records wait.
            return None
        if isinstance(cause, ConfigError):  # a schema to migrate or of another version, not a ledger
            return "the ledger cannot be written by this version"
        if isinstance(cause, CorruptStore):
            return "the ledger database is damaged"
        if any(kind.__name__ == "AccessDenied" for kind in type(cause).__mro__):  # BAASH, Fabric
            return "permission denied"
        sqlstate = getattr(cause, "sqlstate", None)  # psycopg
        if isinstance(sqlstate, str) and sqlstate in _PERMANENT_SQLSTATES:
            return _PERMANENT_SQLSTATES[sqlstate]
        name = getattr(cause, "sqlite_errorname", None)  # sqlite3 (SQLITE_READONLY_*, SQLITE_PERM)
        if isinstance(name, str) and name.startswith("SQLITE_READONLY"):
            return "the ledger is read-only here"
        if name in ("SQLITE_PERM", "SQLITE_AUTH"):
            return "permission denied"
        text = str(cause).lower()
        if "read-only transaction" in text:  # PostgreSQL's text (a redacted cause has no SQLSTATE)
            return _PERMANENT_SQLSTATES["25006"]
        if "opened for reading only" in text or "readonly database" in text:
            # The first: an SQLite ledger this user may not write, opened by its reader.
            return "the ledger is read-only here (this user may not write its file or directory)"
        if "permission denied" in text:
            return "permission denied"
        login = _refused_login(text)
        if login is not None:
            return login
        unreadable = _unreadable_sqlite_file(str(cause))
        if unreadable is not None:
            return unreadable
        cause = cause.__cause__ or cause.__context__
    return None


def say_unshipped(pending: int, error: BaseException | None, spool_dir: str, timeout: float) -> None:
    """Warn, as a :class:`~.recorder.Recorder` closes, that ``pending`` records were not
    shipped, and why they wait (``error``: the last shipment's)."""
    from .._errors import VerificationError

    if isinstance(error, VerificationError):
        # Not a wait that ran out, and opening the ledger again ships nothing into it.
        log.warning(
            "lineage-ledger: %d records not shipped: the ledger failed a verification (%s); they stay "
            "in %s until it is repaired (`verify-lineage` names the problem; `lineage-ledger reset-trust` "
            "if it was restored on purpose, then `lineage-ledger spool ship`)", pending, error, spool_dir)
    elif (why := permanent_refusal(error)) is not None:
        # Permission denied, a read-only database: no wait or retry gets them in.
        log.warning(
            "lineage-ledger: %d records not shipped: the ledger refuses them for good (%s: %s); they stay in "
            "%s, and `lineage-ledger spool ship` ships them once it takes writes", pending, why, error, spool_dir)
    else:
        # A capture's close spends its wait on the flush first and gives the recorder what is
        # left, often nothing: "within 0.0s" would misstate the wait the caller gave.
        waited = f"within {timeout:.1f}s" if timeout >= 0.05 else "yet"
        log.warning("lineage-ledger: %d records not shipped %s; they stay in %s and are shipped when "
                    "the ledger is next opened", pending, waited, spool_dir)


# The server's answers to a login it will not take, which psycopg raises at connection time
# without a SQLSTATE: a role or database misspelled in the URL, a role that may not log in
# (NOLOGIN: a group role), a wrong password. Retrying never gets a record in; taken for "the
# server is down", `run` said the record waited and exited 0 after every task, and nothing
# ever reached the ledger.
_LOGIN_REFUSED = (
    (re.compile(r'fatal:\s+role "[^"]*" does not exist'), "the server has no such role: check the user in the URL"),
    (re.compile(r'fatal:\s+role "[^"]*" is not permitted to log in'),
     "the server does not let this role log in: check the user in the URL"),
    (re.compile(r'fatal:\s+database "[^"]*" does not exist'),
     "the server has no such database: check the database in the URL"),
    (re.compile(r"fatal:\s+(password|scram|md5|peer|ident|cert) authentication failed"),
     "the server refused the login: check the user and password"),
    (re.compile(r"fatal:\s+no pg_hba\.conf entry"), "the server does not let this user connect from here"),
)


def _refused_login(text: str) -> str | None:
    for pattern, why in _LOGIN_REFUSED:
        if pattern.search(text):
            return why
    return None


# SQLite says only "unable to open database file" (SQLITE_CANTOPEN, no errno) whether the
# file is one this user may not read (another user's 0600 ledger: for good) or its directory
# is not there yet (a mount not up: it may pass). The back-ends' message names the ledger
# ("SHOWN: opening the ledger failed: unable to open database file"); opening that file
# here (for reading, never blocking on a FIFO) tells the two apart.
_CANTOPEN = re.compile(r"^(?P<shown>.+?): [^:]+ failed: unable to open database file\b")


def _unreadable_sqlite_file(message: str) -> str | None:
    matched = _CANTOPEN.match(message)
    if matched is None:
        return None
    shown = matched["shown"]
    path = shown[len("sqlite:///"):] if shown.startswith("sqlite:///") else shown
    path = path.split("?", 1)[0]
    if not path or path.startswith(":memory:"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return "permission denied: this user may not open the ledger's file (or a directory above it)"
        return None
    os.close(fd)
    return None
