"""Canonical bytes: the one encoding every hash in the ledger is computed over.

JSON with sorted keys, no insignificant whitespace, UTF-8, no NaN or infinities.
Times are timezone-aware UTC written as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` so that one
instant has exactly one spelling.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from typing import Any

__all__ = ["CONTROL", "canonical_bytes", "format_time", "from_canonical", "parse_time", "parse_time_text", "canonical_object",
           "reject_non_string_keys", "utcnow"]

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_bytes(obj: Any, *, check_keys: bool = True) -> bytes:
    """Encode ``obj`` (JSON types only) to its canonical UTF-8 bytes.

    Raises ``ValueError`` for values with no canonical form (NaN, non-string keys that
    JSON would coerce, strings holding lone surrogates from undecodable file names).
    ``check_keys=False`` skips the key scan for data validated when it was built.
    """
    if check_keys:
        reject_non_string_keys(obj)
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid UTF-8 text: {exc.object[exc.start:exc.end]!r}") from exc


def from_canonical(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:  # bytes no encoder here writes: unreadable, as other bad JSON is
        raise ValueError("JSON nested too deeply") from None


def canonical_object(data: bytes) -> dict[str, Any] | None:
    """``from_canonical(data)``, a JSON object, where ``data`` is shown here to be the
    canonical bytes of what it holds; None where that is not shown (the caller parses and encodes again,
    for the general answer). A reader decodes every record it answers from, and encoding
    one again through ``json`` was a third of that (9 of 28 us a task-shaped record;
    ``msgspec`` parses and encodes it in 3.6).

    ``msgspec`` and :data:`_ENCODER` write the same bytes for what is let through:
    ``data`` holds no backslash, so no string in it needs an escape in either encoder
    (both escape exactly ``"``, backslash and controls: ``ensure_ascii=False``); it holds
    no float (the one type whose spelling the two encoders do not share: the decoder
    refuses any); keys sort by code point in ``json`` and by UTF-8 bytes in ``msgspec``,
    the same order; integers are written in decimal by both, through Python's own
    conversion and its digit limit. Text that is not valid UTF-8, or not JSON, is refused
    by ``msgspec`` and left to the general path's error. So the value returned is
    exactly what ``from_canonical`` returns, and ``canonical_bytes`` of it is ``data``
    (tests/test_decode_fast.py checks both, by hypothesis). A process that has not imported
    msgspec reads its first 500 records the general way (see ``_BEFORE_MSGSPEC``)."""
    if b"\\" in data:
        return None
    global _PLAIN, _BEFORE_MSGSPEC
    if _PLAIN is None:
        if _BEFORE_MSGSPEC > 0 and "msgspec" not in sys.modules:
            # Importing msgspec costs a command 7 ms, what it saves on 600 records: a
            # targeted read of a few records answers without it.
            _BEFORE_MSGSPEC -= 1
            return None
        import msgspec  # the core's dependency

        _PLAIN = (msgspec.json.Decoder(float_hook=_refuse_float).decode,
                  msgspec.json.Encoder(order="sorted").encode)
    decode, encode = _PLAIN
    try:
        value = decode(data)
        same = type(value) is dict and encode(value) == data
    except (ValueError, TypeError, OverflowError, RecursionError):  # msgspec's errors are ValueErrors
        return None
    return value if same else None


_PLAIN: Any = None
_BEFORE_MSGSPEC = 500  # records read the general way before msgspec is imported for the rest


def _refuse_float(text: str) -> Any:
    raise ValueError("a float: left to the general path")


def reject_non_string_keys(obj: Any) -> None:
    # json.dumps silently turns {1: x} into {"1": x}; two different values would then
    # share one encoding, so refuse them instead.
    # Leaves are skipped without a call: this runs on every record a capture builds.
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValueError(f"mapping keys must be strings, got {key!r}")
            if isinstance(value, _CONTAINERS):
                reject_non_string_keys(value)
    elif isinstance(obj, _CONTAINERS):
        for value in obj:
            if isinstance(value, _CONTAINERS):
                reject_non_string_keys(value)


_CONTAINERS = (dict, list, tuple)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    if moment.tzinfo is _UTC:
        # The common case, without the replace() copy: "...SS.ffffff+00:00" has 32
        # characters, a whole second "...SS+00:00" 25 (isoformat leaves out a zero fraction).
        text = moment.isoformat()
        if len(text) == 32:
            return text[:26] + "Z"
        if len(text) == 25:
            return text[:19] + ".000000Z"
    if moment.tzinfo is None:
        raise ValueError("naive datetime: lineage-ledger stores timezone-aware UTC times only")
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    # isoformat is C code and, for a UTC time with fixed microseconds, has one spelling.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time_text(text: Any) -> tuple[datetime, str]:
    """``(parse_time(text), format_time(of that))``: the same answers and errors, where
    ``text`` is canonical at a third of the cost (one C parse and a comparison with what
    :func:`format_time` writes back, instead of a regular expression, a parse, a copy and a
    second formatting). A text written back unchanged has the canonical form."""
    if type(text) is str and _CANONICAL_TIME(text) is not None:
        try:
            moment = _FROM_ISO(text)
        except ValueError:
            pass  # no such day (02-30), or a Python whose parser does not read "Z"
        else:
            # Each field's digits are in range and parsed as they stand, so format_time
            # writes them back as they are: the text is canonical, without writing it.
            if moment.tzinfo is _UTC:
                return moment, text
    moment = parse_time(text)  # raises ValueError for a text that is not canonical
    return moment, format_time(moment)


_UTC = timezone.utc
_FROM_ISO = datetime.fromisoformat
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
# The canonical spelling, each field in its range (ASCII digits: \d also matches others; an
# hour of 24, which some parsers take for the next day, is not one).
# Control characters a one-line text (a checkpoint's origin, a key's name) may not hold.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_CANONICAL_TIME = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z\Z"
).match


def parse_time(text: str) -> datetime:
    if not isinstance(text, str) or not _TIME.match(text):
        raise ValueError(f"not a canonical UTC time: {text!r}")
    # fromisoformat is C code; strptime costs ~20 us, which dominated decoding.
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
