"""Framed messages over a pair of pipes: how a capture talks to its recording process.

A frame is one kind byte, a 4-byte big-endian length and the payload. Kind ``M`` carries a
pickled control message (task reports themselves go through the shared :mod:`._ring`).
Both ends are our own code, started by the same user, so pickle's trust model holds; a frame
that will not decode ends the conversation rather than being guessed at.
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import struct
import threading
import time
from typing import Any

__all__ = ["Channel", "MESSAGE", "NOTHING_YET"]

_HEADER = struct.Struct(">cI")
_LIMIT = 1 << 30  # a message is a few hundred bytes; anything near this is a garbled stream
MESSAGE = b"M"
NOTHING_YET = (b"", b"")  # receive(timeout) found no whole frame in time


class Channel:
    """Sends whole frames on ``output`` (from any thread); receives from ``input`` (one thread)."""

    def __init__(self, input_fd: int, output_fd: int) -> None:
        self.input_fd = input_fd
        self.output_fd = output_fd
        self._send_lock = threading.Lock()
        self._buffer = bytearray()
        self._output_closed = False

    # -- sending ---------------------------------------------------------------------------
    @staticmethod
    def frame(kind: bytes, payload: bytes) -> bytes:
        return _HEADER.pack(kind, len(payload)) + payload

    def send(self, kind: bytes, payload: bytes) -> None:
        self.send_frame(self.frame(kind, payload))

    def send_message(self, message: Any) -> None:
        self.send(MESSAGE, pickle.dumps(message, protocol=5))

    def send_frame(self, frame: bytes) -> None:
        """Write one whole frame; frames from several threads never interleave."""
        with self._send_lock:
            self.write_locked(frame)

    def write_locked(self, frame: bytes) -> None:
        """Write ``frame``; the caller holds :attr:`send_lock` (to order its own state with it)."""
        if self._output_closed:
            # The descriptor's number may already belong to a file opened since: a write
            # would land in it. Fail as a write to a closed pipe does.
            raise BrokenPipeError(errno.EPIPE, "the channel's output is closed")
        written = os.write(self.output_fd, frame)
        while written < len(frame):  # a pipe takes a large frame in parts
            written += os.write(self.output_fd, memoryview(frame)[written:])

    @property
    def send_lock(self) -> threading.Lock:
        return self._send_lock

    def output_closing(self) -> None:
        """Called under :attr:`send_lock` just before the output's descriptor is closed: no
        frame is written to that number again."""
        self._output_closed = True

    # -- receiving -------------------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> tuple[bytes, bytes] | None:
        """The next frame as (kind, payload); None once the other end has closed.

        With a ``timeout`` (0 polls), :data:`NOTHING_YET` if no whole frame came in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                if not select.select([self.input_fd], [], [], left)[0]:
                    return NOTHING_YET
            chunk = os.read(self.input_fd, 1 << 16)
            if not chunk:
                if self._buffer:
                    raise EOFError("the stream ended inside a frame")
                return None
            self._buffer += chunk

    def _take(self) -> tuple[bytes, bytes] | None:
        if len(self._buffer) < _HEADER.size:
            return None
        kind, size = _HEADER.unpack_from(self._buffer)
        if size >= _LIMIT:
            raise ValueError(f"frame of {size} bytes: the stream is garbled")
        end = _HEADER.size + size
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[_HEADER.size:end])
        del self._buffer[:end]
        return kind, payload

    @staticmethod
    def message(payload: bytes) -> Any:
        return pickle.loads(payload)
