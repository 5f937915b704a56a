"""Where a crate carries the files and directories it copies (``data/...``), and the copying.

A copy's place is the path as shown (``display_path``), each part made safe (:func:`slug`),
so different names may ask for one place: ``twin a b.txt`` and ``twin a#b.txt`` both for
``data/twin-a-b.txt``; a file read from inside a directory for a place inside that
directory's copy (``out dir/a#b.txt``: ``data/out-dir/a-b.txt``, a file the directory never
held, which made its copy fail its manifest), or a directory for the place of a file of it
copied first (``data/refs/`` over ``data/refs/genome.fa``: the export failed with 'File
exists'). A place is free when no copy is at it, above it or below it; a version whose place
is taken goes beside it, its first part tagged with a digest of its recorded path
(``data/twin-a-b-1f2e3d4c.txt``, ``data/out-dir-1f2e3d4c/a-b.txt``), so no copy lands in,
on or around another.

Places are compared as a case-insensitive file system compares names (macOS's APFS and HFS+,
Windows and the SMB shares it serves): case folded and in canonical decomposition
(:func:`folded`), so ``Data.txt`` and ``data.txt``, or ``résumé`` composed and decomposed,
are one place, and the second goes beside the first. A directory holding two such names
cannot be copied whole (renaming one would change its manifest): it is described, not copied.

A directory is copied as a file is (:func:`_copy_file`): every entry judged and read through
one descriptor, opened below its directory's descriptor without following a link, so a FIFO,
a device or a link put there after the checks by name is found by its descriptor and the
directory is left out, never read until a writer comes or the disk is full.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import stat
import unicodedata

from blake3 import blake3

from .._files.hashing import hash_file
from ._select import FileVersion

__all__ = ["SKIPPED", "Places", "copy_version", "folded", "slug"]

SKIPPED = ".lineage"  # the ledger's own state: not in a directory's manifest, not copied
_UNSAFE = re.compile(r"[^\w.-]")  # \w: what str.isalnum() accepts, and "_" (every code point checked)


def slug(text: str) -> str:
    """``text`` with every character but letters, digits and ``-_.`` made ``-``, 80 at most;
    never ``.`` or ``..``: a recorded path is any text a writer of the ledger chose, and a
    ``..`` kept in a copy's place would climb out of the crate."""
    slug = _UNSAFE.sub("-", text[:80]) or "x"
    return slug.replace(".", "-") if slug in (".", "..") else slug


