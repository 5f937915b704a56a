"""The full audit's check that every record body is one that readers read: its bytes hash to
its id (:mod:`.chain`), and :meth:`Record.decode <lineage_ledger._model.Record.decode>`
accepts them. Before, the audit read only what the index holds (run id, end time, paths and
digests), so a body with a bad status, a wrong field type, an unknown field, a time that is
not canonical or keys out of order, written by a writer that bypassed :class:`Record` (an
attacker, another language's buggy writer), passed the audit (exit 0) while ``show``,
``log`` and ``why`` refused it.

One rule, :meth:`Record.decode`'s, applied at C speed for the common case: each body is
parsed by ``msgspec`` into the typed struct of :func:`_structs` (the version, the status, a
positive attempt, strings and mappings where they belong, every artifact entry's keys and
types, no unknown or missing field), which is also the view the rest of the audit reads;
the struct encodes back to the body byte for byte (canonical: sorted keys, no whitespace,
no duplicate key, each number and string as Python's ``json`` writes it); and, a block at a
time, each digest is lowercase hex and each time has the canonical spelling of a day that
exists. That is a strict subset of what :meth:`Record.decode` accepts. Any record it does
not show to be readable is a *suspect*, and :meth:`Record.decode` itself gives the verdict on
it (tests/test_audit_records.py compares the two verdicts, by hypothesis):

* a body with a backslash (an escaped character, a NUL among them: left to the general path,
  as :func:`~lineage_ledger._canonical.canonical_object` leaves it), or naming an
  ``alias_of`` (whose target must be a real path of the same map);
* a float that is not spelled as Python writes it back (``1e16`` for ``1e+16``; the check is
  per float, so float parameters stay on the fast path);
* any value the struct refuses that :meth:`Record.decode` may accept (``"attempt": true``).

The typed struct replaces the index view the audit decoded before, whose entries held only
the digest (:mod:`.audit_bulk` takes each entry's digest for its comparison with the index).
Cost, for a task-shaped record (about 700 bytes, 5-8 entries), on a quiet core: parsing about
1 us more than the index view, encoding again 1.3 us, the block checks 0.5 us, the bulk
check's digests 0.5-1 us. The structs are not tracked by the garbage collector (they hold
no cycle), which the audit in one process runs.
"""

from __future__ import annotations

import re
from itertools import chain, compress
from operator import attrgetter, methodcaller, ne
from typing import Any

from .._errors import RecordTampered
from .._order import AFTER_KEY

__all__ = ["BODIES_FORMAT", "check_suspects", "decode_checked"]

_started, _ended = attrgetter("started"), attrgetter("ended")
_inputs, _outputs, _blake3 = attrgetter("inputs"), attrgetter("outputs"), attrgetter("blake3")
_values = methodcaller("values")
_HEX = b"0123456789abcdef"
_HEX_NUL = _HEX + b"\x00"
# Canonical times (``_canonical.format_time``) of days every year has: day 29 of February is
# a suspect, decided by Record.decode (which asks the calendar).
_SURE_TIME = (r"[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
              r"|(?:0[13578]|1[02])-31)T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z")
_TIME = re.compile(_SURE_TIME + r"\Z").match
_TIMES = re.compile(f"(?:{_SURE_TIME})*\\Z").match  # a block's times, joined: one C scan

_CODEC: tuple[Any, Any, Any, Any] | None = None

#: The rule a tree head's ``bodies`` says every record under it was checked by (0: not every
#: record was). Bump it whenever :meth:`Record.decode` comes to refuse what it accepted: a
#: head of the old rule then has its records checked again by the next audit.
BODIES_FORMAT = 3  # 2: Record.decode refuses "v": true (f0cc424), which rule 1 let through;
# 3: and "attempt": true and an entry's "size": true, which rule 2 let through


def _exact_float(text: str) -> float:
    """A float as ``json`` parses it, where ``json`` writes it back as it is (``repr``)."""
    value = float(text)
    if repr(value) != text:
        raise ValueError("a float that Python's json spells otherwise")
    return value


def _codec() -> tuple[Any, Any, Any, Any]:
    """The typed decoder, the sorted encoder, the lenient index view's decoder (for a suspect
    that :meth:`Record.decode` accepts) and msgspec's decode error; built on first use, so
    that importing this module does not import msgspec."""
    global _CODEC
    import msgspec

    body, view = _structs(msgspec)
    _CODEC = (msgspec.json.Decoder(body, float_hook=_exact_float).decode,
              msgspec.json.Encoder(order="sorted").encode, msgspec.json.Decoder(view).decode,
              msgspec.DecodeError)
    return _CODEC


