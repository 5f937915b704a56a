"""The BAASH wire format: versioned, schema-checked JSON frames, and nothing that carries code.

Every message on a socket is one frame: a 4-byte big-endian length (at most
:data:`MAX_FRAME`), then one canonical JSON object (sorted keys, no spaces, ASCII)::

    {"kind": "<message kind>", "v": 1, ...the kind's fields...}

A decoder is given the table of kinds its end accepts (:data:`CLIENT_REQUESTS`,
:data:`ANSWERS`, :data:`TO_DAEMON`, :data:`TO_GATEWAY`) and checks the version, the kind,
that every field of the kind is there with its type and range, and that there is no
other field. Anything else raises :class:`WireError` (a ``ValueError``) and nothing else:
a truncated frame, an oversized one, invalid UTF-8 or JSON, NaN or infinities, a
duplicate key, nesting past the recursion limit, an int of 5,000 digits. Receivers act only on
a decoded message, so a malformed one changes no state. The field checks themselves are
:mod:`._wire_schema`'s (re-exported here); this module holds the frames and the kinds.

Between the MPI ranks, mpi4py's pickle is replaced by :func:`mpi_dumps`/:func:`mpi_loads`
(:func:`install_mpi_codec`): tagged JSON that builds only lists, tuples, dicts, bytes,
blocks, records and decisions. No pickle, marshal or YAML is decoded anywhere here.

Blocks keep their bytes exactly: header and record bodies are carried as latin-1 text,
which maps every byte to one code point and back, so nothing is re-encoded on the way.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from typing import Any

from lineage_ledger._model import StoredBlock, StoredRecord

from ._wire_schema import (
    MAX_ITEMS,
    Bool,
    Check,
    Enum,
    Int,
    Json,
    List,
    Map,
    Num,
    Obj,
    Opt,
    Str,
    Tup,
    WireError,
    _fail,
    _fields,
    _show,
)

__all__ = [
    "ANSWERS", "CLIENT_REQUESTS", "MAX_FRAME", "ROLES", "TO_DAEMON", "TO_GATEWAY", "VERSION", "TruncatedFrame",
    "WireError",
    "block_from_wire", "block_to_wire", "decode", "encode", "install_mpi_codec", "mpi_dumps", "mpi_loads",
    "receive", "record_from_wire", "record_to_wire", "recv_frame", "send", "send_frame",
]

VERSION = 1
MAX_FRAME = 64 << 20          # bytes of one frame's payload
MAX_TEXT = 32 << 20           # characters of one string (a block's record body may be large)
ROLES = ("admin", "provider", "user")
_LENGTH = struct.Struct(">I")


class TruncatedFrame(WireError):
    """The connection closed in the middle of a frame."""


# -- frames -------------------------------------------------------------------------------
def send_frame(sock: socket.socket, payload: bytes, deadline: float | None = None) -> None:
    """One frame; with ``deadline`` (``time.monotonic()``), all of it by then or TimeoutError."""
    if len(payload) > MAX_FRAME:
        raise WireError(f"message of {len(payload)} bytes is over the {MAX_FRAME}-byte frame limit")
    data = _LENGTH.pack(len(payload)) + payload
    if deadline is None:
        sock.sendall(data)
    else:
        send_by(sock, data, deadline)


def _left(sock: socket.socket, deadline: float) -> None:
    """Give the socket's next operation what is left until ``deadline``, or raise TimeoutError.
    A timeout per operation let a peer that took a byte (or sent one) now and then hold the
    connection for as long as it liked."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the peer took longer than it may")
    sock.settimeout(left)


def send_by(sock: socket.socket, data: bytes, deadline: float) -> None:
    """``sock.sendall(data)``, all of it by ``deadline`` (``time.monotonic()``) or TimeoutError
    (then the connection is out of step: close it). Sent in pieces, each given what is left:
    an SSL socket's ``sendall`` gives its timeout to each piece."""
    view = memoryview(data)
    while view:
        _left(sock, deadline)
        view = view[sock.send(view[:1 << 18]):]


def _recv_exact(sock: socket.socket, size: int, first: bool = False, deadline: float | None = None) -> bytes:
    """``size`` bytes; ConnectionError on a close before the first byte of a frame, else TruncatedFrame;
    with ``deadline`` (``time.monotonic()``), TimeoutError if they have not all come by then."""
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            _left(sock, deadline)
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            if chunks or not first:
                raise TruncatedFrame(f"truncated frame: the connection closed {size} bytes short")
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _announced(sock: socket.socket, limit: int, deadline: float | None = None) -> int:
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size, first=True, deadline=deadline))
    if size > limit:
        raise WireError(f"a frame of {size} bytes was announced; the limit is {limit}")
    return int(size)


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> bytes:
    return _recv_exact(sock, _announced(sock, limit))


# -- blocks and records -------------------------------------------------------------------
def _latin1(value: Any, path: str) -> bytes:
    text = Str(MAX_TEXT)(value, path)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise _fail(path, "carries a character outside latin-1 (bytes travel as latin-1 text)") from None


