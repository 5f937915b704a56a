"""The daemon: the service's front door on a Unix socket, in front of the MPI job.

Threads, not asyncio: every request either reads the in-memory index (microseconds, under
its lock) or waits for a consensus round, and a thread per client connection keeps both
simple; the number of clients of one ledger service is small. The protocol is one
schema-checked JSON frame per request and per answer (:mod:`._wire`); who may send what
is :mod:`.access`'s: the peer's uid, from the kernel, against the allow-list. Clients on
other nodes come through :mod:`.tls`'s listener (mutual TLS; roles from the certificate)
to the same request loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import socketserver
import struct
import threading
import time
from typing import Any

from ._requests import IDLE_SECONDS, receive_large_gated
from ._wire import CLIENT_REQUESTS, MAX_FRAME, WireError, encode, record_to_wire, send_by, send_frame
from .access import NEEDS, PERMITS, AccessList, bind_unix, needed_roles, peer_uid
from .admission import PER_CLIENT, TOTAL, Admission, fit_descriptors, turn_away
from .endorse import ensure_keys, ensure_origin
from .manager import JobDown, TransactionManager
from .monitor import JobMonitor
from .storage import SharedStore
from .tls import Peer, TLSListener, drain_and_close, uid_peer

__all__ = ["Service"]

log = logging.getLogger("lineage_ledger.baash")
READ_PAGE = 256  # blocks per `blocks` answer; the client pages
SEND_SECONDS = 120.0  # to take one answer (--send-timeout): a client that never reads is cut off
LEDGERS_SECONDS = 10.0  # every rank's verification for one `ledgers` request (--ledgers-timeout)


def _located(items: list[Any]) -> list[Any]:
    return [[x.height, x.position, record_to_wire(x.record)] for x in items]


def send_blocks_page(sock: socket.socket, blocks: list[str], deadline: float) -> None:
    """A ``blocks`` answer, ``{"blocks":[...],"kind":"blocks","v":1}``, of blocks already
    encoded as JSON (ASCII) text, sent one block at a time, all of it by ``deadline``. Joined
    into one buffer, a page of up to 32 MiB was held by its connection's thread until the
    client read it: 60 readers that never read grew the daemon by 2.7 GB."""
    head, tail = b'{"blocks":[', b'],"kind":"blocks","v":1}'
    size = len(head) + sum(len(text) for text in blocks) + max(len(blocks) - 1, 0) + len(tail)
    if size > MAX_FRAME:
        raise WireError(f"message of {size} bytes is over the {MAX_FRAME}-byte frame limit")
    send_by(sock, struct.pack(">I", size) + head, deadline)
    for i, text in enumerate(blocks):
        send_by(sock, (b"," if i else b"") + text.encode("ascii"), deadline)  # ASCII: a byte a character
    send_by(sock, tail, deadline)


def _error(status: str, message: str) -> bytes:
    return encode("error", status=status, message=message)


def refusal(peer: Peer, op: str | None, permission: str | None) -> str:
    roles = needed_roles(permission)
    what = f"{op!r}" if op else "this service"
    return f"{peer.name} may not use {what}: it needs the role {' or '.join(roles)} {peer.how_to_gain}"


class _LargeGate:
    """A slot of the service's gate for large frames, and the one slot of this client."""

    def __init__(self, shared: threading.BoundedSemaphore, mine: threading.Lock) -> None:
        self.shared, self.mine = shared, mine

    def __enter__(self) -> None:
        self.mine.acquire()
        self.shared.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.shared.release()
        self.mine.release()


