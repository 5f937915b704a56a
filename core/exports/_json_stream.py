"""A JSON object's members read one at a time, and the elements of its big arrays one at a
time: ``verify-lineage --crate`` of a crate of 100,000 tasks must not hold its metadata (70 MB
of text a 10,000-task crate) parsed whole.

Only the top level is walked here; every member's value (or array element) is parsed by
``json``'s own decoder (``raw_decode``) from a buffer read in chunks. A crate is someone
else's file: anything that is not a JSON object, or ends early, raises ``ValueError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["members"]

_CHUNK = 1 << 20
_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


class _Reader:
    def __init__(self, handle: IO[str], limit: int) -> None:
        self.handle, self.limit = handle, limit
        self.buffer, self.at, self.read, self.eof = "", 0, 0, False
        self.text = ""  # the text of the last value

    def more(self) -> bool:
        if self.eof:
            return False
        # Doubling: a value longer than a chunk is parsed again a few times, not once a chunk.
        chunk = self.handle.read(max(_CHUNK, len(self.buffer) - self.at))
        self.read += len(chunk)
        if self.read > self.limit:
            raise ValueError(f"more than {self.limit} characters")
        if not chunk:
            self.eof = True
            return False
        self.buffer = self.buffer[self.at:] + chunk  # what was parsed is dropped
        self.at = 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ('' at the end)."""
        while True:
            while self.at < len(self.buffer) and self.buffer[self.at] in _SPACE:
                self.at += 1
            if self.at < len(self.buffer) or not self.more():
                return self.buffer[self.at:self.at + 1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char!r} at character {self.read - len(self.buffer) + self.at}")
        self.at += 1

    def value(self) -> Any:
        """The next JSON value (its text in :attr:`text`). One that ends where the buffer
        does (a number cut by a chunk) is parsed again with more text behind it."""
        self.peek()
        while True:
            try:
                parsed, end = _DECODER.raw_decode(self.buffer, self.at)
            except json.JSONDecodeError:
                if self.more():
                    continue
                raise
            if end == len(self.buffer) and self.more():
                continue
            self.text = self.buffer[self.at:end]
            self.at = end
            return parsed


def members(handle: IO[str], arrays: frozenset[str], limit: int, *, texts: bool = False
            ) -> Iterator[tuple[str, str, Any]]:
    """The top-level members of the JSON object in ``handle``, in the file's order: for one
    named in ``arrays`` whose value is an array, ``(key, "array", None)`` then ``(key, "item",
    element)`` for each element (with ``texts``, ``(element, its JSON text)``: what a caller
    keeps need not be written again); ``(key, "value", value)`` for any other. Raises
    ``ValueError`` on text that is not one JSON object."""
    reader = _Reader(handle, limit)
    reader.expect("{")
    if reader.peek() == "}":
        reader.at += 1
    else:
        while True:
            key = reader.value()
            if not isinstance(key, str):
                raise ValueError("an object key is not a string")
            reader.expect(":")
            if key in arrays and reader.peek() == "[":
                reader.at += 1
                yield key, "array", None
                if reader.peek() == "]":
                    reader.at += 1
                else:
                    while True:
                        item = reader.value()
                        yield key, "item", (item, reader.text) if texts else item
                        if reader.peek() == "]":
                            reader.at += 1
                            break
                        reader.expect(",")
            else:
                yield key, "value", reader.value()
            if reader.peek() == "}":
                reader.at += 1
                break
            reader.expect(",")
    if reader.peek() != "":
        raise ValueError("text after the JSON object")