_PAIRS = List(Tup(Str(), Str(256)))


def record_to_wire(record: StoredRecord) -> list[Any]:
    return [record.id, record.body.decode("latin-1"), record.run_id,
            [list(p) for p in record.inputs], [list(p) for p in record.outputs]]


def record_from_wire(item: Any, path: str = "record") -> StoredRecord:
    if type(item) is not list or len(item) != 5:
        raise WireError(f"malformed record on the wire: {path}: expected a list of 5 items, got {_show(item)}")
    try:
        rid, body, run_id, inputs, outputs = item
        return StoredRecord(Str(256)(rid, f"{path}.id"), _latin1(body, f"{path}.body"),
                            Str(1024)(run_id, f"{path}.run_id"),
                            tuple(_PAIRS(inputs, f"{path}.inputs")), tuple(_PAIRS(outputs, f"{path}.outputs")))
    except WireError as exc:
        raise WireError(f"malformed record on the wire: {exc}") from None


def block_to_wire(block: StoredBlock) -> list[Any]:
    return [block.height, block.id, block.header.decode("latin-1"),
            [record_to_wire(r) for r in block.records]]


def block_from_wire(item: Any, path: str = "block") -> StoredBlock:
    try:
        if type(item) is not list or len(item) != 4:
            raise _fail(path, f"expected a list of 4 items, got {_show(item)}")
        height, block_id, header, records = item
        if type(records) is not list or len(records) > MAX_ITEMS:
            raise _fail(f"{path}.records", f"expected a list, got {_show(records)}")
        return StoredBlock(Int()(height, f"{path}.height"), Str(256)(block_id, f"{path}.id"),
                           _latin1(header, f"{path}.header"),
                           tuple(record_from_wire(r, f"{path}.records[{i}]") for i, r in enumerate(records)))
    except WireError as exc:
        raise WireError(f"malformed block on the wire: {exc}") from None


BLOCK: Check = block_from_wire
RECORD: Check = record_from_wire

# -- message kinds ------------------------------------------------------------------------
_ID = Str(256)
_LOCATED = List(Tup(Int(), Int(), RECORD))

#: client -> daemon
CLIENT_REQUESTS: dict[str, dict[str, Check]] = {
    "append": {"blocks": List(BLOCK, 1 << 16), "timeout": Opt(Num(0, 3600))},
    "head": {}, "record_count": {}, "status": {}, "ledgers": {}, "ping": {}, "whoami": {}, "checkpoint": {},
    "blocks": {"start": Int(), "stop": Opt(Int())},
    "known": {"ids": List(_ID)},
    "find": {"role": Enum("in", "out"), "path": Opt(Str()), "digest": Opt(Str(256))},
    "by_run": {"run_id": Str(1024)},
    "by_id_prefix": {"prefix": Str(256), "limit": Int(0, 10_000)},
    "register": {"uid": Int(0, (1 << 32) - 2), "roles": List(Enum(*ROLES), len(ROLES))},
    "revoke": {"uid": Int(0, (1 << 32) - 2)},
}
#: daemon -> client
ANSWERS: dict[str, dict[str, Check]] = {
    "error": {"status": Enum("conflict", "rejected", "unavailable", "bad_request", "forbidden", "failed"),
              "message": Str(64 << 10)},
    "committed": {}, "pong": {},
    "head": {"head": Opt(Tup(Int(), _ID))},
    "blocks": {"blocks": List(BLOCK)},
    "count": {"count": Int()},
    "known": {"known": List(_ID)},
    "found": {"found": _LOCATED},
    "status": {"status": Json},
    "ledgers": {"ledgers": List(Json, 1 << 16)},
    "identity": {"uid": Opt(Int(0, (1 << 32) - 1)), "subject": Opt(Str(1024)), "roles": List(Enum(*ROLES), len(ROLES))},
    "registered": {"uid": Int(0, (1 << 32) - 2), "roles": List(Enum(*ROLES), len(ROLES))},
    "checkpoint": {"origin": Str(256), "note": Opt(Str(64 << 10)), "keys": List(Str(512), 1 << 12)},
}
_MODE = Enum("baash", "pbft", "replicate")
#: MPI ranks -> daemon (heartbeat connections and the gateway's control connection)
TO_DAEMON: dict[str, dict[str, Check]] = {
    "rank": {"rank": Int(0, 1 << 24), "pid": Int(1, 1 << 31)},
    "beat": {},
    "hello": {"pids": List(Int(1, 1 << 31), 1 << 24), "restore_seconds": Num(), "size": Int(1, 1 << 24),
              "clusters": Int(1, 1 << 24), "mode": _MODE, "subclusters": List(List(Int(0, 1 << 24))),
              "idle": List(Int(0, 1 << 24)), "head": Tup(Int(), Opt(_ID)), "gateway_pid": Int(1, 1 << 31)},
    "heartbeat": {"at": Num(0, 1e11)},
    "result": {"round_id": Int(), "outcomes": List(Tup(Enum("committed", "rejected", "conflict", "unavailable"),
                                                     Str(64 << 10))),
               "info": Obj(acks=Int(), agreeing=Int(), ways=Map(Int()), timing=Map(Num()),
                           failed_validators=List(Int())),
               "checkpoint": Str(64 << 10)},
    "ledgers": {"ledgers": List(Json, 1 << 24)},
}
#: daemon -> the gateway rank
TO_GATEWAY: dict[str, dict[str, Check]] = {
    "round": {"round_id": Int(), "blocks": List(BLOCK, 1 << 16), "groups": List(Tup(Int(), Int()), 1 << 16)},
    "ledgers": {}, "stop": {},
}