class Service:
    def __init__(self, *, ranks: int, storage: str, socket_path: str, rank_args: list[str],
                 socket_group: int | None = None, allow: dict[int, set[str]] | None = None,
                 batch_blocks: int = 64, batch_time: float = 0.002, min_ranks: int = 2,
                 restart_delay: float = 0.0, tls: tuple[str, int, Any] | None = None,
                 max_connections: int = TOTAL, max_client_connections: int = PER_CLIENT,
                 idle_timeout: float = IDLE_SECONDS, send_timeout: float = SEND_SECONDS,
                 ledgers_timeout: float = LEDGERS_SECONDS, start_timeout: float = 90.0,
                 heartbeat_timeout: float = 20.0) -> None:
        self.store = SharedStore(storage)
        self.access = AccessList(os.path.join(self.store.root, "access.json"), overrides=allow)
        self.origin = ensure_origin(self.store.root)  # before the job starts: its ranks sign with these
        self.rank_keys = [key.text() for key in ensure_keys(self.store.root, ranks)]
        rank_args = [*rank_args, "--ledgers-seconds", repr(float(ledgers_timeout))]
        self.monitor = JobMonitor(ranks, self.store.root, rank_args, min_ranks=min_ranks, restart_delay=restart_delay,
                                  start_timeout=start_timeout, heartbeat_timeout=heartbeat_timeout)
        self.manager = TransactionManager(self.store, self.monitor, batch_blocks=batch_blocks, batch_time=batch_time)
        self.started = time.time()
        self.refused = 0
        self.malformed = 0
        self.ledgers_asked = 0  # times the job was asked for every rank's verified ledger
        # A connection that sends no request, or takes no answer, for this long is closed: an
        # allowed client sitting on its places (or on answers it never read) kept them for good,
        # and the owner's and everyone else's appends were refused once the caps were reached.
        self.idle_timeout, self.send_timeout, self.ledgers_timeout = idle_timeout, send_timeout, ledgers_timeout
        self.closed_idle = 0
        self.closed_unread = 0
        self._ledgers_lock = threading.Lock()
        self._ledgers_last: tuple[Any, list[Any]] | None = None  # ((generation, head), reports)
        # Descriptors beside the clients': each rank's heartbeat, block files, mpiexec's pipes.
        total = fit_descriptors(max_connections, reserve=128 + 4 * ranks)
        self.admission = Admission(min(max_client_connections, total), total)
        # Large requests are read and decoded two at a time, whatever the number of connections,
        # and one at a time per client: one client trickling two cannot hold every large append up.
        self._large_frames = threading.BoundedSemaphore(2)
        self._large_per_client: dict[str, threading.Lock] = {}
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                peer = uid_peer(peer_uid(sock))
                try:
                    service.serve_connection(sock, peer)
                finally:
                    service.admission.release(peer.name)  # counted by process_request

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                # Counted before a thread is made: past its cap a client is told why and hung up on.
                key = uid_peer(peer_uid(request)).name
                why = service.admission.admit(key)
                if why is not None:
                    turn_away(request, why)
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    service.admission.release(key)
                    raise

            def server_bind(self) -> None:
                self.socket.close()
                self.socket = bind_unix(self.server_address, group=socket_group)  # type: ignore[arg-type]

            def server_activate(self) -> None:
                pass  # bind_unix listens

        self.server = Server(socket_path, Handler)
        # Rung by stop() to end the accept loop at once: serve_forever's 0.2 s tick was in every stop.
        self._door_bell, self._door_ringer = socket.socketpair()
        self._door: threading.Thread | None = None
        self.socket_path = socket_path
        self.url = f"baash://{socket_path}"
        self.tls: TLSListener | None = None
        if tls is not None:
            host, port, context = tls
            self.tls = TLSListener((host, port), context, self.serve_connection, self._refused_handshake,
                                   self.admission)

    def roles(self, peer: Peer) -> frozenset[str]:
        """A certificate's roles are fixed; a uid's are read from the allow-list at each request."""
        if peer.roles is not None:
            return peer.roles
        return self.access.of(peer.uid) if peer.uid is not None else frozenset()

    def allows(self, peer: Peer, permission: str | None) -> bool:
        roles = self.roles(peer)
        return bool(roles) and (permission is None or any(permission in PERMITS[r] for r in roles))

    def serve_connection(self, sock: socket.socket, peer: Peer) -> None:
        """One client connection, Unix or TLS: refuse a peer without a role, else answer
        one request after another until it hangs up or sends something malformed."""
        if not self.allows(peer, None):
            self.refuse(sock, peer)
            return
        mine = self._large_per_client.setdefault(peer.name, threading.Lock())
        while True:
            try:
                request = receive_large_gated(sock, CLIENT_REQUESTS, _LargeGate(self._large_frames, mine),
                                              idle=self.idle_timeout)
            except WireError as err:
                # Frame boundaries may be lost: answer once, then hang up.
                self.malformed += 1
                with contextlib.suppress(OSError):
                    send_frame(sock, _error("bad_request", f"malformed request: {err}"))
                return
            except TimeoutError:
                self.closed_idle += 1
                self.admission.note(peer.name, f"no request came within {self.idle_timeout:g} s (--idle-timeout)",
                                    "closed")
                return
            except (ConnectionError, OSError):
                return
            try:
                reply = self.answer(request, peer)
                deadline = time.monotonic() + self.send_timeout
                if isinstance(reply, bytes):
                    send_frame(sock, reply, deadline)
                else:
                    send_blocks_page(sock, reply, deadline)
            except TimeoutError:
                self.closed_unread += 1
                self.admission.note(peer.name, f"it did not take its answer within {self.send_timeout:g} s "
                                               "(--send-timeout)", "closed")
                return
            except OSError:
                return

    def _refused_handshake(self, why: str) -> None:
        self.refused += 1
        log.warning("baash: %s", why)

    def refuse(self, sock: socket.socket, peer: Peer) -> None:
        """A peer without a role: say why, read nothing it sends, hang up."""
        self.refused += 1
        self.admission.note(peer.name, "no role here")  # logged once a minute per client, not per connection
        with contextlib.suppress(OSError):
            send_frame(sock, _error("forbidden", refusal(peer, None, "read")))
        drain_and_close(sock)  # let its request land, so it reads our answer, not a reset

    def answer(self, request: dict[str, Any], peer: Peer) -> bytes | list[str]:
        """The answer's frame, or for ``blocks`` the page's blocks as the daemon keeps them
        encoded (sent a block at a time, never joined: see :func:`send_blocks_page`)."""
        op = request["kind"]
        permission = NEEDS[op]
        if not self.allows(peer, permission):
            return _error("forbidden", refusal(peer, op, permission))
        try:
            index = self.manager.index
            if op == "append":
                status, message = self.manager.submit(request["blocks"], timeout=request["timeout"] or 300)
                return encode("committed") if status == "committed" else _error(status, message)
            if op == "head":
                head = index.head()
                return encode("head", head=None if head is None else [head.height, head.id])
            if op == "blocks":
                start, stop = request["start"], request["stop"]
                stop = start + READ_PAGE if stop is None else min(stop, start + READ_PAGE)
                page: list[Any] = []
                size = 0
                for text in self.manager.wire[start:stop]:  # at least one block, then up to half a frame
                    size += len(text) + 1
                    if page and size > MAX_FRAME // 2:
                        break
                    page.append(text)
                return page
            if op == "record_count":
                return encode("count", count=index.record_count())
            if op == "known":
                return encode("known", known=sorted(index.known(request["ids"])))
            if op == "find":
                return encode("found", found=_located(index.find(request["role"], path=request["path"],
                                                                digest=request["digest"])))
            if op == "by_run":
                return encode("found", found=_located(index.by_run(request["run_id"])))
            if op == "by_id_prefix":
                return encode("found", found=_located(index.by_id_prefix(request["prefix"], request["limit"])))
            if op == "status":
                return encode("status", status=self.status())
            if op == "ledgers":
                return encode("ledgers", ledgers=self.ledgers())
            if op == "ping":
                return encode("pong")
            if op == "checkpoint":
                return encode("checkpoint", origin=self.origin, note=self.monitor.endorsed, keys=self.rank_keys)
            if op == "whoami":
                return encode("identity", uid=peer.uid, subject=peer.subject, roles=sorted(self.roles(peer)))
            if op == "register":
                roles = self.access.register(request["uid"], request["roles"])
                log.info("baash: %s registered uid %d as %s", peer.name, request["uid"], ",".join(sorted(roles)) or "-")
                return encode("registered", uid=request["uid"], roles=sorted(roles))
            if op == "revoke":
                self.access.revoke(request["uid"])
                log.info("baash: %s revoked uid %d", peer.name, request["uid"])
                return encode("registered", uid=request["uid"], roles=[])
            return _error("bad_request", f"unknown operation {op!r}")
        except JobDown as err:
            return _error("unavailable", str(err))
        except (KeyError, TypeError, ValueError) as err:
            return _error("bad_request", f"malformed request: {err}")
        except Exception as err:  # noqa: BLE001 - the front door keeps answering
            log.exception("baash: %s failed", op)
            return _error("failed", f"{op} failed in the service: {type(err).__name__}: {err}")

    def ledgers(self) -> list[Any]:
        """Every rank's verified ledger. Each rank verifies its whole chain, under the lock
        rounds take: one request at a time asks the job, and requests that find the job and
        the chain as the last answer found them get that answer (readers asking in a loop
        made every append wait for all their requests in turn)."""
        key = (self.monitor.generation, self.manager.index.head())
        with self._ledgers_lock:
            last = self._ledgers_last
            if last is not None and last[0] == key:
                return last[1]
            self.ledgers_asked += 1
            reports = self.monitor.ledgers(self.ledgers_timeout)
            # A rank that did not answer, or whose chain failed, is asked again next time.
            self._ledgers_last = (key, reports) if all(r.get("valid") for r in reports) else None
        pending = [r for r in reports if r.get("pending")]
        if pending:
            # Each rank goes on from where it stopped at the next request (its verifier is
            # kept): a very large chain is answered after a few requests, not by a job
            # restarted as hung after 60 s (which started the verification over).
            got = ", ".join(f"rank {r['rank']} {r['verified']:,} of {r['blocks']:,} blocks" for r in pending)
            raise JobDown(f"every rank's ledger is still being verified ({got}) after the {self.ledgers_timeout:g} s "
                          f"one request may take (--ledgers-timeout); ask again: each request goes on from there")
        return reports

    def status(self) -> dict[str, Any]:
        head = self.manager.index.head()
        self.store.refresh()
        return {
            "job_up": self.monitor.up, "job": self.monitor.info, "failures": self.monitor.failures,
            "memory": self.monitor.rank_memory(), "stats": self.manager.stats,
            "seconds": self.manager.seconds, "decided_by": self.manager.decided_by,
            "pending": len(self.manager.pending), "active": len(self.manager.active),
            "head": None if head is None else [head.height, head.id],
            "storage": {"root": self.store.root, "height": self.store.height, "lookups": self.store.lookups,
                        "writes_skipped": self.store.writes_skipped},
            "uptime": time.time() - self.started, "refused_connections": self.refused,
            "connections": {"held": self.admission.count, "refused_over_cap": self.admission.refused,
                            "max": self.admission.total, "max_per_client": self.admission.per_client,
                            "closed_idle": self.closed_idle, "closed_unread": self.closed_unread,
                            "idle_timeout": self.idle_timeout, "send_timeout": self.send_timeout},
            "malformed_requests": self.malformed, "control": self.monitor.control,
            "ledgers_asked": self.ledgers_asked,
            "tls": None if self.tls is None else self.tls.endpoint,
        }

    def start(self, interrupted: threading.Event | None = None) -> None:
        """Start the job, then open the doors; once ``interrupted`` is set (a SIGTERM while the
        ranks restore a long chain) return at once, the doors unopened, for stop() to end it."""
        self.monitor.start(until=interrupted)
        if interrupted is not None and interrupted.is_set():
            return
        self.manager.start()
        self._door = threading.Thread(target=self._serve_front_door, name="baash-door", daemon=True)
        self._door.start()
        if self.tls is not None:
            self.tls.start()

    def _serve_front_door(self) -> None:
        """Accept clients on the Unix socket until stop() rings the door bell."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.server.socket, selectors.EVENT_READ)
            selector.register(self._door_bell, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._door_bell in ready:
                    return
                self.server.handle_request()  # the listener is readable: accepts without waiting

    def stop(self) -> None:
        """Cleanly, promptly: no new client is let in; the round in flight is decided and stored
        (the manager's stop waits for it); the job is told to stop and its exit waited for
        (JobMonitor.stop). The TLS listener's shutdown (serve_forever's 0.2 s tick) runs beside."""
        tls_closing = None
        if self.tls is not None and self._door is not None:  # started: a listener never served would not shut down
            tls_closing = threading.Thread(target=self.tls.stop, name="baash-tls-stop", daemon=True)
            tls_closing.start()
        with contextlib.suppress(OSError):
            self._door_ringer.send(b"\0")
        if self._door is not None:
            self._door.join(timeout=10)
        self.server.server_close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        self.manager.stop()
        self.monitor.stop()
        if tls_closing is not None:
            tls_closing.join(timeout=10)
        self._door_bell.close()
        self._door_ringer.close()

    def run_until_signalled(self, ready: Any = None) -> None:
        """Serve until SIGTERM or SIGINT, which may come while the job still starts."""
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        try:
            self.start(interrupted=stop)
        except BaseException:
            self.stop()  # a job that did not start is killed, not left behind
            raise
        if ready is not None and not stop.is_set():
            ready(self)
        stop.wait()
        self.stop()
