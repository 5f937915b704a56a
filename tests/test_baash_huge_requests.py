"""A BAASH client (allowed on the service) that sends huge malformed requests: the daemon
answers each with ``bad_request``, keeps serving, and its memory stays bounded.

Real service, raw frames on its Unix socket; the daemon's peak resident memory is read from
``/proc/PID/status`` (VmHWM), which the kernel keeps.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from lineage_ledger import build_block
from lineage_ledger.backends import open_backend
from tests.support.baash import BaashService
from tests.support.factories import make_records

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

MiB = 1 << 20


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _send(path: str, payload: bytes, answers: list[bytes]) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(300)
        sock.connect(path)
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        answers.append(sock.recv(1 << 16))


def test_huge_requests_on_several_connections_are_refused_in_bounded_memory(tmp_path):
    """Bug: a frame up to the 64 MiB limit was read and given to ``json.loads`` whole, on as
    many connections at once as a client opened. 60 MiB of ``[{},{},...]`` (20 million empty
    objects, refused only after parsing, as 'a message is a JSON object') took the daemon
    from 37 MB to 1.66 GB for one request; three at once on three connections, about 5 GB.
    Any allowed client, a read-only admin too, could make the service (or the node under
    it) run out of memory. Now: no more JSON objects and arrays outside strings than a request
    that size can hold (one per 32 bytes), and large frames read and decoded two at a time."""
    service = BaashService(tmp_path, 2)
    try:
        daemon = service.proc.pid
        before = _peak_kib(daemon)
        payload = b"[" + b"{}," * (20 * MiB) + b"{}]"
        answers: list[bytes] = []
        senders = [threading.Thread(target=_send, args=(str(service.socket), payload, answers)) for _ in range(3)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        assert len(answers) == 3 and all(b"bad_request" in a for a in answers), answers
        peak_mib = (_peak_kib(daemon) - before) // 1024
        print(f"\ndaemon peak memory grew by {peak_mib} MiB for 3 x 60 MiB malformed requests")
        assert peak_mib < 1024, f"the daemon grew by {peak_mib} MiB"
        backend = open_backend(service.url)  # and it still serves and commits
        backend.append([build_block([r.stored() for r in make_records(2, run_id="after")], backend.head()).stored()])
        assert backend.record_count() == 2
    finally:
        service.stop()


def test_a_large_append_whose_records_are_full_of_brackets_commits(tmp_path):
    """The other side of the bound: a 4 MiB append whose record carries a parameter of
    300,000 pairs (brackets in its body, a string on the wire) is no flood of objects, and
    commits; a record body is not counted as JSON structure."""
    from lineage_ledger._model import Record

    service = BaashService(tmp_path, 2)
    try:
        backend = open_backend(service.url)
        body = make_records(1, run_id="grid")[0].to_dict()
        body["parameters"] = {"grid": [[i, i + 1] for i in range(300_000)]}
        record = Record.from_dict(body).stored()
        assert len(record.body) > 4 * MiB and record.body.count(b"[") > 300_000
        backend.append([build_block([record], backend.head()).stored()])
        assert backend.record_count() == 1
        assert next(iter(backend.blocks(0, 1))).records[0].body == record.body
    finally:
        service.stop()


def test_many_requests_just_under_the_large_frame_size_are_refused_in_bounded_memory(tmp_path):
    """Bug: only frames over 1 MiB went through the gate and the count of JSON objects; a
    frame of 1 MiB less 3 bytes of ``[{},{},...]`` (350,000 empty objects) was parsed whole
    on each connection at once. An allowed client, a read-only admin too, sent 100 of them
    on 100 connections and the daemon grew by 1.5 GB (about 4 GB at the 256 connections one
    client may hold). Now every frame is counted, and frames over 64 KiB are gated."""
    service = BaashService(tmp_path, 2)
    try:
        daemon = service.proc.pid
        before = _peak_kib(daemon)
        payload = b"[" + b"{}," * ((1 << 20) // 3 - 2) + b"{}]"
        assert len(payload) <= 1 << 20
        connections = []
        for _ in range(100):  # all connected first, then all sent at once
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(300)
            conn.connect(str(service.socket))
            connections.append(conn)
        start = threading.Barrier(len(connections))
        answers: list[bytes] = []

        def send(conn: socket.socket) -> None:
            start.wait()
            conn.sendall(struct.pack(">I", len(payload)) + payload)
            answers.append(conn.recv(1 << 16))

        senders = [threading.Thread(target=send, args=(conn,)) for conn in connections]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        for conn in connections:
            conn.close()
        assert len(answers) == 100 and all(b"bad_request" in a for a in answers), answers[:2]
        peak_mib = (_peak_kib(daemon) - before) // 1024
        print(f"\ndaemon peak memory grew by {peak_mib} MiB for 100 x 1 MiB malformed requests")
        assert peak_mib < 256, f"the daemon grew by {peak_mib} MiB"
    finally:
        service.stop()
