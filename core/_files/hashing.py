"""BLAKE3 digests of files, with a stat cache so unchanged files are not read again.

Small files are read plainly; large ones in blocks that BLAKE3 hashes in its own threads
while the next is read, never through an mmap, which another user's truncation turns into a
SIGBUS (see :mod:`._digest`). A file is stat'ed before and after hashing, and rehashed if it
changed meanwhile.

The stat cache keys a digest by (path, size, mtime_ns, ctime_ns, inode). ctime is in the
key because ``touch -r`` can restore an edited file's mtime but nothing a user runs can
restore its ctime. Verification never uses the cache: it always rehashes. The cache file
and the checks that keep other users out of it are in :mod:`.statcache`.

A directory is hashed as its manifest (:mod:`._manifest`): :meth:`Hasher.hash` and
:func:`hash_file` return a :class:`DirectoryArtifact` for one, so every caller that hashes
"a path" records a directory without knowing it is one.
"""

from __future__ import annotations

import os
import stat as stat_module
import time
from collections.abc import Callable, Collection, Iterable, Iterator

from .._errors import ArtifactError, describe_os_error
from .._model import Artifact, DirectoryArtifact
from ._digest import file_digest, signature
from .statcache import StatCache, state_cache

__all__ = [
    "Hasher", "StatCache", "cached_hasher", "hash_file", "hash_for_record", "lookup_paths", "normalize_path",
    "real_path", "resolving_keeps", "walk_files",
]

_RETRIES = 3


def normalize_path(path: str | os.PathLike[str] | bytes) -> str:
    """Absolute, normalised, UTF-8-safe form of a path as records store it."""
    if (
        type(path) is str and path.isascii() and path[:1] == "/"
        and "//" not in path and "/." not in path and path[-1:] != "/"
    ):
        # Already what abspath would return (no empty, "." or ".." component), and ASCII
        # is valid UTF-8: the common case of paths from walk_files, without the rework.
        return path
    raw = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    # The absolute path is checked, not the name as given: a relative name in a working
    # directory whose name is not UTF-8 is not one either (run -o out ran the command, then
    # failed to record it as produced).
    absolute = os.path.abspath(raw)
    try:
        absolute.encode("utf-8")
    except UnicodeEncodeError:
        shown = absolute.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ArtifactError(shown, "the file name is not valid UTF-8; rename it to record it") from None
    return absolute


def _resolved(path: str) -> str:
    """``os.path.realpath`` of an absolute, normalised path. The kernel first resolves it in
    one walk (a path-only descriptor, read back through ``/proc``): 6 us instead of 17 for a
    path five directories deep, which a check of 10,000 files pays for each. Where it gives
    the path back unchanged, no component was a symbolic link and ``realpath`` would give it
    back too. Anything else (a link, a missing tail, no ``/proc``, a name the kernel spells
    otherwise, as a case-insensitive file system may) is ``realpath``'s to answer."""
    try:
        fd = os.open(path, _PATH_ONLY)
    except (OSError, ValueError):
        return os.path.realpath(path)
    try:
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    finally:
        os.close(fd)
    return path if resolved == path else os.path.realpath(path)


_PATH_ONLY = getattr(os, "O_PATH", 0) | os.O_CLOEXEC
if not hasattr(os, "O_PATH") or not os.path.isdir("/proc/self/fd"):  # not Linux
    _resolved = os.path.realpath  # type: ignore[assignment]  # noqa: F811


def real_path(path: str | os.PathLike[str] | bytes) -> str:
    """The path records key an artifact by: absolute, with every symbolic link resolved
    (what exists of it; a missing tail is kept as given)."""
    return _resolved(normalize_path(path))


def resolving_keeps(paths: Iterable[str], plain: Collection[str] = ()) -> set[str]:
    """Of absolute, normalised ``paths``, those that :func:`real_path` gives back unchanged,
    found a directory at a time: a path whose directory resolves to itself, and which is not
    a symbolic link itself (one ``lstat``) or is not there (a missing tail is kept), is its
    own real path. The 10,000 files of one directory cost one resolution and 10,000 lstats
    instead of 10,000 resolutions (an open, a readlink and a close each), and none where
    ``plain`` holds the path: a directory's listing said it is a regular file, not a link
    (:func:`~.manifest.walk_tree`; 3.4 us an ``lstat`` here, a tenth of the look-ups' own
    work). Paths left out may still be unchanged: :func:`lookup_paths` answers for them."""
    kept: set[str] = set()
    parents: dict[str, bool] = {}
    for path in paths:
        parent, _, name = path.rpartition("/")
        if not name or name in (".", ".."):
            continue
        parent = parent or "/"
        real = parents.get(parent)
        if real is None:
            try:
                real = _resolved(parent) == parent
            except ValueError:  # a NUL byte: left to lookup_paths, which says so
                real = False
            parents[parent] = real
        if not real:
            continue
        if path in plain:
            kept.add(path)
            continue
        try:
            if stat_module.S_ISLNK(os.lstat(path).st_mode):
                continue
        except FileNotFoundError:
            pass  # realpath keeps a missing tail as given
        except (OSError, ValueError):  # ValueError: a NUL byte
            continue
        kept.add(path)
    return kept


