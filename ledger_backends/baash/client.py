"""``baash://host:port``: the back-end a Recorder or ``open_ledger`` uses to reach a service.

One connection per back-end object, shared under a lock and reopened when it breaks.
Re-sending after a broken connection is safe: an append the service already committed
is an idempotent no-op the second time, and reads have no effect.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lineage_ledger._errors import AppendConflict, BackendError, BackendUnavailable, ConfigError
from lineage_ledger._model import StoredBlock
from lineage_ledger.backends._base import Backend, ChainHead, Located, Role

from ._wire import block_from_wire, block_to_wire, connect, record_from_wire, recv_json, send_json

__all__ = ["BaashBackend", "BlockRejected"]


class BlockRejected(BackendError):
    """The service's validators (or shared storage) found a block invalid; nothing was stored."""


def parse_address(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1] if "://" in url else url
    netloc = rest.split("/", 1)[0]
    host, sep, port = netloc.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"malformed BAASH URL {url!r}: expected baash://host:port")
    return host.strip("[]"), int(port)


class BaashBackend(Backend):
    def __init__(self, url: str, *, timeout: float = 330.0) -> None:
        super().__init__(url)
        self.host, self.port = parse_address(url)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return f"baash://{self.host}:{self.port}"

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for attempt in (1, 2):
                if self._sock is None:
                    self._sock = connect(self.host, self.port, self.timeout)
                try:
                    send_json(self._sock, request)
                    answer = recv_json(self._sock)
                    break
                except (OSError, ConnectionError, ValueError) as exc:
                    self._sock.close()
                    self._sock = None
                    if attempt == 2:
                        raise BackendUnavailable(f"BAASH service at {self.host}:{self.port}: {exc}") from exc
        status = answer.get("status")
        if isinstance(status, str) and status not in ("committed",):
            message = answer.get("message", "")
            if status == "conflict":
                raise AppendConflict(message)
            if status == "rejected":
                raise BlockRejected(f"the BAASH validators refused the block: {message}")
            if status == "unavailable":
                raise BackendUnavailable(f"BAASH service: {message}")
            raise BackendError(f"BAASH service answered {status}: {message}")
        return answer

    # -- the Backend contract --------------------------------------------------------------
    def append(self, blocks: Sequence[StoredBlock]) -> None:
        if blocks:
            self._call({"op": "append", "blocks": [block_to_wire(b) for b in blocks]})

    def head(self) -> ChainHead | None:
        head = self._call({"op": "head"})["head"]
        return None if head is None else ChainHead(int(head[0]), str(head[1]))

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        position = start
        while stop is None or position < stop:
            page = self._call({"op": "blocks", "start": position, "stop": stop})["blocks"]
            if not page:
                return
            for item in page:
                yield block_from_wire(item)
            position += len(page)

    def record_count(self) -> int:
        return int(self._call({"op": "record_count"})["count"])

    def known(self, record_ids: Iterable[str]) -> set[str]:
        ids = list(record_ids)
        return set(self._call({"op": "known", "ids": ids})["known"]) if ids else set()

    @staticmethod
    def _located(items: list[Any]) -> list[Located]:
        return [Located(int(h), int(p), record_from_wire(r)) for h, p, r in items]

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        return self._located(self._call({"op": "find", "role": role, "path": path, "digest": digest})["found"])

    def by_run(self, run_id: str) -> list[Located]:
        return self._located(self._call({"op": "by_run", "run_id": run_id})["found"])

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        return self._located(self._call({"op": "by_id_prefix", "prefix": prefix, "limit": limit})["found"])

    # -- beyond the contract: the service's own state ----------------------------------------
    def status(self) -> dict[str, Any]:
        return self._call({"op": "status"})["status"]

    def ledgers(self) -> list[dict[str, Any]]:
        """Every rank's in-memory ledger, each verified by the core on its rank."""
        return self._call({"op": "ledgers"})["ledgers"]

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
