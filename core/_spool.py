"""The durable local journal behind write-behind recording.

Each recording process appends to its own segment files in the ledger's spool
directory, one line per record: ``<record id> <canonical bytes>\\n``. The writer holds an
exclusive ``flock`` on every segment it owns until the back-end has acknowledged it, so
a segment whose lock can be taken belongs to a dead process: that is what replay ships.
A torn last line (a kill in the middle of a write) or a line whose bytes do not hash to
its id is moved to ``quarantine/``, never dropped silently.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from dataclasses import dataclass, field

from blake3 import blake3

from ._errors import SpoolCorrupt, SpoolError
from ._model import Record, StoredRecord

__all__ = ["Segment", "SpoolWriter", "describe_quarantine", "spool_directory", "spool_path", "take_orphans"]

_SUFFIX = ".log"


def spool_path(root: str, identity: str) -> str:
    return os.path.join(os.path.abspath(root), blake3(identity.encode("utf-8")).hexdigest()[:16])


def spool_directory(root: str, url: str) -> str:
    """One sub-directory per ledger (by its identity), so a crash never replays into the
    wrong ledger; created on first use."""
    directory = spool_path(root, url)
    try:
        os.makedirs(directory, exist_ok=True)
        marker = os.path.join(directory, "URL")
        if not os.path.exists(marker):
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write(url + "\n")
    except OSError as err:
        raise SpoolError(f"cannot use the spool directory {directory}: {err.strerror or err}") from err
    return directory


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
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
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


def take_orphans(directory: str) -> tuple[list[Segment], list[str]]:
    """Lock and read every segment whose owner is gone.

    Returns the segments (with records to ship) and the quarantine files written for
    damaged lines. The caller ships the records, then deletes the segments.
    """
    segments: list[Segment] = []
    quarantined: list[str] = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(_SUFFIX))
    except FileNotFoundError:
        return segments, quarantined
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # shipped and removed by its owner meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live process owns it
        if not os.path.exists(path):
            os.close(fd)
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        good, bad = _parse(path, data)
        if bad:
            quarantine = os.path.join(directory, "quarantine")
            os.makedirs(quarantine, exist_ok=True)
            target = os.path.join(quarantine, name + ".damaged")
            with open(target, "ab") as handle:
                handle.write(b"\n".join(bad) + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            quarantined.append(target)
        segments.append(Segment(path, fd, good))
    return segments, quarantined


def describe_quarantine(paths: list[str]) -> SpoolCorrupt:
    return SpoolCorrupt(
        "the spool held damaged or torn lines (a write cut short by a crash, or an edited "
        f"file); every complete record was shipped and the damaged bytes were kept in: {', '.join(paths)}"
    )
