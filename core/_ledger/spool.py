"""The durable local journal behind write-behind recording.

Each recording process appends to its own segment files in the ledger's spool
directory, one line per record: ``<record id> <canonical bytes>\\n``. The writer holds an
exclusive ``flock`` on every segment it owns until the back-end has acknowledged it, so
a segment whose lock can be taken belongs to a dead process: that is what replay ships.
A torn last line (a kill in the middle of a write) or a line whose bytes do not hash to
its id is moved to ``quarantine/``, never dropped silently.

The spool belongs to one user: its directories are 0700 and its files 0600 whatever the
umask. Replay opens segments with ``O_NOFOLLOW`` and takes only regular files of this
user with one link that no other user may write (checked with ``fstat`` on the open
descriptor, not before opening);
it never follows a link in ``quarantine/``, whose files it creates with ``O_EXCL``.
Anything else is reported (a warning naming the path and why, and in the list that
:func:`take_orphans` returns) and left alone: never read, copied or deleted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import uuid

from blake3 import blake3

from .._errors import SpoolError
from .._model import Record, StoredRecord
from .._terminal import printable

# The file-level checks and replay live in two private modules (see their docstrings for
# the seam); this module names the ledger's spool directory and writes to it, and re-exports
# the public names so that ``from .spool import ...`` keeps working.
from ._spool_files import (
    _DIR_MODE,
    _FILE_MODE,
    _NOFOLLOW,
    _SUFFIX,
    Refused,
    Segment,
    _check_private_dir,
    _make_private_dir,
    _open_orphan,
)
from ._spool_replay import describe_quarantine, each_orphan, take_orphans

__all__ = [
    "Refused", "Segment", "SpoolWriter", "describe_quarantine", "each_orphan", "earlier_names",
    "note_earlier_name", "spool_directory", "spool_path", "take_orphans",
]

log = logging.getLogger("lineage_ledger")


def _keyed(root: str, identity: str) -> str:
    return os.path.join(os.path.abspath(root), blake3(identity.encode("utf-8")).hexdigest()[:16])


# A ledger's name can change between releases: a PostgreSQL ledger was named by its whole URL,
# connection-tuning keys (``connect_timeout``...) included, until they were left out. The
# back-end that works the name out tells this module the earlier name of the URL it was given,
# and the spool directory of that name is drained into the current one (below), so records a
# crash left there under an earlier release are replayed, not stranded.
_EARLIER: dict[str, frozenset[str]] = {}
_EARLIER_LOCK = threading.Lock()


def note_earlier_name(identity: str, earlier: str) -> None:
    """Say that the ledger named ``identity`` was named ``earlier`` by an earlier release
    (for the URL this process was given): its spool directory is drained into this name's."""
    if earlier == identity or earlier in _EARLIER.get(identity, ()):
        return
    with _EARLIER_LOCK:
        _EARLIER[identity] = _EARLIER.get(identity, frozenset()) | {earlier}


def earlier_names(identity: str) -> frozenset[str]:
    """The earlier names of ``identity`` this process was told of (see :func:`note_earlier_name`)."""
    return _EARLIER.get(identity, frozenset())


def spool_path(root: str, identity: str) -> str:
    """The spool directory of the ledger named ``identity`` (not created). Segments that dead
    processes left under an earlier name of it (:func:`note_earlier_name`) are moved into it
    first, which creates it: every reader of the spool (replay, ``verify``'s count of waiting
    records) then finds them where it looks."""
    directory = _keyed(root, identity)
    for earlier in _EARLIER.get(identity, ()):
        _adopt(_keyed(root, earlier), directory, identity)
    return directory


def spool_directory(root: str, url: str) -> str:
    """One sub-directory per ledger (by its identity), so a crash never replays into the
    wrong ledger; created on first use, 0700 whatever the umask.

    A directory of another user, or a link in its place, is refused (another user could
    read, plant or remove segments there); one of this user that others may enter is
    made 0700 again.
    """
    directory = spool_path(root, url)
    _prepare(directory, url)
    return directory


