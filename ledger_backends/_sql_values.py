"""Stored values read as they are: what a column holds after someone rewrote it behind our back.

A reader of the SQL store must not crash on a tampered row, nor hide it: a value rewritten
with another type (text for bytes, a number for text, text for an integer) is coerced here
so that verification compares it, and reports it, instead of the reader raising halfway.
Every read of the SQL store (:mod:`._sql_reads`, :mod:`._sql_lookups`) reads columns
through these, which is why they are a module of their own below both.
"""

from __future__ import annotations

__all__ = ["_IN", "_OUT", "_as_bytes", "_as_int", "_as_text"]

_IN, _OUT = 0, 1  # artifact roles as stored


def _as_bytes(value) -> bytes:
    """Stored bytes as they are; a value someone rewrote as TEXT or a number still verifies
    (and fails) instead of crashing the reader."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def _as_text(value) -> str:
    """A stored text column as ``str``; a value rewritten as bytes or a number still comes out."""
    if type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _as_int(value, default: int = -1) -> int:
    """A stored integer column as ``int``; anything a tamperer wrote there that is no whole
    number comes out as ``default``, for verification to report."""
    if type(value) is int:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if number == value or isinstance(value, (str, bytes)) else default