def lookup_paths(path: str | os.PathLike[str] | bytes) -> list[str]:
    """Where the ledger may know ``path`` from: as given (made absolute, as records of old
    and the aliases of symlinked paths name it), then resolved, where that differs."""
    given = normalize_path(path)
    real = _resolved(given)
    return [given] if real == given else [given, real]


def _stat(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as err:
        raise ArtifactError(path, describe_os_error(err)) from err
    if stat_module.S_ISDIR(st.st_mode):
        raise ArtifactError(path, "is a directory, not a file")
    if not stat_module.S_ISREG(st.st_mode):
        raise ArtifactError(path, "is not a regular file")
    return st


_signature = signature


def _digest(path: str, size: int) -> str:
    try:
        return file_digest(path, size)
    except OSError as err:
        raise ArtifactError(path, describe_os_error(err)) from err


def hash_file(path: str | os.PathLike[str]) -> Artifact:
    """Hash one file (or directory: a :class:`DirectoryArtifact`) now, without any cache."""
    path = normalize_path(path)
    try:
        first = os.stat(path)
    except OSError:
        first = None  # _stat says why
    if first is not None and stat_module.S_ISDIR(first.st_mode):
        return _hash_directory(path, Hasher())
    return _hash_stable(path, first)[0]


def _hash_directory(path: str, hasher: Hasher) -> DirectoryArtifact:
    from .manifest import scan_directory

    manifest = scan_directory(path, hasher)
    return DirectoryArtifact(path, manifest.digest, manifest.size, manifest)


def _hash_stable(path: str, first: os.stat_result | None = None) -> tuple[Artifact, tuple[int, int, int, int]]:
    """The file's digest, and its stat signature, unchanged from before reading it to after
    (``first``: a stat of it just taken, which spares the first attempt one)."""
    for attempt in range(_RETRIES):
        before = first if attempt == 0 and first is not None and stat_module.S_ISREG(first.st_mode) else _stat(path)
        digest = _digest(path, before.st_size)
        after = _stat(path)
        if _signature(before) == _signature(after):
            # Built without Artifact's checks (a tenth of hashing a 4 KiB file): the digest is
            # BLAKE3's own hex, the path one that os.stat took (a string without NUL).
            artifact = _new(Artifact)
            _set_path(artifact, path)
            _set_digest(artifact, digest)
            _set_size(artifact, after.st_size)
            return artifact, _signature(after)
    raise ArtifactError(path, "the file kept changing while it was hashed")


def walk_files(root: str, on_skip: Callable[[str, str], None] | None = None) -> Iterator[str]:
    """Regular files below ``root``, sorted; symlinks to files are followed, symlinks to
    directories and dangling symlinks are skipped.

    lineage-ledger's own ``.lineage`` directories (ledger, spool, stat cache) are skipped:
    they change while being walked and are not workflow data. An entry that cannot be read
    (a symbolic link loop, a directory without permission) raises :class:`ArtifactError`,
    or with ``on_skip`` is reported to it and skipped (see :func:`._manifest.walk_tree`).
    """
    from .manifest import walk_tree

    return walk_tree(root, on_skip=on_skip)


# Slot descriptors: setting them directly skips the frozen dataclass's __setattr__ check
# at half the cost of object.__setattr__ (one per file on a warm pass).
_set_path, _set_digest, _set_size = (vars(Artifact)[name].__set__ for name in ("path", "blake3", "size"))
_new = object.__new__


# Threads pay only where reading a file waits on storage (a network file system, a cold
# disk): each thread hands the interpreter lock over at every system call, and files read
# from the page cache then cost several times more in threads than in one (10,000 files of
# 4 KiB on 2 cores: 0.28 s in the calling thread, 0.85 s through a pool of one thread, 1.0-1.3
# s through four, most of it in futex calls). Hashing goes on in the calling thread until a
# file of under a megabyte takes longer than this (larger ones take long to hash, in
# BLAKE3's own threads), then in ``threads`` threads.
_SLOW_FILE = 0.002
_SLOW_FILE_BYTES = 1 << 20


class Hasher:
    """Hashes files, consulting a :class:`StatCache` unless ``rehash`` is set; several files
    at once in ``threads`` threads where storage is slow (see :data:`_SLOW_FILE`)."""

    def __init__(self, cache: StatCache | None = None, *, rehash: bool = False, threads: int = 4):
        self.cache = cache
        self.rehash = rehash
        self.threads = threads

    def hash(self, path: str | os.PathLike[str]) -> Artifact:
        """A file's digest, or a directory's (a :class:`DirectoryArtifact`, its files
        through the same cache)."""
        path = normalize_path(path)
        if os.path.isdir(path):
            return _hash_directory(path, self)
        if self.cache is not None and not self.rehash:
            st = _stat(path)
            cached = self.cache.get(path, _signature(st))
            if cached is not None:
                return Artifact(path, cached, st.st_size)
        artifact, signature = _hash_stable(path)
        if self.cache is not None:
            self.cache.put(path, signature, artifact.blake3)
        return artifact

    def _cache_hits(self, ordered: list[str], results: list[Artifact | None]) -> list[int]:
        """Fill ``results`` from the cache; return the positions of the files to read.

        The hot loop of re-checking a large unchanged tree, so it stays flat: one stat
        per file, a dict look-up, and no re-validation of digests the cache wrote.
        """
        assert self.cache is not None
        get = self.cache._entries.get
        misses: list[int] = []
        stat, new = os.stat, object.__new__
        regular, file_type = stat_module.S_IFREG, stat_module.S_IFMT(0o170000)
        for index, path in enumerate(ordered):
            try:
                st = stat(path)
            except OSError:
                st = _stat(path)  # raises the ArtifactError that names the problem
            if st.st_mode & file_type != regular:
                if stat_module.S_ISDIR(st.st_mode):
                    misses.append(index)  # a directory: hashed as its manifest by self.hash
                    continue
                _stat(path)
            entry = get(path)
            if (
                entry is not None and entry[1] == st.st_size and entry[2] == st.st_mtime_ns
                and entry[3] == st.st_ctime_ns and entry[4] == st.st_ino
            ):
                artifact = new(Artifact)
                _set_path(artifact, path)
                _set_digest(artifact, entry[5])
                _set_size(artifact, entry[1])
                results[index] = artifact
            else:
                misses.append(index)
        return misses

    def hash_many(
        self, paths: Iterable[str], on_done: Callable[[Artifact], None] | None = None
    ) -> list[Artifact]:
        """Hash several files (in threads only where storage is slow: see :data:`_SLOW_FILE`);
        results keep the order of ``paths``."""
        ordered = list(map(normalize_path, paths))
        results: list[Artifact | None] = [None] * len(ordered)
        if self.cache is not None and not self.rehash:
            misses = self._cache_hits(ordered, results)
            if on_done:
                for artifact in results:
                    if artifact is not None:
                        on_done(artifact)
        else:
            misses = list(range(len(ordered)))
        hasher = self.hash
        done = 0
        # In this thread while the files come fast (see _SLOW_FILE); from the first slow one
        # on, in threads (where there may be more than one).
        clock, threaded = time.perf_counter, self.threads > 1
        for index in misses:
            started = clock()
            results[index] = artifact = hasher(ordered[index])
            done += 1
            if on_done:
                on_done(artifact)
            if threaded and clock() - started > _SLOW_FILE and (artifact.size or 0) < _SLOW_FILE_BYTES:
                break  # a small file that took long: waiting on storage
        if done < len(misses):
            rest = misses[done:]
            # Imported here: threads are for storage that makes a reader wait, and a
            # process that hashes a few files (a CLI start) need not load the pool.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
                for index, artifact in zip(rest, pool.map(hasher, [ordered[i] for i in rest]), strict=True):
                    results[index] = artifact
                    if on_done:
                        on_done(artifact)
        if self.cache is not None:
            self.cache.save()
        return results  # type: ignore[return-value]  # every position is filled by now


def cached_hasher() -> Hasher:
    """A hasher whose stat cache lives in this user's state directory (private, outside the
    working tree): what pre-run checks and captures hash directories with, so an unchanged
    large directory costs a stat per file. Where another user controls that directory, the
    hasher has no cache and reads every file (:func:`.statcache.state_cache`)."""
    return Hasher(state_cache())  # None, after one warning, where other users control the root


def hash_for_record(path: str):
    """A file's digest read now, or a directory's through :func:`cached_hasher` (what
    `lineage-ledger run` records its -i and -o paths with)."""
    normal = normalize_path(path)
    return cached_hasher().hash(normal) if os.path.isdir(normal) else hash_file(normal)
