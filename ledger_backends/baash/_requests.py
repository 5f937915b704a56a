"""Clients' requests to the daemon: read within a time, and decoded a few large ones at a time.

Each client connection has a thread of the daemon (:mod:`.daemon`). What one client could
make that thread do is bounded here: how long it waits for a request (``--idle-timeout``),
how many large requests are read and parsed at once (a gate), and how many JSON objects a
request may make the parser build.
"""

from __future__ import annotations

import re
import socket
import time
from contextlib import AbstractContextManager
from typing import Any

from ._wire import MAX_FRAME, Check, WireError, _announced, _recv_exact, decode

__all__ = ["IDLE_SECONDS", "LARGE_FRAME", "receive_large_gated"]

LARGE_FRAME = 64 << 10          # frames above this are read and decoded a few at a time
IDLE_SECONDS = 120.0  # a client's request must come within this (--idle-timeout)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # one JSON string (canonical: ASCII, escaped)


def _containers(payload: bytes) -> int:
    """JSON objects and arrays in ``payload`` outside its strings (a record body is a string
    full of braces); the strings are dropped only when the braces alone are too many."""
    count = payload.count(b"{") + payload.count(b"[")
    if count <= _most_containers(len(payload)):
        return count
    bare = _STRING.sub(b'""', payload)
    return bare.count(b"{") + bare.count(b"[")


def _most_containers(size: int) -> int:
    # Each array of a well-formed request holds a 64-digit id or digest or more: a request
    # cannot have more than one per 32 bytes. 20 million empty objects in 60 MiB are 1.6 GB.
    return size // 32 + 1024


def receive_large_gated(sock: socket.socket, kinds: dict[str, dict[str, Check]],
                        gate: AbstractContextManager[Any], idle: float = IDLE_SECONDS) -> dict[str, Any]:
    """:func:`receive` for a service's clients. ``json.loads`` makes 20 million objects of a
    60 MiB ``[{},{},...]`` (1.6 GB), and each connection has its thread: a frame over
    :data:`LARGE_FRAME` is read and decoded only under ``gate`` (a few at once), and any frame
    is refused unparsed if it has more objects and arrays than a request of that size can
    hold (frames just under 1 MiB, when only larger ones were checked and gated, were parsed
    on every connection at once: 100 of them took 1.6 GB).

    Time: a frame's length must come within ``idle`` seconds (a connection that sends
    nothing is closed: TimeoutError), and its body within ``idle`` seconds of that, or, for a
    large frame, of entering the gate: a deadline for the whole body, not for each read (a
    byte every half second held the gate's place for a week a MiB)."""
    size = _announced(sock, MAX_FRAME, time.monotonic() + idle)
    if size <= LARGE_FRAME:
        return _decode_request(_recv_exact(sock, size, deadline=time.monotonic() + idle), kinds)
    with gate:
        payload = _recv_exact(sock, size, deadline=time.monotonic() + idle)
        return _decode_request(payload, kinds)


def _decode_request(payload: bytes, kinds: dict[str, dict[str, Check]]) -> dict[str, Any]:
    containers = _containers(payload)
    if containers > _most_containers(len(payload)):
        raise WireError(f"a frame of {len(payload)} bytes with {containers} JSON objects and arrays; no request "
                        f"that size has more than {_most_containers(len(payload))}")
    return decode(payload, kinds)
