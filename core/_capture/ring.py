"""Frames in shared memory: how an engine's thread hands a report over without a system call.

A :class:`ProcessCapture` used to write each report to its recording process's pipe. Every
``write(2)`` releases the GIL, and in an engine whose threads hand the GIL to each other
thousands of times a second (Parsl's), taking it back costs more than the write itself. A
:class:`Ring` is a file mapped by both processes: the writer copies the frame in and then
moves the published end forward, all while holding the GIL; the reader takes what is
published when it wakes. The mapping outlives a ``kill -9`` of the writer, so a report is
as safe once :meth:`Ring.put` returns as it was once the pipe had it.

Layout: a 4 KiB header page, then ``size`` bytes of data used as a ring. The header holds
two counters of bytes ever written, each on its own cache line: ``tail`` (published by the
writer) at offset 0 and ``head`` (released by the reader) at offset 64. A frame is one kind
byte, a 4-byte length, a CRC-32 and the payload; frames do not wrap around the end: a
writer that does not fit marks the rest of the lap with a :data:`_WRAP` header (or leaves
it, when too short to hold one) and starts again at the beginning.

Ordering: the writer stores the frame before the counter that publishes it. On x86 stores
become visible in that order; where they may not (ARM), the reader could see the new
counter and old bytes. So the CRC covers the payload seeded with the frame's position in
the stream: bytes left from an earlier lap never match, and the reader stops at such a
frame and takes it on its next pass. The counters are written with native 8-byte
``struct`` packing, one aligned store, so neither side ever reads half a counter.

One writer at a time (callers serialise :meth:`Ring.put`) and one reader.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import zlib

__all__ = ["Ring"]

_HEADER_PAGE = 4096
_TAIL, _HEAD = 0, 64
_COUNTER = struct.Struct("Q")  # native: a single aligned 8-byte store or load
_FRAME = struct.Struct("<cII")  # kind, payload length, CRC-32 of the payload (see _seal)
_WRAP = b"W"


class Ring:
    """A shared ring of frames over the file ``fd``: made by :meth:`create`; the reader
    maps the same descriptor, passed to it, with ``Ring(fd, size)``."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, _HEADER_PAGE + size)
        self._tail = _COUNTER.unpack_from(self._map, _TAIL)[0]  # the writer's own copy
        self._room_until = 0  # the writer's last view of where the reader lets it write to
        self._head = _COUNTER.unpack_from(self._map, _HEAD)[0]  # the reader's own copy

    @classmethod
    def create(cls, size: int = 4 << 20) -> Ring:
        """A new ring in memory that no other process maps yet. Its descriptor is closed on
        exec: hand it to the reader with ``subprocess.Popen(..., pass_fds=[ring.fd])``."""
        if size < 1 << 16 or size % mmap.PAGESIZE:
            raise ValueError(f"ring size must be a multiple of the page size and >= 64 KiB, got {size}")
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("lineage-ledger-reports")
        else:  # other POSIX systems: an unlinked temporary file (in the page cache)
            handle, path = tempfile.mkstemp(prefix="lineage-ledger-reports-")
            os.unlink(path)
            fd = handle
        try:
            os.ftruncate(fd, _HEADER_PAGE + size)
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    # -- writer --------------------------------------------------------------------------------
    def put(self, kind: bytes, payload: bytes) -> bool:
        """Publish one frame; False if the reader has not made room for it yet."""
        length = _FRAME.size + len(payload)
        if length > self.size // 2:
            raise ValueError(f"a frame of {length} bytes does not fit a ring of {self.size}")
        tail = self._tail
        offset = tail % self.size
        left_in_lap = self.size - offset
        skip = left_in_lap if length > left_in_lap else 0
        if tail + skip + length > self._room_until:  # look at the reader's counter only then
            self._room_until = _COUNTER.unpack_from(self._map, _HEAD)[0] + self.size
            if tail + skip + length > self._room_until:
                return False
        if skip:
            if left_in_lap >= _FRAME.size:
                _FRAME.pack_into(self._map, _HEADER_PAGE + offset, _WRAP, 0, _seal(b"", tail))
            tail += skip
            offset = 0
        start = _HEADER_PAGE + offset
        seal = zlib.crc32(payload, tail & 0xFFFFFFFF)  # _seal(payload, tail), without the call
        _FRAME.pack_into(self._map, start, kind, len(payload), seal)
        self._map[start + _FRAME.size:start + length] = payload
        self._tail = tail + length
        _COUNTER.pack_into(self._map, _TAIL, self._tail)  # publish: after the frame's bytes
        return True

    def pending(self) -> int:
        """Bytes published and not yet released by the reader (the writer's view)."""
        return self._tail - _COUNTER.unpack_from(self._map, _HEAD)[0]

    # -- reader --------------------------------------------------------------------------------
    def take(self, limit: int = 1 << 30) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` published frames as (kind, payload), oldest first; their room is released."""
        tail = _COUNTER.unpack_from(self._map, _TAIL)[0]
        head = self._head
        frames: list[tuple[bytes, bytes]] = []
        while head < tail and len(frames) < limit:
            offset = head % self.size
            left_in_lap = self.size - offset
            start = _HEADER_PAGE + offset
            if left_in_lap < _FRAME.size:
                head += left_in_lap
                continue
            kind, length, crc = _FRAME.unpack_from(self._map, start)
            if kind == _WRAP and length == 0 and crc == _seal(b"", head):
                head += left_in_lap
                continue
            end = start + _FRAME.size + length
            if end > _HEADER_PAGE + self.size:
                break  # a header not visible to us yet (or garbled; see left())
            payload = self._map[start + _FRAME.size:end]  # a copy: the room is released below
            if _seal(payload, head) != crc:
                break  # not all of it visible to us yet (or garbled; see left())
            frames.append((kind, payload))
            head += _FRAME.size + length
        if head != self._head:
            self._head = head
            _COUNTER.pack_into(self._map, _HEAD, head)
        return frames

    def left(self) -> int:
        """Bytes published and not taken (the reader's view); once the writer has gone
        and :meth:`take` returns nothing, any left are garbled."""
        return _COUNTER.unpack_from(self._map, _TAIL)[0] - self._head

    def close(self) -> None:
        """Unmap and close this process's descriptor; the other side's mapping stays valid."""
        self._map.close()
        try:
            os.close(self.fd)
        except OSError:
            pass


def _seal(payload: bytes, position: int) -> int:
    """CRC-32 of ``payload`` seeded with where it sits in the stream."""
    return zlib.crc32(payload, position & 0xFFFFFFFF)