def _structs(msgspec):  # unannotated: mypy takes a struct built at run time for no type
    """The typed record body, and the index view (what the audit read of a body before)."""
    from typing import Annotated, Literal

    meta, unset = msgspec.Meta, msgspec.UNSET
    entry = msgspec.defstruct("Entry", [
        ("blake3", Annotated[str, meta(min_length=64, max_length=64)]),  # hex: a block at a time
        ("size", Annotated[int, meta(ge=0)]),
        ("alias_of", str | msgspec.UnsetType, unset),  # its rules: a suspect, Record.decode's
        ("type", Literal["dir"] | msgspec.UnsetType, unset),
    ], forbid_unknown_fields=True, gc=False)
    # Record.to_dict()'s keys, in sorted order (the encoder sorts them too), every one required.
    # A time's 27 characters are checked here, so that a block's times joined are checked
    # as a whole (no two texts can join up into canonical ones).
    time = Annotated[str, meta(min_length=27, max_length=27)]
    body = msgspec.defstruct("RecordBody", [
        ("attempt", Annotated[int, meta(ge=1)]), ("code_digest", str | None), ("ended", time),
        ("engine", str), ("environment", dict), ("extra", dict), ("inputs", dict[str, entry]),
        ("outputs", dict[str, entry]), ("parameters", dict), ("run_id", str), ("started", time),
        ("status", Literal["succeeded", "failed", "cached"]), ("task_id", str), ("task_name", str),
        ("v", Literal[1]),
    ], forbid_unknown_fields=True, gc=False)
    digest = msgspec.defstruct("Digest", [("blake3", str)])
    # Of ``extra``, the one key the index's end time depends on (_order.AFTER_KEY), of any type.
    after = msgspec.defstruct("After", [("after", Any, None)], rename={"after": AFTER_KEY}, frozen=True)
    view = msgspec.defstruct("IndexView", [("run_id", str), ("ended", str), ("inputs", dict[str, digest]),
                                           ("outputs", dict[str, digest]), ("extra", after, after())])
    return body, view


def decode_checked(block, first_leaf: int = 0, checked_below: int = 0,
                   digests: list[str] | None = None) -> tuple[list[Any], list[int]]:
    """The views of ``block``'s record bodies (``run_id``, ``ended``, ``inputs`` and
    ``outputs``, each entry with its ``blake3``), and the positions of the suspects, for
    :func:`check_suspects` once the paths are checked. ``RecordTampered`` for a body that
    is not even readable as an index view.

    ``block``'s first record is leaf ``first_leaf``; its records below leaf ``checked_below``
    are read as the index view only: a repeated audit passes ``checked_below`` = the size of
    a remembered head whose records were all checked by this rule (its ``bodies`` is
    :data:`BODIES_FORMAT`), and adopts what it finds only where its tree holds that head's as
    its prefix (``FullAudit._check_extends``): the same bytes, which were found readable.
    (The names of those records are carried the same way.)

    ``digests``, where given, gets the digests of every entry joined by NUL, record by record,
    inputs then outputs, each map in its body's order (as the bulk check compares them with
    the index: ``audit_bulk.index_columns``), where the check of them as lowercase hex joined
    them so: every record of the block checked (none spared) and none a suspect; else
    nothing. Joining them once for both costs 1.3 us a record less."""
    cut = min(len(block.bodies), checked_below - first_leaf)
    if cut <= 0:
        return _checked(block, 0, digests)
    _decode, _encode, view, _error = _CODEC or _codec()
    try:
        spared = list(map(view, block.bodies[:cut]))
    except (ValueError, RecursionError):  # unreadable: the whole check names the record
        return _checked(block, 0, digests)
    if cut == len(block.bodies):
        return spared, []
    views, suspects = _checked(block, cut)
    return spared + views, suspects


