"""The stat cache: file digests by (path, size, mtime_ns, ctime_ns, inode), so that an
unchanged file costs a stat instead of a read. See :mod:`.hashing` for how it is used.

A cache that another user could write would let them choose the digests the account
records for its files (any digest, keyed by a path and stat signature they can read). So
the cache file is created 0600, and one that is not this user's own regular file, or that
others could write, is neither read nor written: its entries are kept in memory for this
process only, after one warning. Since the file is checked and then opened by name, the
same holds where another user controls the folder it is kept in or any folder above
(:func:`.others_control`: ``hash --cache`` keeps it in the project's ``.lineage/``, which a
shared lab folder lets others swap or plant as a link), checked before that folder is made.
The cache in the state root (:func:`state_cache`) is refused where another user controls
the root (as ``TrustStore`` refuses to keep trusted state there), and files are then hashed
without it: a cache only saves time, so going without one is slower but never wrong, where
refusing would stop a workflow.

The entries are one snapshot in fixed binary columns (see :func:`_encode`): reading it
builds strings, integers and tuples, nothing else. It used to be marshal, which can build
code objects; a marshal snapshot left by an older version is ignored and rebuilt.
"""

from __future__ import annotations

import logging
import operator
import os
import sqlite3
import stat
import struct
import sys
import threading
from array import array
from itertools import chain
from urllib.parse import quote

__all__ = ["StatCache", "not_a_cache", "state_cache"]

log = logging.getLogger("lineage_ledger")

# A cache entry: (path, size, mtime_ns, ctime_ns, inode, digest).
_CacheRow = tuple[str, int, int, int, int, str]

# Snapshot: magic, entry count n and text length, then n sizes and n inodes (unsigned), n mtimes and n
# ctimes (signed), 8 bytes each, little-endian; then UTF-8 text: the n paths, then the n
# digests, NUL-separated (no path holds a NUL). The magic's first byte is no marshal type
# code, so an older version reading it ignores it too.
_MAGIC = b"\x00LLstat1"
_HEADER = struct.Struct("<8sQQ")
_WIDTH = array("q").itemsize
_SWAP = sys.byteorder == "big"
_size, _mtime, _ctime, _ino, _digest = (operator.itemgetter(i) for i in (1, 2, 3, 4, 5))
_first = operator.itemgetter(0)

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Once per process: a workflow opens a cache per task, and one line says it all."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _encode(entries: dict[str, _CacheRow]) -> bytes:
    """The snapshot of ``entries`` (keyed by their own path), column by column: each column
    is one C-level pass. Read back about as fast as marshal (10,000 to 1M entries: +0 to
    +12%); written at 1.5-2.5x marshal's time, which only a pass that hashed something pays."""
    values = entries.values()
    unsigned = array("Q", map(_size, values))
    unsigned.extend(map(_ino, values))
    signed = array("q", map(_mtime, values))
    signed.extend(map(_ctime, values))
    if _SWAP:
        unsigned.byteswap()
        signed.byteswap()
    # surrogatepass: any str a caller put round-trips (normalize_path lets only UTF-8 in).
    text = "\0".join(chain(entries, map(_digest, values))).encode("utf-8", "surrogatepass")
    return b"".join((_HEADER.pack(_MAGIC, len(entries), len(text)), unsigned, signed, text))


def _decode(data: object) -> dict[str, _CacheRow]:
    """The snapshot's entries, or none if it is not one :func:`_encode` wrote whole."""
    if not isinstance(data, bytes) or len(data) < _HEADER.size or not data.startswith(_MAGIC):
        return {}
    _, count, length = _HEADER.unpack_from(data)
    numbers = _HEADER.size + 4 * _WIDTH * count
    if count == 0 or len(data) != numbers + length:  # cut short or run on: a digest could be too
        return {}
    view = memoryview(data)
    unsigned, signed = array("Q"), array("q")
    unsigned.frombytes(view[_HEADER.size : _HEADER.size + 2 * _WIDTH * count])
    signed.frombytes(view[_HEADER.size + 2 * _WIDTH * count : numbers])
    if _SWAP:
        unsigned.byteswap()
        signed.byteswap()
    try:
        fields = str(view[numbers:], "utf-8", "surrogatepass").split("\0")
    except UnicodeDecodeError:
        return {}
    if len(fields) != 2 * count:  # cut short, or not what _encode wrote
        return {}
    paths = fields[:count]
    rows = zip(paths, unsigned[:count], signed[:count], signed[count:], unsigned[count:], fields[count:],
               strict=True)
    return dict(zip(paths, rows, strict=True))