def folded(name: str) -> str:
    """``name`` as a case-insensitive file system compares it: canonical decomposition, case
    folded, decomposed again (Unicode's canonical caseless match). NTFS folds case only, APFS
    also ignores the normalization; full case folding (``ß`` as ``ss``) is stricter than
    either, so two names that one of them takes for one file never have two folds."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def _copyable_dir(directory: str, size: int) -> bool:
    """Whether ``directory`` holds real files and directories only (a link cannot go into a
    zip; a FIFO, socket or device makes the copy fail or block), no two names in one folder
    that a case-insensitive file system takes for one (:func:`folded`) and, its ``.lineage``
    left out, no more bytes than its record says. A directory is copied before its copy is
    hashed, so a record naming a large one (``/home``: any writer of a shared ledger may)
    would fill the disk first."""
    total = 0
    for folder, dirs, files in os.walk(directory):
        dirs[:] = [name for name in dirs if name != SKIPPED]
        names = dirs + [name for name in files if name != SKIPPED]
        if len({folded(name) for name in names}) != len(names):
            return False
        for name in names:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:
                return False
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
                if total > size:
                    return False
            elif not stat.S_ISDIR(info.st_mode):
                return False
    return total == size


def copy_version(version: FileVersion, crate_dir: str, relative: str) -> bool:
    """Copy the file (directory) into the crate if it still holds the recorded bytes
    (manifest); the copy is hashed, so one changed during the copy is left out, not
    described wrongly."""
    target = os.path.join(crate_dir, relative)
    if not _inside_crate(crate_dir, target):
        return False
    if version.is_dir:
        if (not os.path.isdir(version.path) or os.path.islink(version.path)
                or not _copyable_dir(version.path, version.size)):
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not _copy_tree(version.path, target, version.size):
            shutil.rmtree(target, ignore_errors=True)
            return False
    elif not _copy_file(version, target):
        return False
    if hash_file(target).blake3 != version.digest:
        shutil.rmtree(target) if version.is_dir else os.unlink(target)
        return False
    return True


def _copy_file(version: FileVersion, target: str) -> bool:
    """Copy a file that is still a regular file of the recorded size, judged and read through
    one descriptor: another user who may write its directory can put a FIFO there after a
    check by name (the copy then waited for a writer for ever) or a link to ``/dev/zero``
    (copied until the disk was full). At most one byte past the size is read: one more is a
    changed file, which the hash of the copy leaves out."""
    try:
        fd = os.open(version.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # no effect on a file's reads
    except OSError as err:
        if err.errno in _NOT_THE_FILE:
            return False  # gone, or no file there now: left out, as a changed one is
        raise  # there but unreadable (permission denied): the export fails and names it
    with os.fdopen(fd, "rb", buffering=0):  # closes the descriptor, whatever happens
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != version.size:
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as copy:
            _copy_at_most(fd, copy.fileno(), version.size + 1)
    return True


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ENTRY = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO opens at once, a link not at all


def _copy_tree(path: str, target: str, size: int) -> bool:
    """Copy the directory ``path`` to the new ``target`` through descriptors (see the module's
    docstring): False, with a part copy left for the caller to remove, as soon as an entry is
    not a regular file or directory, or the files hold more than ``size`` bytes."""
    try:
        top = os.open(path, _DIRECTORY)
    except OSError as err:
        if err.errno in _NOT_THE_FILE:
            return False  # gone, or a link or a file there now
        raise
    try:
        return _copy_level(top, target, [size])
    finally:
        os.close(top)


def _copy_level(directory: int, target: str, left: list[int]) -> bool:
    """Copy the entries of the open ``directory`` into the new directory ``target``; ``left``:
    the bytes its files may still hold."""
    os.mkdir(target)
    for name in sorted(os.listdir(directory)):
        if name == SKIPPED:
            continue
        try:
            entry = os.open(name, _ENTRY, dir_fd=directory)
        except OSError as err:
            if err.errno in _NOT_THE_FILE:
                return False  # gone, or a link (ELOOP) there now
            raise  # there but unreadable (permission denied): the export fails and names it
        try:
            info = os.fstat(entry)
            if stat.S_ISDIR(info.st_mode):
                if not _copy_level(entry, os.path.join(target, name), left):
                    return False
            elif not stat.S_ISREG(info.st_mode):
                return False  # a FIFO, socket or device put there after the checks
            else:
                left[0] -= info.st_size
                if left[0] < 0:
                    return False  # grown since the record: it no longer holds the recorded bytes
                sink = os.open(os.path.join(target, name),
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
                try:
                    _copy_at_most(entry, sink, info.st_size + 1)  # a byte more: changed, the hash says
                finally:
                    os.close(sink)
        finally:
            os.close(entry)
    return True


# What opening a recorded file's path says when the file is no longer there to copy.
_NOT_THE_FILE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.ENXIO})


def _copy_at_most(source: int, sink: int, limit: int) -> None:
    """Copy up to ``limit`` bytes from descriptor ``source`` to ``sink``: in the kernel where
    it can (sendfile, as shutil does on Linux), else through a buffer (macOS sends to sockets only)."""
    offset = 0
    try:
        while offset < limit and (sent := os.sendfile(sink, source, offset, min(limit - offset, 1 << 30))):
            offset += sent
        return
    except OSError as err:
        if offset or err.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP):
            raise
    while offset < limit and (chunk := os.pread(source, min(limit - offset, 1 << 20), offset)):
        os.write(sink, chunk)  # a regular file takes all of it
        offset += len(chunk)


def _inside_crate(crate_dir: str, target: str) -> bool:
    """Whether ``target``'s directory, as far as it exists, resolves inside the crate (a
    second guard: the slug already leaves no ``..``)."""
    crate = os.path.realpath(crate_dir)
    return os.path.commonpath([crate, os.path.realpath(os.path.dirname(target))]) == crate


def _data_path(shown: str) -> str:
    """Where a version is copied in the crate: the path as shown (``display_path``), slugged."""
    if os.path.isabs(shown):
        shown = shown.lstrip(os.sep)
    return "data/" + "/".join(slug(part) for part in shown.split(os.sep))


class Places:
    """The places under ``data/`` that copies took, kept in the crate builder's scratch database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # Each place as folded(): a place is taken by any name a case-insensitive system confuses with it.
        db.execute("CREATE TABLE copied (relative TEXT PRIMARY KEY) WITHOUT ROWID")

    def place(self, path: str, shown: str) -> str | None:
        """A free place for the version of ``path`` (shown as ``shown``); None if none is."""
        first = _data_path(shown)
        if self._free(first):
            return first
        beside = _beside(first, path)
        return beside if self._free(beside) else None

    def take(self, relative: str) -> None:
        self.db.execute("INSERT INTO copied VALUES (?)", (folded(relative),))

    def _free(self, relative: str) -> bool:
        """No copy at ``relative`` or a directory above it (``data/a`` for ``data/a/b``), and
        none below it (``data/a/b`` for ``data/a``: '/' + 1 is '0'), names compared folded."""
        relative = folded(relative)  # '/' is its own fold, and no mark combines across it
        parts = relative.split("/")
        at_or_above = ["/".join(parts[:end]) for end in range(2, len(parts) + 1)]
        found = self.db.execute(f"SELECT 1 FROM copied WHERE relative IN ({', '.join('?' * len(at_or_above))})"
                                " OR (relative > ? AND relative < ?) LIMIT 1",
                                (*at_or_above, relative + "/", relative + "0")).fetchone()
        return found is None


def _beside(relative: str, path: str) -> str:
    """``relative`` with its first part below ``data/`` tagged with a digest of ``path``
    (before a file's extension when it is the only part)."""
    parts = relative.split("/")
    tag = blake3(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    stem, extension = os.path.splitext(parts[1]) if len(parts) == 2 else (parts[1], "")
    parts[1] = f"{stem}-{tag}{extension}"
    return "/".join(parts)