def _prepare(directory: str, identity: str) -> None:
    """Create ``directory`` (and the spool root) private, check it, and name the ledger in its
    ``URL`` file (once: what ``spool status`` shows)."""
    try:
        _make_spool_root(os.path.dirname(directory))
        _make_private_dir(directory)
        _check_private_dir(directory)
        marker = os.path.join(directory, "URL")
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, _FILE_MODE)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(fd, _FILE_MODE)
                handle.write(identity + "\n")
    except OSError as err:
        raise SpoolError(f"cannot use the spool directory {directory}: {err.strerror or err}") from err


def _make_spool_root(root: str) -> None:
    """Make the spool root (and its folder where missing), nothing inside a folder refused."""
    folder = os.path.dirname(root) or "."
    if os.path.isdir(folder):
        _check_spool_root_folder(folder)  # before anything is made in it
    _make_private_dir(root, parents=True)
    _check_spool_root(root)


def _check_spool_root(root: str) -> None:
    """The spool root (``.lineage/spool``) holds each ledger's directory: a user who may
    rename in it may move a directory of waiting records away (``spool status`` then says
    nothing waits, and nothing ships them) or put a link of theirs in its place between a
    check and a segment's open. So it must be a directory, not a link, of this user (made
    0700 when this user's and others may write it), or a sticky one (``/tmp``), in which
    others may not rename what is this user's. Its folder (``.lineage``) is checked too: one who
    may rename there may move the whole spool root away (:func:`_check_spool_root_folder`)."""
    _check_spool_root_folder(os.path.dirname(root) or ".")
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise SpoolError(f"the spool root {root} is not a directory (a link?); refusing to use it")
    if info.st_mode & stat.S_ISVTX:
        return
    if info.st_uid != os.geteuid():
        raise SpoolError(f"the spool root {root} belongs to uid {info.st_uid}, not to this user (uid "
                         f"{os.geteuid()}), who could move the records waiting in it away; refusing to use it "
                         "(give a spool of your own: --spool or LINEAGE_SPOOL)")
    if info.st_mode & 0o022:
        log.warning("lineage-ledger: the spool root %s was mode %04o; made it 0700 (a spool belongs to one user)",
                    printable(root), stat.S_IMODE(info.st_mode))
        os.chmod(root, _DIR_MODE, follow_symlinks=False)


def _check_spool_root_folder(folder: str) -> None:
    """The folder that holds the spool root (``.lineage``, beside the ledger) must be one no
    other user may rename in: this user's or root's, or sticky. One of another user is refused
    (they made ``.lineage`` first, in a project folder all may write); one of this user's that
    others may write loses that permission, with a warning (the group's write bit is kept: the
    group recipe of docs/security.md shares the ledger's folder with the group, whose members
    may write the ledger too). Links are followed: the folder renamed in is the real one."""
    info = os.stat(folder)
    if info.st_mode & stat.S_ISVTX:
        return
    if info.st_uid not in (os.geteuid(), 0):
        raise SpoolError(f"the spool root's folder {folder} belongs to uid {info.st_uid}, not to this user (uid "
                         f"{os.geteuid()}), who could move the records waiting in it away; refusing to use it "
                         "(give a spool of your own: --spool or LINEAGE_SPOOL; records that wait in it already "
                         "ship once its spool folder is moved there: `lineage-ledger spool ship --spool DIR`)")
    if info.st_mode & stat.S_IWOTH:
        if info.st_uid != os.geteuid():
            raise SpoolError(f"the spool root's folder {folder} may be written by every user, who could move the "
                             "records waiting in it away; refusing to use it (give a spool of your own: --spool "
                             "or LINEAGE_SPOOL)")
        mode = stat.S_IMODE(info.st_mode)
        log.warning("lineage-ledger: the spool root's folder %s was mode %04o, so others may write it (and move "
                    "the waiting records away); made it %04o", printable(folder), mode, mode & ~stat.S_IWOTH)
        os.chmod(folder, mode & ~stat.S_IWOTH)


