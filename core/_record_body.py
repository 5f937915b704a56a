"""A record's canonical bytes parsed and checked in one pass of ``msgspec``'s typed decoder:
the common case of :meth:`Record.decode <._model.Record.decode>`.

Every reader proves and decodes the records it answers from; checking each field of a
task-shaped record in Python after a plain parse (``artifact_map`` of both maps, the status,
the attempt, the strings) was two thirds of decoding it (16 us, of which parsing and encoding
again took 3). Here the type below checks most of it in C while parsing: the version, the
status among :data:`~._model.STATUSES`, a positive attempt, strings where strings belong,
each artifact entry exactly ``{"blake3": 64 lowercase hex digits, "size": n >= 0}``.

What the type cannot say is left to the caller (:meth:`Record.decode`): the times' canonical
text, and the paths' normal form. And what it does not hold is not let through: an entry
with a ``type`` or ``alias_of`` (a directory, an alias), or any key the type does not name,
is dropped by the typed decoder, so encoding the value again no longer gives ``data`` and
the answer is None: the general path decides, with its own error. The bytes must encode
back exactly, as :func:`~._canonical.canonical_object` requires, under the same conditions
(no backslash, no float: see there), so the value returned is what the general path parses.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["typed_body"]

_CODEC: Any = None


def _codec() -> Any:
    """The typed decoder and the sorted encoder, built once (importing msgspec only here:
    the core does not import it for a command that reads a few records)."""
    from typing import Annotated, Literal, TypedDict

    import msgspec

    from ._canonical import _refuse_float

    # Built by call, not by class statement: this module's annotations are strings (the
    # __future__ import), which msgspec would look up among the module's names.
    Entry = TypedDict("Entry", {  # type: ignore[misc]  # noqa: UP013 (see above)
        "blake3": Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")],
        "size": Annotated[int, msgspec.Meta(ge=0)],
    })
    # Every key of Record.to_dict(), each as the general path's checks want it.
    Body = TypedDict("Body", {  # type: ignore[misc]  # noqa: UP013
        "v": Literal[1],
        "engine": str, "run_id": str, "task_id": str, "task_name": str,
        "status": Literal["succeeded", "failed", "cached"],
        "attempt": Annotated[int, msgspec.Meta(ge=1)],
        "started": str, "ended": str,
        "code_digest": str | None,
        "parameters": dict[str, Any], "environment": dict[str, Any], "extra": dict[str, Any],
        "inputs": dict[str, Entry], "outputs": dict[str, Entry],
    })
    return (msgspec.json.Decoder(Body, float_hook=_refuse_float).decode,
            msgspec.json.Encoder(order="sorted").encode)


def typed_body(data: bytes) -> dict[str, Any] | None:
    """``from_canonical(data)`` where ``data`` is shown to be the canonical bytes of a
    version-1 record whose fields all have the types, values and entries above; None where
    that is not shown (the caller takes the general path, for its answer or its error).

    Before msgspec is imported (a command that reads a few records does not import it:
    :func:`~._canonical.canonical_object` imports it after 500), None. Strings: ``data``
    holds no backslash, so none of them holds NUL or any control character (JSON can only
    write those escaped), which is what the general path checks of the four names."""
    global _CODEC
    if b"\\" in data:
        return None
    if _CODEC is None:
        if "msgspec" not in sys.modules:
            return None
        _CODEC = _codec()
    decode, encode = _CODEC
    try:
        value = decode(data)
        same = encode(value) == data
    except (ValueError, TypeError, OverflowError, RecursionError):  # msgspec's errors are ValueErrors
        return None
    return value if same else None
