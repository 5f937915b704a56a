"""BLAKE3 digests of files, with a stat cache so unchanged files are not read again.

Small files are read plainly (an mmap costs more than it saves below about a megabyte);
large ones go through ``blake3.update_mmap`` with BLAKE3's own threads. A file is stat'ed
before and after hashing, and rehashed if it changed meanwhile.

The stat cache keys a digest by (path, size, mtime_ns, ctime_ns, inode). ctime is in the
key because ``touch -r`` can restore an edited file's mtime but nothing a user runs can
restore its ctime. Verification never uses the cache: it always rehashes.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat as stat_module
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from blake3 import blake3

from ._errors import ArtifactError
from ._model import Artifact

__all__ = ["Hasher", "StatCache", "hash_file", "normalize_path", "walk_files"]

MMAP_THRESHOLD = 4 << 20
_CHUNK = 1 << 20
_RETRIES = 3


def normalize_path(path: str | os.PathLike[str] | bytes) -> str:
    """Absolute, normalised, UTF-8-safe form of a path as records store it."""
    raw = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ArtifactError(shown, "the file name is not valid UTF-8; rename it to record it") from None
    return os.path.abspath(raw)


def _stat(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as err:
        raise ArtifactError(path, _describe(err)) from err
    if stat_module.S_ISDIR(st.st_mode):
        raise ArtifactError(path, "is a directory, not a file")
    if not stat_module.S_ISREG(st.st_mode):
        raise ArtifactError(path, "is not a regular file")
    return st


def _describe(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT:
        return "no such file"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EISDIR:
        return "is a directory, not a file"
    return err.strerror or str(err)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _digest(path: str, size: int) -> str:
    try:
        if size >= MMAP_THRESHOLD:
            hasher = blake3(max_threads=blake3.AUTO)
            hasher.update_mmap(path)
            return hasher.hexdigest()
        hasher = blake3()
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
        return hasher.hexdigest()
    except OSError as err:
        raise ArtifactError(path, _describe(err)) from err


def hash_file(path: str | os.PathLike[str]) -> Artifact:
    """Hash one file now, without any cache."""
    return _hash_stable(normalize_path(path))[0]


def _hash_stable(path: str) -> tuple[Artifact, tuple[int, int, int, int]]:
    for _ in range(_RETRIES):
        before = _stat(path)
        digest = _digest(path, before.st_size)
        after = _stat(path)
        if _signature(before) == _signature(after):
            return Artifact(path, digest, after.st_size), _signature(after)
    raise ArtifactError(path, "the file kept changing while it was hashed")


def walk_files(root: str) -> Iterator[str]:
    """Regular files below ``root``, sorted; symlinks to files are followed, symlinks to
    directories and dangling symlinks are skipped.

    lineage-ledger's own ``.lineage`` directories (ledger, spool, stat cache) are skipped:
    they change while being walked and are not workflow data.
    """
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name, reverse=True)
        except OSError as err:
            raise ArtifactError(directory, _describe(err)) from err
        files = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != ".lineage":
                    stack.append(entry.path)
            elif entry.is_file(follow_symlinks=True):
                files.append(entry.path)
            # Links to directories (possible cycles) and dangling links are not files: skipped.
        yield from reversed(files)


class StatCache:
    """Digests by file signature, kept in a small SQLite file (stdlib ``sqlite3``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()
        self._dirty: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        try:
            self._entries = self._load()
        except sqlite3.DatabaseError:
            # A cache is disposable: a damaged one is set aside and rebuilt, never trusted.
            os.replace(path, path + ".damaged")
            self._entries = self._load()

    def _load(self) -> dict[str, tuple[tuple[int, int, int, int], str]]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS stat_cache (path TEXT PRIMARY KEY, size INTEGER,"
                    " mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, digest TEXT)"
                )
                rows = db.execute("SELECT path, size, mtime_ns, ctime_ns, ino, digest FROM stat_cache")
                return {r[0]: ((r[1], r[2], r[3], r[4]), r[5]) for r in rows}
        finally:
            db.close()

    def get(self, path: str, signature: tuple[int, int, int, int]) -> str | None:
        entry = self._entries.get(path)
        return entry[1] if entry is not None and entry[0] == signature else None

    def put(self, path: str, signature: tuple[int, int, int, int], digest: str) -> None:
        with self._lock:
            self._entries[path] = self._dirty[path] = (signature, digest)

    def save(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        with sqlite3.connect(self.path, timeout=30) as db:
            db.executemany(
                "INSERT OR REPLACE INTO stat_cache VALUES (?, ?, ?, ?, ?, ?)",
                [(p, *sig, digest) for p, (sig, digest) in dirty.items()],
            )
        db.close()


class Hasher:
    """Hashes files, consulting a :class:`StatCache` unless ``rehash`` is set."""

    def __init__(self, cache: StatCache | None = None, *, rehash: bool = False, threads: int = 4):
        self.cache = cache
        self.rehash = rehash
        self.threads = threads

    def hash(self, path: str | os.PathLike[str]) -> Artifact:
        path = normalize_path(path)
        if self.cache is not None and not self.rehash:
            st = _stat(path)
            cached = self.cache.get(path, _signature(st))
            if cached is not None:
                return Artifact(path, cached, st.st_size)
        artifact, signature = _hash_stable(path)
        if self.cache is not None:
            self.cache.put(path, signature, artifact.blake3)
        return artifact

    def _cache_hits(self, ordered: list[str], results: dict[str, Artifact]) -> list[str]:
        """Fill ``results`` from the cache; return the paths that must be read.

        The hot loop of re-checking a large unchanged tree, so it stays flat: one stat
        per file, a dict look-up, and no re-validation of digests the cache wrote.
        """
        assert self.cache is not None
        entries = self.cache._entries
        misses: list[str] = []
        stat, is_regular = os.stat, stat_module.S_ISREG
        for path in ordered:
            try:
                st = stat(path)
            except OSError:
                st = _stat(path)  # raises the ArtifactError that names the problem
            if not is_regular(st.st_mode):
                _stat(path)
            entry = entries.get(path)
            if entry is not None and entry[0] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
                results[path] = Artifact._trusted(path, entry[1], st.st_size)
            else:
                misses.append(path)
        return misses

    def hash_many(
        self, paths: Iterable[str], on_done: Callable[[Artifact], None] | None = None
    ) -> list[Artifact]:
        """Hash several files, misses in parallel; results keep the order of ``paths``."""
        ordered = [normalize_path(p) for p in paths]
        results: dict[str, Artifact] = {}
        if self.cache is not None and not self.rehash:
            misses = self._cache_hits(ordered, results)
            if on_done:
                for artifact in results.values():
                    on_done(artifact)
        else:
            misses = ordered
        if misses:
            with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
                hasher = self.hash if self.cache is not None else hash_file
                for artifact in pool.map(hasher, misses):
                    results[artifact.path] = artifact
                    if on_done:
                        on_done(artifact)
        if self.cache is not None:
            self.cache.save()
        return [results[p] for p in ordered]