# -- messages -----------------------------------------------------------------------------
def canonical(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False).encode()


def encode(kind: str, **fields: Any) -> bytes:
    return canonical({"kind": kind, "v": VERSION, **fields})


def _no_constants(name: str) -> Any:
    raise WireError(f"{name} is not a number this format carries")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise WireError("an object repeats a key")
    return out


def parse_json(payload: bytes | bytearray | memoryview) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN or infinities; WireError otherwise."""
    try:
        text = bytes(payload).decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constants)
    except WireError:
        raise
    except RecursionError:
        raise WireError("nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int digit limits
        raise WireError(f"not a JSON message: {str(exc)[:200]}") from None


def decode(payload: bytes | bytearray | memoryview, kinds: dict[str, dict[str, Check]]) -> dict[str, Any]:
    """One message of ``kinds``, its fields checked: ``{"kind": ..., field: value, ...}``."""
    message = parse_json(payload)
    if type(message) is not dict:
        raise WireError(f"a message is a JSON object, got {_show(message)}")
    version = message.pop("v", None)
    if version != VERSION:
        raise WireError(f"wire format version {_show(version)} is not {VERSION}")
    kind = message.pop("kind", None)
    if type(kind) is not str or kind not in kinds:
        raise WireError(f"unknown message kind {_show(kind)}; this end accepts {', '.join(sorted(kinds))}")
    return {"kind": kind, **_fields(message, kinds[kind], kind)}


def send(sock: socket.socket, kind: str, **fields: Any) -> None:
    send_frame(sock, encode(kind, **fields))


def receive(sock: socket.socket, kinds: dict[str, dict[str, Check]], limit: int = MAX_FRAME) -> dict[str, Any]:
    return decode(recv_frame(sock, limit), kinds)


# -- between MPI ranks: tagged JSON instead of pickle --------------------------------------
def _tag(value: Any) -> Any:
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        if not math.isfinite(value):
            raise WireError("a non-finite number cannot cross between ranks")
        return value
    if kind is list:
        return [_tag(v) for v in value]
    if kind is tuple:
        return {"t": [_tag(v) for v in value]}
    if kind is dict:
        return {"m": [[_tag(k), _tag(v)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.decode("latin-1")}
    if kind is StoredBlock:
        return {"B": block_to_wire(value)}
    if kind is StoredRecord:
        return {"R": record_to_wire(value)}
    from .consensus import Decision

    if kind is Decision:
        return {"D": [value.valid, value.how, value.voters, value.agreeing, value.reason]}
    raise WireError(f"{kind.__name__} does not cross between ranks")


_DECISION = Tup(Bool, Str(64), Int(), Int(), Str(64 << 10))


def _untag(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) != 1:
        raise WireError("a tagged value has exactly one key")
    (tag, body), = pairs
    if tag == "t" and type(body) is list:
        return tuple(body)
    if tag == "m" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) in (list, dict):
                raise WireError("a map entry is a [key, value] pair with a hashable key")
            out[pair[0]] = pair[1]
        return out
    if tag == "b":
        return _latin1(body, "bytes")
    if tag == "B":
        return block_from_wire(body)
    if tag == "R":
        return record_from_wire(body)
    if tag == "D":
        from .consensus import Decision

        return Decision(*_DECISION(body, "decision"))
    raise WireError(f"unknown tag {tag!r} between ranks")


def mpi_dumps(value: Any, *_protocol: Any) -> bytes:
    return canonical(_tag(value))


def mpi_loads(payload: Any, *_ignored: Any) -> Any:
    try:
        text = bytes(memoryview(payload)).decode("utf-8")
        return json.loads(text, object_pairs_hook=_untag, parse_constant=_no_constants)
    except WireError:
        raise
    except RecursionError:
        raise WireError("nested too deeply") from None
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise WireError(f"not a message between ranks: {str(exc)[:200]}") from None


def install_mpi_codec() -> None:
    """Make mpi4py's object send/recv use :func:`mpi_dumps`/:func:`mpi_loads`, not pickle."""
    from mpi4py import MPI

    MPI.pickle.__init__(mpi_dumps, mpi_loads)  # type: ignore[misc]  # mpi4py's documented way

