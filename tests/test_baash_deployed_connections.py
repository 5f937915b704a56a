"""BAASH as a shared service on a login node: one client's connections must not deny the others.

A real service (``lineage-ledger baash serve``, real ``mpiexec`` ranks) serves from a socket
that another user (``nobody``) can reach through ``--socket-group``. That user runs a plain
``python3`` as uid 65534 (a separate process, as on a login node) that opens connections in
a loop, or trickles bytes on them. The service's own user then appends and reads through the
ordinary client. The daemon starts under a descriptor limit of 1,024, the soft limit of a
login session on most clusters (systemd's default), here the hard one too.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
from pathlib import Path

import pytest

from lineage_ledger import build_block
from lineage_ledger._model import Record
from lineage_ledger.backends.baash._wire import encode, send_frame
from lineage_ledger.backends.baash.admission import PER_CLIENT
from lineage_ledger.backends.baash.client import BaashBackend
from tests.backend_conformance import chain_of
from tests.support.baash import BaashService
from tests.support.factories import make_records

pytestmark = pytest.mark.mpi
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a client running as another uid (nobody) needs root")

NOBODY = 65534
LOGIN_NOFILE = 1024

# Run as nobody with the system's python3 (-I: nothing of this checkout). It opens up to N
# connections (each waits at most 3 s for the backlog), sends nothing or trickles one byte on each
# every 0.5 s (after announcing a frame of ANNOUNCE bytes if that is not 0), and reports what it saw as JSON lines; it holds its connections until its
# standard input closes. Trickling stops after TRICKLE_FOR seconds, or once the service has closed them all.
FLOODER = r"""
import json, select, socket, sys, time
path, count, trickle_for, announce = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
held, error, last = [], None, time.monotonic()
def trickle():
    for s in list(held):
        try:
            s.send(b"\x00")
        except OSError:
            held.remove(s)
            s.close()
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    deadline = time.monotonic() + 3
    while True:
        try:
            s.connect(path)
            break
        except BlockingIOError as exc:  # the listen backlog is full (a Unix socket with a timeout)
            error = repr(exc)
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        except OSError as exc:
            error = repr(exc)
            break
    if time.monotonic() > deadline or error and "Blocking" not in error:
        s.close()
        break
    error = None
    held.append(s)
    if announce:  # the length of a frame, whose body then comes a byte at a time
        s.sendall(announce.to_bytes(4, "big"))
    if trickle_for and time.monotonic() - last > 0.5:
        trickle(); last = time.monotonic()
time.sleep(0.5)
answers = []
for s in held:
    s.setblocking(False)
    try:
        data = s.recv(1 << 16)
    except BlockingIOError:
        continue
    except OSError as exc:
        data = repr(exc).encode()
    answers.append(data[4:].decode("ascii", "replace"))
print(json.dumps({"opened": len(held), "connect_error": error, "answers": answers}), flush=True)
end = time.monotonic() + trickle_for
while time.monotonic() < end and held:  # until the service has closed every one (a send fails), at most that long
    trickle()
    time.sleep(0.5)
