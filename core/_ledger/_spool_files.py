"""How the spool's files are made, and taken by replay, safely: the checks that keep a spool
private to one user.

Split from :mod:`.spool` (which re-exports the public names) along this seam: everything
here is about one file or directory and whom it belongs to (private directories, the
:class:`Segment` a writer or a replayer holds locked, what replay may open and why it
refuses the rest); naming the ledger's directory, writing and replaying are built on it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from dataclasses import dataclass, field

from .._errors import SpoolError
from .._model import Record, StoredRecord
from .._terminal import printable

log = logging.getLogger("lineage_ledger")

_SUFFIX = ".log"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_PARENT_MODE = 0o700  # as the SQLite back-end makes the ledger's folder (docs/security.md)
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


def _make_private_dir(path: str, *, parents: bool = False) -> None:
    """Create ``path`` 0700 (its missing parent too with ``parents``, as the SQLite back-end makes
    the ledger's folder: ``.lineage`` came out 0755, or 0777 under umask 000, where ``run``, which
    opens the spool first, made it, and another user who may rename in it may move the spool
    away). An existing directory is left as it is here."""
    if parents:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=_PARENT_MODE, exist_ok=True)
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, _DIR_MODE, follow_symlinks=False)  # the umask may have taken bits away


def _check_private_dir(path: str) -> None:
    """``path`` must be a directory of this user, not a link; make it 0700 if others may enter."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise SpoolError(f"the spool directory {path} is not a directory (a link?); refusing to use it")
    if info.st_uid != os.geteuid():
        raise SpoolError(f"the spool directory {path} belongs to uid {info.st_uid}, not to this user "
                         f"(uid {os.geteuid()}); refusing to use it")
    if stat.S_IMODE(info.st_mode) != _DIR_MODE:
        log.warning("lineage-ledger: the spool directory %s was mode %04o; made it 0700 (a spool belongs "
                    "to one user)", printable(path), stat.S_IMODE(info.st_mode))
        os.chmod(path, _DIR_MODE, follow_symlinks=False)


@dataclass
class Segment:
    """A locked segment file; ``delete`` after the back-end has its records.

    ``records`` holds what replay parsed; ``fresh`` holds what this process wrote, as
    (record, id, bytes), so ``record()`` never builds the index keys: the worker does,
    in :meth:`stored`.
    """

    path: str
    fd: int
    records: list[StoredRecord] = field(default_factory=list)
    fresh: list[tuple[Record, str, bytes]] = field(default_factory=list)
    named: bool = False  # the directory entry that names it is on disk (see sync)

    def __len__(self) -> int:
        return len(self.records) + len(self.fresh)

    def stored(self) -> list[StoredRecord]:
        if self.fresh:
            self.records.extend(record.stored(body, record_id) for record, record_id, body in self.fresh)
            self.fresh.clear()
        return self.records

    def sync(self) -> None:
        """The segment's lines on disk, and, the first time, the name replay finds it by: a
        segment is renamed into place from its ``.new`` name, and without its directory
        synced a power cut could keep the lines under the old name (which replay does not
        read) or under none. One more ``fsync`` a segment, not a record."""
        os.fsync(self.fd)
        if not self.named:
            try:
                directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                return  # its directory was removed: nothing names it (the next rotation journals it again)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self.named = True

    def drop_shipped(self, count: int) -> None:
        """The first ``count`` records are in the ledger (shipped without a rotation): forget
        them, and empty the file once none is left. Lines journaled meanwhile keep the shipped
        ones in the file; a replay after a crash finds those in the ledger already."""
        del self.records[:count]
        if not len(self):
            try:
                os.ftruncate(self.fd, 0)  # a file of this process: no new file needed
            except OSError as err:
                log.warning("lineage-ledger: cannot empty spool segment %s: %s", printable(self.path), err)

    def delete(self) -> None:
        try:
            os.unlink(self.path)
        finally:
            os.close(self.fd)  # releases the lock only once the file is gone


class Refused(str):
    """A path replay left alone (never read, copied or deleted), and why."""

    reason: str

    def __new__(cls, path: str, reason: str) -> Refused:
        self = super().__new__(cls, path)
        self.reason = reason
        return self


def _refuse(path: str, reason: str) -> Refused:
    log.warning("lineage-ledger: left %s alone in the spool: %s", printable(path), printable(reason))
    return Refused(path, reason)


def _foreign(info: os.stat_result) -> str | None:
    """Why the file behind ``info`` is not a segment replay may take; None if it is."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
    if info.st_nlink != 1:
        return f"it has {info.st_nlink} hard links (a segment has one)"
    if info.st_mode & 0o022:  # a segment is made 0600: another user may have written these lines
        who = {0o020: "its group", 0o002: "others"}.get(info.st_mode & 0o022, "its group and others")
        return (f"writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}): another user could have written its "
                "lines; if they are yours, `chmod 600` it and ship again")
    return None


def _lock_unless_owned(fd: int) -> bool:
    """Take the exclusive lock of an open segment unless a process holds it exclusively (its
    live owner, or another replayer); whether it was taken.

    A reader (``spool status``, a verification's or a pre-run check's count of what waits)
    holds a shared lock while it reads, and so did every reader before this release: a
    segment whose only holders are readers belongs to no live process. Its lock is taken once
    they are done, instead of the segment being left as a live one's (``spool ship`` then
    said its records still waited, and exited 2)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted only while nobody holds it exclusively
    except BlockingIOError:
        return False
    # Readers only. Owners lock a segment before it is named, so none can come now; another
    # replayer may take it first, and then it is gone when this lock is granted (checked after).
    fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def _open_orphan(path: str, reported: list[str]) -> int | None:
    """A descriptor, locked, of the segment at ``path`` if replay may take it; None if not
    (a live owner holds it, it is gone, or it is refused: then it is added to ``reported``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except FileNotFoundError:
        return None  # shipped and removed by its owner meanwhile
    except OSError as err:
        if os.path.islink(path):
            reported.append(_refuse(path, "a symbolic link (a segment is a regular file)"))
        else:
            reported.append(_refuse(path, f"cannot open it: {err.strerror or err}"))
        return None
    try:
        info = os.fstat(fd)
        if info.st_nlink == 0:
            os.close(fd)  # another replayer shipped and removed it as it was opened: gone, not foreign
            return None
        why = _foreign(info)
        if why is not None:
            os.close(fd)
            reported.append(_refuse(path, why))
            return None
        if not _lock_unless_owned(fd):
            os.close(fd)
            return None  # a live process owns it
        opened = os.fstat(fd)
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino) or opened.st_nlink != 1:
            os.close(fd)  # shipped and removed (or replaced) meanwhile
            return None
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    return fd