def _adopt(earlier: str, directory: str, identity: str) -> None:
    """Move the segments of dead processes from the directory of an earlier name into
    ``directory``. Each is taken as replay takes it (locked, a regular file of this user with
    one link, never a link) and renamed while locked, so neither a replayer nor its owner
    (alive: its lock is held, and it is left alone) can see it half moved. The earlier
    directory is left in place, emptied: a process of the earlier release, or one that still
    names the ledger the earlier way, may have just made it and be about to write its first
    segment there. Best effort: what cannot be moved stays there, with a warning, for the
    next opener."""
    try:
        info = os.lstat(earlier)
    except OSError:
        return  # none: the usual case
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        log.warning("lineage-ledger: left %s alone: the spool directory of an earlier name of %s is not a "
                    "directory of this user", printable(earlier), printable(identity))
        return
    reported: list[str] = []
    try:
        names = sorted(n for n in os.listdir(earlier) if n.endswith(_SUFFIX))
        for name in names:
            target = os.path.join(directory, name)
            fd = _open_orphan(os.path.join(earlier, name), reported)
            if fd is None:
                continue
            try:
                _prepare(directory, identity)
                if not os.path.lexists(target):  # names are unique (pid, random, sequence): never replaced
                    os.rename(os.path.join(earlier, name), target)
            finally:
                os.close(fd)  # the lock goes once the segment is where replay looks
    except (OSError, SpoolError) as err:
        log.warning("lineage-ledger: could not move the spool of an earlier name of %s from %s: %s; its records "
                    "wait there for the next opener", printable(identity), printable(earlier), printable(str(err)))



class SpoolWriter:
    """Appends record lines to the current segment of this process."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self.current = self._open_segment()

    def _open_segment(self) -> Segment:
        self._sequence += 1
        name = f"{self._prefix}-{self._sequence:08d}"
        temporary = os.path.join(self.directory, name + ".new")
        fd = -1
        try:
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _NOFOLLOW, _FILE_MODE)
            except FileNotFoundError:  # the directory was removed (a clean-up): made again, private
                _make_spool_root(os.path.dirname(self.directory))  # as _prepare makes them
                _make_private_dir(self.directory)
                _check_private_dir(self.directory)  # never a link or another user's directory in its place
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _NOFOLLOW, _FILE_MODE)
            os.fchmod(fd, _FILE_MODE)  # the umask may have taken bits away
            # Lock before the file gets the name replay looks for, so no replayer can
            # mistake a segment being born for one whose owner died.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = os.path.join(self.directory, name + _SUFFIX)
            os.rename(temporary, final)
        except OSError as err:
            if fd >= 0:  # a recorder tries again on its next wake: no descriptor or file per try
                os.close(fd)
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
            raise SpoolError(f"cannot create a spool segment in {self.directory}: {err}") from err
        return Segment(final, fd)

    def append(self, record: Record, record_id: str, body: bytes) -> None:
        self._write(b"".join((record_id.encode("ascii"), b" ", body, b"\n")))
        self.current.fresh.append((record, record_id, body))

    def append_many(self, entries: list[tuple[Record, str, bytes]]) -> None:
        """Journal several records with one ``write(2)``: all of them, or none."""
        parts: list[bytes] = []
        for _, record_id, body in entries:
            parts += (record_id.encode("ascii"), b" ", body, b"\n")
        self._write(b"".join(parts))
        self.current.fresh.extend(entries)

    def append_stored(self, records: list[StoredRecord]) -> None:
        """Journal again, with one write, records a segment whose name was removed held."""
        self._write(b"".join(b"%s %s\n" % (r.id.encode("ascii"), r.body) for r in records))
        self.current.records.extend(records)

    def _write(self, data: bytes) -> None:
        fd = self.current.fd
        written = 0
        try:
            written = os.write(fd, data)
            while written < len(data):  # only a full disk or a signal cuts an append short
                written += os.write(fd, memoryview(data)[written:])
        except OSError as err:
            if written:  # take the partial lines back, or the next line would be glued to them
                os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise SpoolError(f"cannot append to the spool {self.current.path}: {err.strerror or err}") from err

    def rotate(self) -> Segment | None:
        """Start a new segment; return the previous one with its records. None where its
        name was removed (with its directory, made again for the new one): it would die with
        this process, so its records are journaled again in the new segment instead."""
        full, self.current = self.current, self._open_segment()
        if os.fstat(full.fd).st_nlink:
            return full
        try:
            self.append_stored(full.stored())
        except SpoolError as err:  # the caller ships it from memory all the same
            log.warning("lineage-ledger: cannot journal again the records of %s: %s", printable(full.path), err)
            return full
        os.close(full.fd)
        return None

    def close(self) -> Segment:
        return self.current