if trickle_for:
    print(json.dumps({"still_open": len(held)}), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def public_dir():
    """A directory other users may traverse (pytest's tmp is 0700): the socket lives under it."""
    path = Path(tempfile.mkdtemp(prefix="baash-conn-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _service(tmp_path: Path, public_dir: Path, *extra: str) -> BaashService:
    """Started by util-linux's ``prlimit`` under a descriptor limit of 1,024, soft and hard."""
    if shutil.which("prlimit") is None:
        pytest.skip("no prlimit (util-linux) to start the service under a login session's ulimit -n")
    return BaashService(tmp_path, 2, "--socket-group", str(NOBODY), *extra, socket=public_dir / "run" / "baash.sock",
                        launcher=("prlimit", f"--nofile={LOGIN_NOFILE}:{LOGIN_NOFILE}", "--"))


def _flood(socket_path: str, count: int, trickle_for: float = 0.0, announce: int = 0) -> subprocess.Popen:
    return subprocess.Popen(["/usr/bin/python3", "-I", "-c", FLOODER, socket_path, str(count), str(trickle_for),
                             str(announce)],
                            user=NOBODY, group=NOBODY, extra_groups=[NOBODY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _report(flooder: subprocess.Popen, timeout: float = 180) -> dict:
    assert flooder.stdout is not None
    ready, _, _ = select.select([flooder.stdout], [], [], timeout)
    line = flooder.stdout.readline() if ready else ""
    if not line:
        flooder.kill()
        raise AssertionError(f"the flooding client reported nothing: {flooder.communicate()[1]}")
    return json.loads(line)


def _release(flooder: subprocess.Popen) -> None:
    if flooder.poll() is None:
        flooder.kill()  # its connections close with it
    flooder.communicate(timeout=60)


def _append_and_read(url: str, run_id: str, parameters: object = None) -> int:
    """The service's own user, through the ordinary client, as a recorder would."""
    backend = BaashBackend(url, timeout=20)
    records = make_records(2, run_id=run_id)
    if parameters is not None:
        body = records[0].to_dict()
        body["parameters"] = parameters
        records[0] = Record.from_dict(body)
    try:
        backend.append([build_block([r.stored() for r in records], backend.head()).stored()])
        return backend.record_count()
    finally:
        backend.close()


@needs_root
def test_one_clients_connections_do_not_deny_the_others(tmp_path, public_dir):
    """Bug: an allowed client (nobody as 'user') opened 1,500 idle connections: the daemon,
    at a login session's 1,024 descriptors, could accept no more, its accept loop spun, and
    the service's own user's append failed at once. Now one client holds at most
    ``--max-client-connections`` (256 by default); past that it is told why, the operator's
    log names it, and everyone else is served."""
    service = _service(tmp_path, public_dir, "--allow", f"{NOBODY}:user")
    flooder = _flood(str(service.socket), 1500)
    try:
        report = _report(flooder)
        assert _append_and_read(service.url, "victim") == 2
        refusals = [a for a in report["answers"] if "unavailable" in a]
        assert refusals and all(f"uid {NOBODY}" in a and f"{PER_CLIENT} connections" in a for a in refusals), \
            report["answers"][:3]
        assert report["opened"] - len(refusals) <= PER_CLIENT, report
    finally:
        _release(flooder)
        service.stop()
    assert "refused a connection from uid 65534" in service.output()
    assert "may open 1024 descriptors (ulimit -n); it takes" in service.output()  # fewer than the default


@needs_root
def test_refused_clients_connections_are_closed_quickly(tmp_path, public_dir):
    """Bug: a uid that is not on the allow-list (nobody, in the socket's group) was answered
    'forbidden', then its connection was drained for up to 1 MiB with a 2 s wait per read:
    one byte every half second held each of its connections (and a thread) for days, and
    300 of them were still open after 15 s. Now a refused connection is closed within
    2 s whatever it sends, and counts against the caps meanwhile. (The client trickles for
    up to 15 s, and reports as soon as the service has closed every connection.)"""
    service = _service(tmp_path, public_dir)
    flooder = _flood(str(service.socket), 300, trickle_for=15)
    try:
        opened = _report(flooder)
        assert opened["opened"] > 0, opened
        assert all("forbidden" in a or "unavailable" in a for a in opened["answers"]), opened["answers"][:3]
        still = _report(flooder, timeout=120)
        assert still["still_open"] == 0, (opened["opened"], still)
        assert _append_and_read(service.url, "owner") == 2
    finally:
        _release(flooder)
        service.stop()


@needs_root
def test_a_client_trickling_large_requests_does_not_hold_up_the_others(tmp_path, public_dir):
    """Bug: requests over 1 MiB (now 64 KiB) are read two at a time, each within 120 s. One allowed client
    (nobody as 'user') announced a 2 MiB frame on two connections and sent its body a byte
    every half second: both places were its own for 120 s, and the service's own user's
    append of a 1.5 MiB record (a step with large parameters) waited past its client's
    timeout. Now one client holds one of the two places at a time."""
    service = _service(tmp_path, public_dir, "--allow", f"{NOBODY}:user")
    flooder = _flood(str(service.socket), 2, trickle_for=60, announce=2 << 20)
    try:
        assert _report(flooder)["opened"] == 2
        grid = [[i, i + 1] for i in range(150_000)]  # about 1.5 MiB on the wire
        assert _append_and_read(service.url, "large", parameters={"grid": grid}) == 2
    finally:
        _release(flooder)
        service.stop()



def test_a_certificate_past_its_cap_is_told_why_over_tls(tmp_path):
    """The cap per client over TLS counts a certificate (after the handshake; a host before
    it): alice's 5th and 6th connections at a cap of 4 are answered 'unavailable' naming
    her certificate and the option, while bob, from the same host, is served."""
    import ssl

    from lineage_ledger.backends.baash._wire import ANSWERS, receive
    from lineage_ledger.backends.baash.tls import client_context
    from tests.support.baash import Pki, tls_url

    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger-service", server=True)
    service = BaashService(tmp_path, 2, "--listen", "0", "--tls-ca", str(pki.ca), "--tls-cert", str(cert),
                           "--tls-key", str(key), "--max-client-connections", "4")
    held: list[ssl.SSLSocket] = []
    try:
        host, port = service.info["tls"].rsplit(":", 1)
        context = client_context(str(pki.ca), *map(str, pki.issue("alice", units=("user",))))
        answers = []
        for _ in range(6):
            conn = context.wrap_socket(socket.create_connection((host, int(port)), timeout=20),
                                       server_hostname="localhost")
            held.append(conn)
            send_frame(conn, encode("ping"))
            answers.append(receive(conn, ANSWERS))
        assert [a["kind"] for a in answers] == ["pong"] * 4 + ["error"] * 2, answers
        assert all(a["status"] == "unavailable" and "OU=user,CN=alice" in a["message"]
                   and "--max-client-connections 4" in a["message"] for a in answers[4:]), answers[4:]
        bob = BaashBackend(tls_url(service.info["tls"], pki.ca, *pki.issue("bob", units=("user",))), timeout=20)
        assert bob.whoami()["roles"] == ["user"]
        assert bob.status()["connections"]["refused_over_cap"] == 2
    finally:
        for conn in held:
            conn.close()
        service.stop()
    assert "refused a connection from certificate 'OU=user,CN=alice'" in service.output()


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) // 1024


def _answered_as_far_as_the_buffers_take(connections: list[socket.socket]) -> None:
    """Until every connection holds answer bytes it has not read, as many at two looks in a row:
    the daemon took up each request and wrote what the socket's buffers take (the old code
    joined the whole page before it wrote a byte). It was a fixed 5 s wait."""
    deadline, before = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        unread = [struct.unpack("i", fcntl.ioctl(conn, termios.FIONREAD, bytes(4)))[0] for conn in connections]
        if all(unread) and unread == before:
            return
        before = unread
        time.sleep(0.25)
    raise AssertionError(f"the daemon did not answer every connection: unread bytes {before}")


def test_readers_that_never_read_their_answers_do_not_grow_the_daemon(tmp_path):
    """Bug: a `blocks` answer (a page of up to 32 MiB) was joined into one buffer and held
    by its connection's thread until the client read it. A reader (any allowed client, a
    read-only admin too) that asked for the first page of a 36 MiB ledger on 60 connections
    and never read grew the daemon from 111 MiB to 2.6 GB resident, for as long as it kept
    them open (about 8 GB at the 256 connections one client may hold). Now a page is sent a
    block at a time from the encoded blocks the daemon keeps anyway."""
    service = BaashService(tmp_path, 2)
    backend = BaashBackend(service.url, timeout=120)
    connections: list[socket.socket] = []
    try:
        for i in range(40):  # blocks of one record with 900 KiB of parameters
            body = make_records(1, run_id=f"large{i}")[0].to_dict()
            body["parameters"] = {"blob": "x" * (900 << 10)}
            backend.append([build_block([Record.from_dict(body).stored()], backend.head()).stored()])
        daemon = service.proc.pid
        before = _rss_mib(daemon)
        request = encode("blocks", start=0, stop=None)
        for _ in range(60):
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(str(service.socket))
            send_frame(conn, request)  # and never read the answer
            connections.append(conn)
        _answered_as_far_as_the_buffers_take(connections)
        grew = _rss_mib(daemon) - before
        assert backend.record_count() == 40  # others are served meanwhile
        assert grew < 512, f"the daemon's resident memory grew by {grew} MiB"
    finally:
        for conn in connections:
            conn.close()
        backend.close()
        service.stop()


def test_readers_asking_every_ranks_ledger_at_once_ask_the_job_once(tmp_path):
    """Bug: each `ledgers` request (any reader's) had every rank verify its whole chain,
    under the lock that rounds take too, one request after another: 8 connections asking
    in a loop on a ledger of 1,000 blocks made each append wait 2.3-2.9 s instead of a few
    milliseconds, and the wait grows with the chain and the connections (a request past
    60 s made the daemon take the job for hung and restart it). Now requests that arrive
    while one is asked, or while the chain and the job are unchanged, share its answer."""
    service = BaashService(tmp_path, 2)
    backend = BaashBackend(service.url, timeout=120)
    try:
        backend.append(chain_of(make_records(2000), 10))
        asked_before = backend.status()["ledgers_asked"]
        readers = [BaashBackend(service.url, timeout=120) for _ in range(8)]
        reports: list[list[dict]] = []
        threads = [threading.Thread(target=lambda r=reader: reports.extend(r.ledgers() for _ in range(5)))
                   for reader in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(reports) == 40 and all(len(r) == 2 and all(rank["valid"] for rank in r) for r in reports)
        asked = backend.status()["ledgers_asked"] - asked_before
        assert asked <= 2, f"the job was asked for every rank's ledger {asked} times for 40 requests of one chain"
        _append_and_read(service.url, "after")  # a new head: asked again, and it shows the new head
        head = backend.head()
        assert head is not None and backend.ledgers()[0]["head"] == head.id
    finally:
        backend.close()
        service.stop()
