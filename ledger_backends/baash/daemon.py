"""The daemon: the service's front door on loopback TCP, in front of the MPI job.

Threads, not asyncio: every request either reads the in-memory index (microseconds, under
its lock) or waits for a consensus round, and a thread per client connection keeps both
simple; the number of clients of one ledger service is small. The protocol is a
length-prefixed JSON frame per request and per answer (:mod:`._wire`).
"""

from __future__ import annotations

import logging
import signal
import socketserver
import threading
import time
from typing import Any

from ._wire import block_from_wire, record_to_wire, recv_json, send_frame, send_json
from .manager import JobDown, TransactionManager
from .monitor import JobMonitor
from .storage import SharedStore

__all__ = ["Service"]

log = logging.getLogger("lineage_ledger.baash")
READ_PAGE = 256  # blocks per `blocks` answer; the client pages


def _located(items: list[Any]) -> list[Any]:
    return [[x.height, x.position, record_to_wire(x.record)] for x in items]


class Service:
    def __init__(self, *, ranks: int, storage: str, host: str, port: int, rank_args: list[str],
                 batch_blocks: int = 64, batch_time: float = 0.002, min_ranks: int = 2,
                 restart_delay: float = 0.0) -> None:
        self.store = SharedStore(storage)
        self.monitor = JobMonitor(ranks, self.store.root, rank_args, min_ranks=min_ranks, restart_delay=restart_delay)
        self.manager = TransactionManager(self.store, self.monitor, batch_blocks=batch_blocks, batch_time=batch_time)
        self.started = time.time()
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while True:
                    try:
                        request = recv_json(self.request)
                    except (ConnectionError, OSError, ValueError):
                        return
                    answer = service.answer(request)
                    if isinstance(answer, bytes):  # already encoded (block pages)
                        send_frame(self.request, answer)
                    else:
                        send_json(self.request, answer)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, port), Handler)
        self.address = self.server.server_address

    def answer(self, request: dict[str, Any]) -> dict[str, Any] | bytes:
        try:
            op = request.get("op")
            index = self.manager.index
            if op == "append":
                blocks = [block_from_wire(b) for b in request["blocks"]]
                status, message = self.manager.submit(blocks, timeout=request.get("timeout", 300))
                return {"status": status, "message": message}
            if op == "head":
                head = index.head()
                return {"head": None if head is None else [head.height, head.id]}
            if op == "blocks":
                start = int(request.get("start", 0))
                stop = request.get("stop")
                stop = start + READ_PAGE if stop is None else min(int(stop), start + READ_PAGE)
                page = self.manager.wire[start:stop]
                return b'{"blocks":[' + ",".join(page).encode() + b"]}"
            if op == "record_count":
                return {"count": index.record_count()}
            if op == "known":
                return {"known": sorted(index.known(request["ids"]))}
            if op == "find":
                return {"found": _located(index.find(request["role"], path=request.get("path"),
                                                     digest=request.get("digest")))}
            if op == "by_run":
                return {"found": _located(index.by_run(request["run_id"]))}
            if op == "by_id_prefix":
                return {"found": _located(index.by_id_prefix(request["prefix"], int(request.get("limit", 2))))}
            if op == "status":
                return {"status": self.status()}
            if op == "ledgers":
                return {"ledgers": self.monitor.ledgers()}
            if op == "ping":
                return {"pong": True}
            return {"status": "bad_request", "message": f"unknown operation {op!r}"}
        except JobDown as err:
            return {"status": "unavailable", "message": str(err)}
        except (KeyError, TypeError, ValueError) as err:
            return {"status": "bad_request", "message": f"malformed request: {err}"}

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
            "uptime": time.time() - self.started,
        }

    def start(self) -> None:
        self.monitor.start()
        self.manager.start()
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.manager.stop()
        self.monitor.stop()

    def run_until_signalled(self, ready: Any = None) -> None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        if ready is not None:
            ready(self)
        stop.wait()
        self.stop()
