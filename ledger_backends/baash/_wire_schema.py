"""Schemas for the BAASH wire format: checks that a decoded JSON value has the type, range
and size a message field allows, and nothing more.

A schema is a :data:`Check`: a function of the value and its path in the message (for the
error) that returns the value as it is to be used or raises :class:`WireError`. The
constructors read as types (``List(Tup(Int(), Str(256)))``) and build such checks; an
object's fields are checked all at once, so an unknown or missing field is refused too.
Nothing here knows a message kind: :mod:`._wire` puts these together into its tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "MAX_DEPTH", "MAX_ITEMS", "Bool", "Check", "Enum", "Int", "Json", "List", "Map", "Num", "Obj", "Opt", "Str",
    "Tup", "WireError",
]

MAX_ITEMS = 1 << 20           # elements of one list
MAX_DEPTH = 16                # nesting of free-form JSON (status, ledger reports)


class WireError(ValueError):
    """A frame or message that is not one of the format's: refused, nothing acted on."""



Check = Callable[[Any, str], Any]


def _fail(path: str, message: str) -> WireError:
    return WireError(f"{path}: {message}")


def Int(lo: int = 0, hi: int = (1 << 63) - 1) -> Check:  # noqa: N802 - schema constructors read as types
    def check(value: Any, path: str) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise _fail(path, f"expected an integer in [{lo}, {hi}], got {_show(value)}")
        return value
    return check


def Num(lo: float = 0.0, hi: float = 1e12) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> float:
        if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
            raise _fail(path, f"expected a number in [{lo}, {hi}], got {_show(value)}")
        return float(value)
    return check


def Str(limit: int = 4096) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> str:
        if type(value) is not str or len(value) > limit:
            raise _fail(path, f"expected text of at most {limit} characters, got {_show(value)}")
        return value
    return check


def Bool(value: Any, path: str) -> bool:  # noqa: N802
    if type(value) is not bool:
        raise _fail(path, f"expected true or false, got {_show(value)}")
    return value


def Enum(*choices: str) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> str:
        if type(value) is not str or value not in choices:
            raise _fail(path, f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value
    return check


def Opt(inner: Check) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)
    check.optional = True  # type: ignore[attr-defined]
    return check


def List(inner: Check, limit: int = MAX_ITEMS) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> list[Any]:
        if type(value) is not list or len(value) > limit:
            raise _fail(path, f"expected a list of at most {limit} items, got {_show(value)}")
        return [inner(item, f"{path}[{i}]") for i, item in enumerate(value)]
    return check


def Tup(*items: Check) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> tuple[Any, ...]:
        if type(value) is not list or len(value) != len(items):
            raise _fail(path, f"expected a list of {len(items)} items, got {_show(value)}")
        return tuple(item(v, f"{path}[{i}]") for i, (item, v) in enumerate(zip(items, value, strict=True)))
    return check


def Map(inner: Check, limit: int = 4096) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> dict[str, Any]:
        if type(value) is not dict or len(value) > limit:
            raise _fail(path, f"expected an object of at most {limit} entries, got {_show(value)}")
        return {k: inner(v, f"{path}.{k}") for k, v in value.items()}
    return check


def Obj(**fields: Check) -> Check:  # noqa: N802
    def check(value: Any, path: str) -> dict[str, Any]:
        if type(value) is not dict:
            raise _fail(path, f"expected an object, got {_show(value)}")
        return _fields(value, fields, path)
    return check


def Json(value: Any, path: str, depth: int = 0) -> Any:  # noqa: N802
    """Free-form data (status, ledger reports): JSON types only, nesting bounded."""
    if depth > MAX_DEPTH:
        raise _fail(path, f"nested deeper than {MAX_DEPTH}")
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise _fail(path, "not a finite number")
        return value
    if type(value) is list:
        return [Json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if type(value) is dict:
        return {k: Json(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    raise _fail(path, f"not JSON data: {_show(value)}")


def _fields(value: dict[str, Any], fields: dict[str, Check], path: str) -> dict[str, Any]:
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _fail(path, f"unknown field {unknown[0]!r}")
    out: dict[str, Any] = {}
    for name, check in fields.items():
        if name not in value:
            if getattr(check, "optional", False):
                out[name] = None
                continue
            raise _fail(path, f"missing field {name!r}")
        out[name] = check(value[name], f"{path}.{name}")
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
