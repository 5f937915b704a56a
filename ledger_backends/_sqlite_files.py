"""An SQLite ledger file: how it is found, opened without writing, and how its errors read.

Shared by the three classes that open one: the read-only :class:`~._sqlite_reader.SQLiteReader`,
the stdlib writer :class:`~.sqlite.SQLiteBackend` and SQLAlchemy's :class:`~.sql.SQLBackend`.
A ledger is read completely, the committed transactions still in its ``-wal`` file
included, and nothing is written: see :func:`read_only_uri`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import urllib.parse

from lineage_ledger._errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    CorruptStore,
    LedgerError,
    NeedsMigration,
    NoLedger,
)
from lineage_ledger._ledger.identity import refuse_path_not_utf8

from ._base import redact
from ._sql_reads import SCHEMA_VERSION

__all__ = ["SQLiteFile", "database_error", "driver_text", "is_sqlite_url", "read_only_uri", "refusal", "remove_live_probes",
           "refuse_without_locks", "sqlite_file"]

_BUSY_TIMEOUT_S = 60


# -- errors -----------------------------------------------------------------------------------
# A driver's message is prose: libpq breaks its lines and indents the hint ("Connection
# refused\n\tIs the server running ..."), the server pads its severity ("FATAL:  role").
# Every message of the command line shows a control character as an escape, so unfolded a
# user read "refused\x0a\x09Is the server". Only ASCII whitespace is folded: the other
# characters str.isspace() takes (\x1c-\x1f, NEL, U+2028) stay, to be shown escaped.
_WHITESPACE = re.compile(r"[ \t\n\r\v\f]+")


def driver_text(err: BaseException, url: str | None = None) -> str:
    """``err``'s message for a user: its whitespace folded into single spaces, one line, and
    ``url``'s password (if given) in no spelling. Redacted before folding as well as after:
    a password with a run of spaces in it is found as written, and one the driver quoted
    across a line break is found once folded."""
    text = str(err)
    if url is not None:
        text = redact(text, url)
    text = _WHITESPACE.sub(" ", text).strip()
    return text if url is None else redact(text, url)


def database_error(what: str, shown: str, text: str) -> LedgerError:
    """The library's error for a database error whose (redacted, one-line) message is ``text``."""
    lowered = text.lower()
    if any(s in lowered for s in ("not a database", "malformed", "corrupt", "disk image")):
        return CorruptStore(
            f"{shown}: the ledger database is corrupt or truncated ({text}); "
            "restore it from a copy, or verify a replica"
        )
    if "no such table" in lowered or "does not exist" in lowered and "relation" in lowered:
        return CorruptStore(f"{shown}: ledger tables are missing ({text})")
    return BackendUnavailable(f"{shown}: {what} failed: {text}")


def refusal(shown: str, *, sqlite: bool, tables: set[str], version: str | None, where: str) -> LedgerError:
    """Why a ledger opened for reading cannot be read (``where``: what a missing one is called)."""
    if version is None:
        if sqlite and tables:
            return ConfigError(f"{shown}: this database is not a lineage ledger")
        return NoLedger(f"no ledger at {where}")
    if version == "2":
        return NeedsMigration(
            f"{shown}: this ledger has schema 2 and must be migrated to schema {SCHEMA_VERSION} once: "
            f"run `lineage-ledger migrate --ledger {shown}` (with write access to it)"
        )
    if version == SCHEMA_VERSION:
        return CorruptStore(f"{shown}: the ledger's origin is missing from ll_meta")
    return ConfigError(f"{shown}: ledger schema {version}, expected {SCHEMA_VERSION}")


# -- SQLite files ------------------------------------------------------------------------------
def sqlite_file(url: str) -> str | None:
    """The file an SQLite URL (or plain path) names, as SQLAlchemy reads it: ``None`` for
    ``sqlite://`` and ``:memory:``. ``None`` too for a URL of another database."""
    if "://" not in url:
        url = "sqlite:///" + url
    scheme, rest = url.split("://", 1)
    if scheme.split("+", 1)[0].lower() != "sqlite":
        return None
    rest = rest.split("?", 1)[0]
    if "/" not in rest:
        return None
    database = rest.split("/", 1)[1]
    return None if database in ("", ":memory:") else database


