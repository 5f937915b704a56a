"""What an engine reports of a task: :class:`TaskRun`, the digest of its code, and its
values made JSON (:func:`jsonable`). Light: a plugin builds these without the capture."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blake3 import blake3

__all__ = ["TaskRun", "code_digest", "jsonable"]


def code_digest(code: str | bytes) -> str:
    """BLAKE3 of a task's code (a shell command, a script's source, a function's source)."""
    # surrogateescape: the bytes of code that is not UTF-8 (a shell command given such text).
    return blake3(code.encode("utf-8", "surrogateescape") if isinstance(code, str) else code).hexdigest()


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON value with one spelling for ``value``: what engines hand over is not always JSON.

    Tuples become lists, sets sorted lists, non-finite floats and unknown objects their
    ``str``; mapping keys become strings. Deep structures are cut at 32 levels.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth >= 32:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [jsonable(v, _depth + 1) for v in value]
        return sorted(items, key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


@dataclass
class TaskRun:
    """One finished task try as an engine saw it; paths are hashed by the capture."""

    task_id: str
    task_name: str
    status: str  # succeeded, failed or cached
    started: datetime
    ended: datetime
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    #: Digests the caller already has ({path: {"blake3": hex, "size": n}}); they win over disk.
    known: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    code_digest: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    environment_extra: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    #: Digests of the outputs, when the caller has them. Given (not None), ``known`` serves the
    #: inputs only: a file a task updates in place was read with one digest and written with another.
    known_outputs: Mapping[str, Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        # Said to the caller here, not by the capture's worker later: a time it cannot store
        # made the worker log an error and drop the record, the task never recorded.
        for name in ("started", "ended"):
            moment = getattr(self, name)
            if not isinstance(moment, datetime):
                raise TypeError(f"TaskRun.{name} must be a datetime, not {type(moment).__name__}")
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ValueError(f"TaskRun.{name} is a naive datetime ({moment.isoformat()}): lineage-ledger "
                                 "stores timezone-aware times only (datetime.now(timezone.utc), lineage_ledger.utcnow())")
