"""Framing and encodings shared by the client, the daemon and the MPI ranks.

Every message on a socket is one frame: a 4-byte big-endian length, then the payload.
Clients speak JSON (language-neutral, no extra dependency); the daemon and the MPI job's
gateway rank speak pickle, because both ends are this package on loopback and the blocks
already travel between ranks pickled by mpi4py.

Blocks keep their bytes exactly: header and record bodies are carried as latin-1 text,
which maps every byte to one code point and back, so nothing is re-encoded on the way.
"""

from __future__ import annotations

import json
import pickle
import socket
import struct
from collections.abc import Sequence
from typing import Any

from lineage_ledger._errors import BackendUnavailable
from lineage_ledger._model import StoredBlock, StoredRecord

__all__ = [
    "MAX_FRAME", "block_from_wire", "block_to_wire", "recv_frame", "recv_json", "recv_pickle",
    "record_from_wire", "record_to_wire", "send_frame", "send_json", "send_pickle",
]

MAX_FRAME = 1 << 30
_LENGTH = struct.Struct(">I")


def send_frame(sock: socket.socket, payload: bytes) -> None:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"message of {len(payload)} bytes is over the {MAX_FRAME}-byte frame limit")
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-frame" if chunks else "connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"frame of {size} bytes announced; refusing")
    return _recv_exact(sock, size)


def send_json(sock: socket.socket, message: Any) -> None:
    send_frame(sock, json.dumps(message, separators=(",", ":")).encode())


def recv_json(sock: socket.socket) -> Any:
    return json.loads(recv_frame(sock))


def send_pickle(sock: socket.socket, message: Any) -> None:
    send_frame(sock, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv_pickle(sock: socket.socket) -> Any:
    return pickle.loads(recv_frame(sock))


def record_to_wire(record: StoredRecord) -> list[Any]:
    return [record.id, record.body.decode("latin-1"), record.run_id,
            [list(p) for p in record.inputs], [list(p) for p in record.outputs]]


def record_from_wire(item: Sequence[Any]) -> StoredRecord:
    try:
        rid, body, run_id, inputs, outputs = item
        if not (isinstance(rid, str) and isinstance(body, str) and isinstance(run_id, str)):
            raise TypeError("id, body and run id must be text")
        return StoredRecord(rid, body.encode("latin-1"), run_id,
                            tuple([(p, d) for p, d in inputs]), tuple([(p, d) for p, d in outputs]))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"malformed record on the wire: {exc}") from exc


def block_to_wire(block: StoredBlock) -> list[Any]:
    return [block.height, block.id, block.header.decode("latin-1"),
            [record_to_wire(r) for r in block.records]]


def block_from_wire(item: Sequence[Any]) -> StoredBlock:
    try:
        height, block_id, header, records = item
        return StoredBlock(int(height), str(block_id), str(header).encode("latin-1"),
                           tuple(record_from_wire(r) for r in records))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"malformed block on the wire: {exc}") from exc


def connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise BackendUnavailable(f"cannot reach the BAASH service at {host}:{port}: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