def ledger_path(given: str | None, shown: str) -> tuple[str, str]:
    """The ledger file a URL names (``given``, from :func:`sqlite_file` or the writer's
    parser), as given and as an absolute path: :class:`ConfigError` for a URL that names
    no file, or a directory."""
    if given is None:
        raise ConfigError(f"{shown}: give a file path, e.g. sqlite:///ledger.db")
    if os.path.isdir(given):
        raise ConfigError(f"{shown}: {given} is a directory, not a ledger file")
    refuse_path_not_utf8(os.path.realpath(given), shown)  # before its directory or file is made
    return given, os.path.abspath(given)  # "x/../a.db" is a.db to SQLite, x or not


def is_sqlite_url(url: str) -> bool:
    return "://" not in url or url.split("://", 1)[0].split("+", 1)[0].lower() == "sqlite"


def _writable(path: str) -> bool:
    """Whether we may write ``path``, by its mode as well: root may write anything, but a
    file or directory whose mode grants nobody write access is a read-only copy to it too."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & 0o222)


# SQLite takes a lock request that fails with ENOLCK (NFS without its lock daemon) for a lock
# another process holds ("a random NFS retry error") and waits out its busy timeout before
# saying "database is locked": a minute for a writer, two for verify-lineage, and no wait
# gets the lock. A lock taken and dropped on a file of our own beside the ledger tells at
# once. Never on the ledger's own files: closing any descriptor of a file drops every POSIX
# lock this process holds on it, those of this process's SQLite connections included.
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}
_LOCKS_WORK: set[int] = set()  # the devices whose file system gave this process a lock


def refuse_without_locks(path: str, shown: str) -> None:
    """:class:`BackendUnavailable` at once where the file system of ``path`` (the ledger)
    gives no file locks, which SQLite needs. Asked once a process and device, through a
    file made and removed in the ledger's directory; not where this user may not write
    there (a reader of another's ledger: SQLite's own wait, then its error)."""
    directory = os.path.dirname(path)
    try:
        device = os.stat(directory).st_dev
    except OSError:
        return  # SQLite's own error says what is wrong
    if device in _LOCKS_WORK or not _writable(directory):
        return
    problem = _lock_problem(directory)
    if problem is None:
        _LOCKS_WORK.add(device)
        return
    raise BackendUnavailable(
        f"{shown}: opening the ledger failed: the file system of {directory} gives no file locks ({problem}), "
        "which SQLite needs to keep a ledger whole: keep the ledger on a local disk, have the file system's "
        "locks work (NFS: its lock daemon), or use a PostgreSQL server")


# The named probes of this process that exist now. A process that ends while one of its
# threads is inside a probe (``run`` giving up its wait while its shipping thread retries the
# ledger: the thread stops wherever it is at exit) left that probe's file beside the ledger
# until another probe of this user found its process gone; at exit, they are removed.
_LIVE_PROBES: set[str] = set()
_LIVE_PROBES_LOCK = threading.Lock()


def remove_live_probes() -> None:
    """Remove the probe files this process's threads have made and not removed yet: at exit,
    and by a process that leaves with ``os._exit`` while a thread may be inside a probe."""
    with _LIVE_PROBES_LOCK:
        names = list(_LIVE_PROBES)
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(name)


atexit.register(remove_live_probes)


def _lock_problem(directory: str) -> str | None:
    fd, name = _probe_file(directory)
    if fd is None:
        return None
    if name is not None:
        with _LIVE_PROBES_LOCK:
            _LIVE_PROBES.add(name)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except OSError as err:  # EAGAIN or EACCES: held by another process (it has locks, then)
        return os.strerror(err.errno) if err.errno in _NO_LOCKS else None
    finally:
        os.close(fd)
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
            with _LIVE_PROBES_LOCK:
                _LIVE_PROBES.discard(name)
            _remove_stale_probes(directory)


# A probe killed between making its file and removing it (SIGKILL from an engine or the OOM
# killer; on NFS, where the lock call is a call to the server, the window is long) left its
# file beside the ledger for good, and ``verify-lineage .`` failed on it. Where the file
# system makes files without a name (O_TMPFILE: local disks), nothing is left to remove.
# Elsewhere (NFS, FUSE) the name says which process on which host made it, and each named
# probe removes this user's probes whose process is gone (or, from another host or an older
# release, that are a day old: a probe lives for one lock call).
_PROBE = ".ll-lock-probe-"
_PROBE_NAME = re.compile(re.escape(_PROBE) + r"(?:(\d+)@([A-Za-z0-9._-]*)-)?[a-z0-9_]{8}")
_STALE_AFTER_S = 24 * 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", os.uname().nodename)[:64]


def _probe_file(directory: str) -> tuple[int | None, str | None]:
    """(a descriptor open for writing, the file's name or None where it has none)."""
    with contextlib.suppress(OSError, AttributeError):  # a file system or kernel without O_TMPFILE
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600), None
    try:
        return tempfile.mkstemp(prefix=f"{_PROBE}{os.getpid()}@{_host()}-", dir=directory)
    except OSError:
        return None, None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: another user's process, alive
        return False
    return False