def _untrusted(path: str) -> str | None:
    """Why the cache file, or a journal SQLite would roll back into it, may hold what another
    user wrote (None if it cannot). Checked by name: ``StatCache`` checks first that no other
    user controls the folder it is in, where nobody else could swap it after this check."""
    uid = os.getuid()
    for name in (path, path + "-journal", path + "-wal", path + "-shm"):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            return f"{name} is not a regular file"
        if st.st_uid != uid:
            return f"{name} belongs to uid {st.st_uid}"
        if st.st_mode & 0o022:
            return f"{name} is writable by other users"
    return None


_SQLITE_HEADER = b"SQLite format 3\x00"
_CACHE_TABLES = {"stat_snapshot", "stat_cache"}  # the snapshot, and the rows of older versions


def not_a_cache(path: str) -> str | None:
    """Why the existing file ``path`` is no stat cache (None if it is one, may be one or is
    not there): a file that does not start as an SQLite database does, or a database that
    holds tables of its own (a ledger). ``hash --cache PATH`` refuses such a PATH; a cache of
    its own that is damaged past its header (zeros after a crash) is set aside and rebuilt
    by :class:`StatCache`, which refuses only the second kind."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError:
        return None  # not there (made anew), or said when it is opened
    if header and header != _SQLITE_HEADER:
        return "is not a stat cache (not an SQLite database)"
    return _foreign_database(path) if header else None


def _foreign_database(path: str) -> str | None:
    """Why ``path``, an SQLite database, is not a stat cache: tables of its own."""
    try:
        # Read-only, by URI: nothing is created or written; a '?' or '%' in the name is quoted.
        db = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=30)
        try:
            names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error:
        return None  # not there, or damaged: the cache is made, or set aside and rebuilt
    others = sorted(names - _CACHE_TABLES)
    if others:
        return f"is not a stat cache (an SQLite database with tables of its own: {', '.join(others[:3])})"
    return None


def _create_private(path: str) -> None:
    """Create the cache file 0600 before SQLite opens it (SQLite would make it 0644 under the
    usual umask, and makes its journals with the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class StatCache:
    """Digests by file signature, kept in a small SQLite file (stdlib ``sqlite3``).

    The entries are stored as one snapshot (table ``stat_snapshot``, one row with a
    generation counter): loading it costs a third of reading one SQL row per file, and
    loading is most of a warm pass over a large tree. Saving merges under SQLite's write
    lock: if another process saved since this one loaded, its stored snapshot is the base
    and only this process's new entries go over it, so concurrent savers keep each other's
    entries. A snapshot that will not load (damaged, or an older version's) is ignored and
    rebuilt. Caches from before the snapshot (rows in ``stat_cache``) are read once and
    carried over on the next save. A file another user could have written is not used at
    all (``refused`` says why).
    """

    def __init__(self, path: str) -> None:
        from .._environment import checked_makedirs

        self.path = path
        self._lock = threading.Lock()
        self._dirty: dict[str, _CacheRow] = {}
        self._generation = 0
        self._entries: dict[str, _CacheRow] = {}
        # The file is checked, then opened, by name: that holds only in a folder no other user
        # controls (``hash --cache`` keeps it in the project's .lineage/, which may be shared).
        # 0o755, as before: .lineage/ also holds the ledger, which others may be meant to read.
        folder = os.path.dirname(os.path.abspath(path))
        self.refused = checked_makedirs(folder, 0o755)
        if self.refused is not None:
            _warn_once(f"not using the stat cache {path}: {self.refused}, so another user could swap it for one "
                       "with digests of their choosing; files are hashed without it (keep it in a folder only "
                       "this user can write)")
            return
        self.refused = _untrusted(path)
        if self.refused is not None:
            _warn_once(f"not using the stat cache {path}: {self.refused}, so it may hold digests another user "
                       "chose; files are hashed without it (remove it to cache again)")
            return
        self.refused = _foreign_database(path)
        if self.refused is not None:
            # ``--cache .lineage/ledger.db``, a slip: a database of other tables is never one
            # to add the cache's table to, nor a damaged cache to move aside.
            _warn_once(f"not using the stat cache {path}: it {self.refused}; files are hashed without it "
                       "(give a new file, or the cache's own)")
            return
        try:
            if os.lstat(path).st_mode & 0o077:
                os.chmod(path, 0o600)  # read access given away (older versions made it 0644)
        except FileNotFoundError:
            pass
        try:
            self._entries = self._load()
        except sqlite3.DatabaseError:
            # A cache is disposable: a damaged one is set aside and rebuilt, never trusted.
            os.replace(path, path + ".damaged")
            self._entries = self._load()

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        _create_private(path)
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS stat_snapshot (id INTEGER PRIMARY KEY CHECK (id = 0),"
                   " generation INTEGER NOT NULL, data BLOB NOT NULL)")
        return db

    def _load(self) -> dict[str, _CacheRow]:
        db = self._connect(self.path)
        try:
            row = db.execute("SELECT generation, data FROM stat_snapshot WHERE id = 0").fetchone()
            if row is not None:
                self._generation = int(row[0])
                return _decode(row[1])
            legacy = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'stat_cache'"
            ).fetchone()
            if legacy is None:
                return {}
            rows = db.execute("SELECT path, size, mtime_ns, ctime_ns, ino, digest FROM stat_cache").fetchall()
            entries = dict(zip(map(_first, rows), rows, strict=True))
            self._dirty.update(entries)  # carried into a snapshot on the next save
            return entries
        finally:
            db.close()

    def get(self, path: str, signature: tuple[int, int, int, int]) -> str | None:
        entry = self._entries.get(path)
        return entry[5] if entry is not None and entry[1:5] == signature else None

    def put(self, path: str, signature: tuple[int, int, int, int], digest: str) -> None:
        with self._lock:
            self._entries[path] = self._dirty[path] = (path, *signature, digest)

    def save(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            entries = self._entries
        if not dirty or self.refused is not None:
            return
        db = self._connect(self.path)
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT generation, data FROM stat_snapshot WHERE id = 0").fetchone()
            generation = 0 if row is None else int(row[0])
            if generation != self._generation:
                # Another process saved since we loaded: start from its entries.
                entries = _decode(row[1]) if row is not None else {}
                entries.update(dirty)
            db.execute(
                "INSERT OR REPLACE INTO stat_snapshot (id, generation, data) VALUES (0, ?, ?)",
                (generation + 1, _encode(entries)),
            )
            db.execute("COMMIT")
            self._generation = generation + 1
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()


def state_cache() -> StatCache | None:
    """The stat cache in this user's state root (``statcache.db``), or None, after one
    warning, where that root cannot be kept from other users (:func:`.others_control`, the
    check ``TrustStore`` makes) or made: the caller then hashes every file."""
    from .._environment import checked_makedirs, state_root

    root = state_root()
    try:
        unsafe = checked_makedirs(root)  # checked before it is made: nothing left in another user's tree
    except OSError as err:
        _warn_once(f"not caching file digests in {root}: {err.strerror}; every file is read instead")
        return None
    if unsafe is not None:
        _warn_once(f"not caching file digests in {root}: {unsafe}, so another user could replace them with "
                   "digests of their choosing; every file is read instead (set LINEAGE_STATE_DIR to a private "
                   "directory)")
        return None
    return StatCache(os.path.join(root, "statcache.db"))
