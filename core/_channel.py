"""Length-prefixed pickles over a pair of pipes: how a capture talks to its recording process.

Each message is a 4-byte big-endian length and a pickle. Both ends are our own code, started
by the same user, so pickle's trust model holds; a frame that will not decode ends the
conversation rather than being guessed at.
"""

from __future__ import annotations

import pickle
import struct
import threading
from typing import IO, Any

__all__ = ["Channel"]

_HEADER = struct.Struct(">I")
_LIMIT = 1 << 31  # a frame is a batch of at most a few hundred reports: far below this


class Channel:
    """Sends on ``output`` (from any thread, one whole frame at a time); receives on ``input``."""

    def __init__(self, input: IO[bytes], output: IO[bytes]) -> None:
        self._input = input
        self._output = output
        self._send_lock = threading.Lock()

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=5)
        frame = _HEADER.pack(len(data)) + data
        with self._send_lock:
            view = memoryview(frame)
            while view:  # a raw pipe may take part of a large frame per call
                written = self._output.write(view)
                if written is None:  # pragma: no cover - only for non-blocking pipes
                    raise OSError("the pipe is non-blocking")
                view = view[written:]
            self._output.flush()

    def receive(self) -> Any | None:
        """The next message, or None when the other end has closed."""
        header = self._read(_HEADER.size)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
        if size >= _LIMIT:
            raise ValueError(f"frame of {size} bytes: the stream is garbled")
        body = self._read(size)
        if body is None:
            raise EOFError("the stream ended inside a frame")
        return pickle.loads(body)

    def _read(self, size: int) -> bytes | None:
        chunks: list[bytes] = []
        left = size
        while left:
            chunk = self._input.read(left)
            if not chunk:
                if chunks:
                    raise EOFError("the stream ended inside a frame")
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close_output(self) -> None:
        """End of input for the other side (it may still answer)."""
        with self._send_lock:
            try:
                self._output.close()
            except OSError:
                pass

    def close_input(self) -> None:
        try:
            self._input.close()
        except OSError:
            pass