def _remove_stale_probes(directory: str) -> None:
    host, uid, now = _host(), os.geteuid(), time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = _PROBE_NAME.fullmatch(entry.name) if entry.name.startswith(_PROBE) else None
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
            continue  # only a file this user's probe could have made
        pid, made_on = match.group(1), match.group(2)
        if (pid is not None and made_on == host and _gone(int(pid))) or now - info.st_mtime > _STALE_AFTER_S:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


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
    state: list[tuple[int, int, int] | None] = []
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


def read_only_uri(path: str, shown: str) -> tuple[str, str, str | None]:
    """How to read a ledger without writing it, WAL included: (SQLite URI, strategy, the
    private copy's directory or None; the caller removes it when done).

    A ledger we may write (its file, directory and any ``-shm``) is read in place with
    SQLite's ``mode=ro``, which takes part in the WAL's locking (other processes may
    append meanwhile): strategy ``"ro"``. One we may not write (by its modes: root too
    leaves a 0444 copy alone) is read with ``mode=ro&readonly_shm=1`` when its ``-shm``
    exists (the WAL index is then rebuilt in private memory, nothing is written; ``"ro"``);
    with no ``-shm`` but a ``-wal``, the file and its WAL are copied into a private 0700
    directory (``"copy"``); with no WAL at all, ``immutable=1`` loses nothing
    (``"immutable"``). (``immutable=1`` alone, as before, ignored the WAL and lost
    committed records.)
    """
    wal, shm = path + "-wal", path + "-shm"
    has_wal = os.path.exists(wal) and os.path.getsize(wal) > 0
    writable = _writable(path) and _writable(os.path.dirname(os.path.abspath(path)))
    if writable and (not os.path.exists(shm) or _writable(shm)):
        refuse_without_locks(os.path.abspath(path), shown)  # "ro" reads take part in the locking
        uri = _sqlite_uri(path, mode="ro")
        error = _probe(uri)
        if error is None or not _cannot_open_read_only(error):
            return uri, "ro", None  # a real error shows up, translated, on the first read
    elif os.path.exists(shm):
        uri = _sqlite_uri(path, mode="ro", readonly_shm="1")
        error = _probe(uri)
        if error is None or not _cannot_open_read_only(error):
            return uri, "ro", None
    if not has_wal:
        return _sqlite_uri(path, mode="ro", immutable="1"), "immutable", None
    directory = _private_copy(path, shown)
    return _sqlite_uri(os.path.join(directory, "ledger.db"), mode="ro"), "copy", directory



@contextlib.contextmanager
def _translated(what: str, shown: str):
    """:mod:`sqlite3` errors as the library's own, with the cause attached."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        raise database_error(what, shown, driver_text(err)) from err
    except sqlite3.Error as err:
        raise BackendError(f"{shown}: {what} failed: {driver_text(err)}") from err


class SQLiteFile:
    """What both SQLite classes (this reader, ``sqlite.SQLiteBackend``) say of their file."""

    _path: str
    _origin: str | None

    @property
    def identity(self) -> str:  # x.db, sqlite:///x.db and ./x.db from another directory: one file
        return "sqlite:///" + os.path.realpath(self._path)

    @property
    def trust_identity(self) -> str:  # the path as named: a link put there is not another ledger
        return "sqlite:///" + os.path.abspath(self._path)

    @property
    def origin(self) -> str:
        """``lineage-ledger:`` and 32 hex digits, made with the ledger and never changed."""
        assert self._origin is not None
        return self._origin


