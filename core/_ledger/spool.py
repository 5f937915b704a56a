"""The durable local journal behind write-behind recording.

Each recording process appends to its own segment files in the ledger's spool
directory, one line per record: ``<record id> <canonical bytes>\\n``. The writer holds an
exclusive ``flock`` on every segment it owns until the back-end has acknowledged it, so
a segment whose lock can be taken belongs to a dead process: that is what replay ships.
A torn last line (a kill in the middle of a write) or a line whose bytes do not hash to
its id is moved to ``quarantine/``, never dropped silently.

The spool belongs to one user: its directories are 0700 and its files 0600 whatever the
umask. Replay opens segments with ``O_NOFOLLOW`` and takes only regular files of this
user with one link (checked with ``fstat`` on the open descriptor, not before opening);
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
from dataclasses import dataclass, field

from blake3 import blake3

from .._errors import SpoolCorrupt, SpoolError
from .._model import Record, StoredRecord
from .._terminal import printable

__all__ = [
    "Refused", "Segment", "SpoolWriter", "describe_quarantine", "earlier_names", "note_earlier_name",
    "spool_directory", "spool_path", "take_orphans",
]

log = logging.getLogger("lineage_ledger")

_SUFFIX = ".log"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


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
        _make_private_dir(os.path.dirname(directory), parents=True)
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


def _make_private_dir(path: str, *, parents: bool = False) -> None:
    """Create ``path`` 0700 (its missing parents too with ``parents``; those get the usual
    mode: they are not the spool's). An existing directory is left as it is here."""
    if parents:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
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

    def __len__(self) -> int:
        return len(self.records) + len(self.fresh)

    def stored(self) -> list[StoredRecord]:
        if self.fresh:
            self.records.extend(record.stored(body, record_id) for record, record_id, body in self.fresh)
            self.fresh.clear()
        return self.records

    def sync(self) -> None:
        os.fsync(self.fd)

    def delete(self) -> None:
        try:
            os.unlink(self.path)
        finally:
            os.close(self.fd)  # releases the lock only once the file is gone


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
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _NOFOLLOW, _FILE_MODE)
            os.fchmod(fd, _FILE_MODE)  # the umask may have taken bits away
            # Lock before the file gets the name replay looks for, so no replayer can
            # mistake a segment being born for one whose owner died.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = os.path.join(self.directory, name + _SUFFIX)
            os.rename(temporary, final)
        except OSError as err:
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

    def rotate(self) -> Segment:
        """Start a new segment; return the previous one with its records."""
        full, self.current = self.current, self._open_segment()
        return full

    def close(self) -> Segment:
        return self.current


def _parse(path: str, data: bytes) -> tuple[list[StoredRecord], list[bytes]]:
    good: list[StoredRecord] = []
    bad: list[bytes] = []
    lines = data.split(b"\n")
    tail = lines.pop()  # empty when the file ends with a newline; a torn write otherwise
    if tail:
        bad.append(tail)
    for line in lines:
        record_id, _, body = line.partition(b" ")
        try:
            text_id = record_id.decode("ascii")
            if blake3(body).hexdigest() != text_id:
                raise ValueError("bytes do not hash to the id")
            good.append(StoredRecord.from_body(body))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            bad.append(line)
    return good, bad


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
    return None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def take_orphans(directory: str) -> tuple[list[Segment], list[str]]:
    """Lock and read every segment whose owner is gone.

    Returns the segments (with records to ship) and what the caller must report: the
    quarantine files written for damaged lines, and the paths replay refused (as
    :class:`Refused`, with the reason; already logged as warnings). The caller ships the
    records, then deletes the segments. A refused path is left where it is.
    """
    segments: list[Segment] = []
    reported: list[str] = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(_SUFFIX))
    except FileNotFoundError:
        return segments, reported
    quarantine: _Quarantine | None = None
    try:
        for name in names:
            path = os.path.join(directory, name)
            fd = _open_orphan(path, reported)
            if fd is None:
                continue
            try:
                data = _read_all(fd)
                good, bad = _parse(path, data)
                if bad:
                    if quarantine is None:
                        quarantine = _Quarantine(directory)
                    target = quarantine.keep(name, b"\n".join(bad) + b"\n")
                    reported.append(target)
                    if isinstance(target, Refused):
                        os.close(fd)  # its good lines wait until their damaged ones can be kept
                        continue
            except BaseException:
                os.close(fd)
                raise
            segments.append(Segment(path, fd, good))
    except BaseException:
        for segment in segments:
            os.close(segment.fd)
        raise
    finally:
        if quarantine is not None:
            quarantine.close()
    return segments, reported


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
        why = _foreign(os.fstat(fd))
        if why is not None:
            os.close(fd)
            reported.append(_refuse(path, why))
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
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


class _Quarantine:
    """``quarantine/`` in a spool directory, used through a descriptor of the directory
    itself: never a link, files created with ``O_EXCL|O_NOFOLLOW``, 0600."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "quarantine")
        self.fd: int | None = None
        self.refused: str | None = None
        try:
            _make_private_dir(self.path)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        except OSError as err:
            if os.path.islink(self.path):
                self.refused = f"{self.path} is a symbolic link"
            else:
                self.refused = f"cannot use {self.path}: {err.strerror or err}"
            return
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            os.close(fd)
            self.refused = f"{self.path} belongs to uid {info.st_uid}, not to this user"
            return
        if stat.S_IMODE(info.st_mode) != _DIR_MODE:
            os.fchmod(fd, _DIR_MODE)
        self.fd = fd

    def keep(self, name: str, data: bytes) -> str:
        """Write ``data`` to a new file for segment ``name``; its path, or a :class:`Refused`
        naming the segment (left alone) when the damaged lines cannot be kept."""
        segment = os.path.join(os.path.dirname(self.path), name)
        if self.fd is None:
            return _refuse(segment, f"it has damaged lines and the quarantine cannot take them: {self.refused}")
        candidates = [name + ".damaged"] + [f"{name}.{uuid.uuid4().hex[:8]}.damaged" for _ in range(8)]
        for candidate in candidates:
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, _FILE_MODE,
                             dir_fd=self.fd)
            except FileExistsError:
                continue  # kept before (a replay cut short), or planted: never appended to
            except OSError as err:
                return _refuse(segment, f"it has damaged lines and {self.path} cannot take them: "
                                        f"{err.strerror or err}")
            try:
                os.fchmod(fd, _FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as err:
                return _refuse(segment, f"it has damaged lines and {self.path} cannot take them: "
                                        f"{err.strerror or err}")
            finally:
                os.close(fd)
            return os.path.join(self.path, candidate)
        return _refuse(segment, f"it has damaged lines and {self.path} has no free name for them")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def describe_quarantine(paths: list[str]) -> SpoolCorrupt:
    """The error to raise for what :func:`take_orphans` reported: quarantine files of
    damaged lines, and paths left alone (:class:`Refused`)."""
    kept = [p for p in paths if not isinstance(p, Refused)]
    refused = [p for p in paths if isinstance(p, Refused)]
    parts = []
    if kept:
        parts.append(
            "the spool held damaged or torn lines (a write cut short by a crash, or an edited "
            f"file); every complete record was shipped and the damaged bytes were kept in: {', '.join(kept)}"
        )
    if refused:
        parts.append(
            "the spool held files replay does not take (it takes only regular files of this user, never "
            "links); they were left alone, not shipped: "
            + "; ".join(f"{p} ({p.reason})" for p in refused)
        )
    return SpoolCorrupt("; ".join(parts) if parts else "the spool held nothing to report")
