"""JSON a piece at a time, both ways, for crates of 100,000 tasks (70 MB of metadata text a
10,000-task crate), neither read nor written whole.

Reading (``verify-lineage --crate``, :func:`members`): a JSON object's members one at a time,
and the elements of its big arrays one at a time. Only the top level is walked here; every
member's value (or array element) is parsed by ``json``'s own decoder (``raw_decode``) from a
buffer read in chunks. A crate is someone else's file: anything that is not a JSON object,
or ends early, raises ``ValueError``.

Writing (the crate's metadata, :func:`indented`): one value as ``json.dumps(document,
indent=4, sort_keys=True, ensure_ascii=False)`` (``rocrate``'s call) writes it where it is
nested in the document, so that a writer can give the document's text a part at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from json.encoder import encode_basestring as _string  # json.dumps' for ensure_ascii=False
from typing import IO, Any

__all__ = ["INDENT", "indented", "members"]

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


INDENT = " " * 4
_DEPTH = 8
_REFERENCE = ["{\n" + INDENT * (level + 1) + '"@id": ' for level in range(_DEPTH)]
_CLOSE = ["\n" + INDENT * level + "}" for level in range(_DEPTH)]


def indented(value: Any, level: int) -> str:
    """``value`` as ``json.dumps(..., indent=4, sort_keys=True, ensure_ascii=False)`` writes it
    ``level`` containers deep. json's own encoder with an indent is pure Python too (it has no
    C path for it), so writing it here costs no more; the text is the same (tested against
    json.dumps in tests/test_export_streaming.py)."""
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("@id"), str):  # a reference
        return _REFERENCE[level] + _string(value["@id"]) + _CLOSE[level] if level < _DEPTH else (
            "{\n" + INDENT * (level + 1) + '"@id": ' + _string(value["@id"]) + "\n" + INDENT * level + "}")
    if isinstance(value, dict) and value:
        if not all(isinstance(key, str) for key in value):  # json's key coercions, left to json
            return json.dumps(value, indent=4, sort_keys=True, ensure_ascii=False).replace("\n", "\n" + INDENT * level)
        inner = "\n" + INDENT * (level + 1)
        return ("{" + inner + ("," + inner).join(
            f"{_string(key)}: {_string(item) if type(item) is str else indented(item, level + 1)}"
            for key, item in sorted(value.items()))
                + "\n" + INDENT * level + "}")
    if isinstance(value, (list, tuple)) and value:
        inner = "\n" + INDENT * (level + 1)
        return "[" + inner + ("," + inner).join(indented(item, level + 1) for item in value) + "\n" + INDENT * level + "]"
    return json.dumps(value)  # numbers, true, false, null, {} and [] (no indent: nothing to indent)