def _checked(block, start: int, digests: list[str] | None = None) -> tuple[list[Any], list[int]]:
    """:func:`decode_checked` of the records of ``block`` from position ``start`` on."""
    decode, encode, _view, _error = _CODEC or _codec()
    bodies = block.bodies if not start else block.bodies[start:]
    try:
        views: list[Any] = list(map(decode, bodies))
    except (ValueError, TypeError, RecursionError):  # msgspec's DecodeError is a ValueError
        views = [_decode_one(decode, body) for body in bodies]
    try:
        encoded = list(map(encode, views))
    except (ValueError, TypeError, OverflowError, RecursionError):
        encoded = [_encode_one(encode, view) for view in views]
    if encoded == (bodies if type(bodies) is list else list(bodies)):
        suspects: set[int] = set()
    else:
        suspects = set(compress(range(len(bodies)), map(ne, encoded, bodies)))
    joined = b"".join(bodies)
    if b"\\" in joined or b'"alias_of":' in joined:
        suspects.update(i for i, body in enumerate(map(bytes, bodies)) if b"\\" in body or b'"alias_of":' in body)
    hexes: str | None = None  # the digests joined by NUL, where every view is checked at once
    if suspects:
        fine = [view for i, view in enumerate(views) if i not in suspects]
        hexed = _hex("".join(map(_blake3, chain.from_iterable(map(_values, chain(map(_inputs, fine),
                                                                                 map(_outputs, fine)))))))
    else:  # every view decoded: their digests joined as the bulk check compares them
        fine = views
        hexes, hexed = _hex_joined(list(map(_inputs, views)), list(map(_outputs, views)))
    if not _TIMES("".join([*map(_started, fine), *map(_ended, fine)])) or not hexed:
        suspects.update(i for i, view in enumerate(views) if i not in suspects and not _fine(view))
    elif hexes is not None and digests is not None:
        digests.append(hexes)
    for i in suspects:
        if views[i] is None:  # the typed decoder refused it: read the index view alone
            views[i] = _view_of(block, start + i)
    return views, sorted(start + i for i in suspects)


def check_suspects(block, suspects: list[int]) -> None:
    """``RecordTampered`` naming the first suspect of ``block`` that :meth:`Record.decode`
    refuses, with its reason."""
    from .._model import Record

    for position in suspects:
        try:
            Record.decode(block.bodies[position])
        except Exception as err:  # noqa: BLE001 - whatever a reader fails with, it cannot read it
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            raise RecordTampered(
                f"record {str(block.ids[position])[:16]} (block {block.height}, position {position}) "
                f"is not readable: {reason[:300]}. Its bytes hash to its id, but no lineage-ledger writes "
                "such a record, and readers (show, log, why) refuse it: a writer that bypassed its checks did",
                height=block.height) from None


def _decode_one(decode, body: bytes) -> Any:
    try:
        return decode(body)
    except (ValueError, TypeError, RecursionError):
        return None


def _encode_one(encode, view: Any) -> bytes | None:
    if view is None:
        return None
    try:
        return encode(view)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None


def _view_of(block, position: int) -> Any:
    """The index view of a body the typed decoder refused; ``RecordTampered`` where even
    that cannot be read (then no reader reads it either)."""
    _decode, _encode, view, error = _CODEC or _codec()
    try:
        return view(block.bodies[position])
    except (error, RecursionError) as err:  # nested past what a parser follows: unreadable too
        raise RecordTampered(f"block {block.height}: record {str(block.ids[position])[:16]} (position "
                             f"{position}) is not readable ({err})", height=block.height) from err


def _hex(digests: str) -> bool:
    """Every character lowercase hex (one past ASCII encodes to bytes that are not hex either)."""
    return not digests.encode().translate(None, _HEX)


def _hex_joined(inputs: list[Any], outputs: list[Any]) -> tuple[str, bool]:
    """The digests of these maps joined by NUL, record by record (inputs, then outputs), and
    whether every one is lowercase hex: every character hex or NUL, and exactly one NUL
    between two digests, so none holds one (each is 64 characters: the typed struct's rule)."""
    entries = sum(map(len, inputs)) + sum(map(len, outputs))
    digests = "\x00".join(map(_blake3, chain.from_iterable(map(_values, chain.from_iterable(
        zip(inputs, outputs, strict=True))))))
    return digests, not entries or (not digests.encode().translate(None, _HEX_NUL)
                                    and digests.count("\x00") == entries - 1)


def _fine(view: Any) -> bool:
    """The block checks of :func:`decode_checked` for one record's view."""
    if _TIME(view.started) is None or _TIME(view.ended) is None:
        return False
    return all(_hex(entry.blake3) for side in (view.inputs, view.outputs) for entry in side.values())
