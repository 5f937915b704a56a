"""Replay's reading of the segments dead processes left, and the quarantine of damaged lines.

Split from :mod:`.spool` (which re-exports :func:`take_orphans` and
:func:`describe_quarantine`) along this seam: the writer never reads a segment back, and
only replay parses lines, checks their hashes and keeps the damaged ones aside. The checks
on each file replay opens are :mod:`._spool_files`'.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Generator

from blake3 import blake3

from .._errors import SpoolCorrupt
from .._model import StoredRecord
from ._spool_files import (
    _DIR_MODE,
    _FILE_MODE,
    _NOFOLLOW,
    _SUFFIX,
    Refused,
    Segment,
    _make_private_dir,
    _open_orphan,
    _refuse,
)


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
    records, then deletes the segments. A refused path is left where it is. Replay takes
    them one at a time instead (:func:`each_orphan`)."""
    reported: list[str] = []
    segments: list[Segment] = []
    try:
        segments.extend(each_orphan(directory, reported))
    except BaseException:
        for segment in segments:
            os.close(segment.fd)
        raise
    return segments, reported


def each_orphan(directory: str, reported: list[str]) -> Generator[Segment, None, None]:
    """The segments whose owner is gone, each locked and read as the caller comes to it (the
    caller ships it, deletes it or closes its descriptor before asking for the next one):
    replay holds one segment's records at a time. Reading them all first held every record
    a long outage left (100,000 records: 352 MB; a million would not fit). ``reported`` is
    given what :func:`take_orphans` returns beside the segments."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(_SUFFIX))
    except FileNotFoundError:
        return
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
                del data
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
            yield Segment(path, fd, good)
    finally:
        if quarantine is not None:
            quarantine.close()


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
            "the spool held files replay does not take (it takes only regular files of this user that no "
            "other user may write, never links); they were left alone, not shipped: "
            + "; ".join(f"{p} ({p.reason})" for p in refused)
        )
    return SpoolCorrupt("; ".join(parts) if parts else "the spool held nothing to report")
