"""``baash:///path/to/baash.sock``: the back-end a Recorder or ``open_ledger`` uses to reach a service.

The service listens on a Unix socket (``lineage-ledger baash serve --socket PATH``); the
kernel tells it who we are, and its allow-list says what we may do (docs/baash.md). One
connection per back-end object, shared under a lock and reopened when it breaks.
Re-sending after a broken connection is safe: an append the service already committed
is an idempotent no-op the second time, and reads have no effect.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lineage_ledger._errors import AppendConflict, BackendError, BackendUnavailable, ConfigError
from lineage_ledger._model import StoredBlock
from lineage_ledger.backends._base import Backend, ChainHead, Located, Role

from ._wire import ANSWERS, MAX_FRAME, WireError, block_to_wire, encode, receive, send_frame

__all__ = ["AccessDenied", "BaashBackend", "BlockRejected", "parse_address"]

SCHEMES = ("baash", "baash+unix")


class BlockRejected(BackendError):
    """The service's validators (or shared storage) found a block invalid; nothing was stored."""


class AccessDenied(BackendError):
    """The service does not let this user do that: not on its allow-list, or not in the role needed."""


def parse_address(url: str) -> str:
    """The socket path of ``baash:///path/to/baash.sock`` (or ``baash+unix:///...``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ConfigError(f"malformed BAASH URL {url!r}: expected baash:///path/to/baash.sock")
    path = rest.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        host = path.split("/", 1)[0]
        if ":" in host:
            raise ConfigError(
                f"BAASH URL {url!r} names a TCP address; the service no longer listens on TCP (it had no "
                f"authentication). Use the Unix socket of a service on this machine: baash:///path/to/baash.sock")
        raise ConfigError(f"malformed BAASH URL {url!r}: expected baash:///path/to/baash.sock (an absolute path)")
    return os.path.normpath(path)


class BaashBackend(Backend):
    def __init__(self, url: str, *, timeout: float = 330.0) -> None:
        super().__init__(url)
        self.path = parse_address(url)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return f"baash://{self.path}"

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except PermissionError as exc:
            sock.close()
            raise AccessDenied(
                f"the BAASH service at {self.path} does not admit uid {os.getuid()}: {exc.strerror}. Only the "
                f"service's user and members of its --socket-group reach the socket, and reading then needs the "
                f"role admin, provider or user on its allow-list (appending: provider or user)") from exc
        except OSError as exc:
            sock.close()
            raise BackendUnavailable(f"cannot reach the BAASH service at {self.path}: {exc}") from exc
        return sock

    def _exchange(self, sock: socket.socket, payload: bytes) -> dict[str, Any]:
        try:
            send_frame(sock, payload)
        except OSError:
            # A service that refuses us answers, then hangs up without reading it all:
            # the refusal may be waiting even though the send broke.
            sock.settimeout(2.0)
            try:
                return receive(sock, ANSWERS)
            except (OSError, ConnectionError, WireError):
                pass
            raise
        return receive(sock, ANSWERS)

    def _call(self, op: str, expect: str, **fields: Any) -> dict[str, Any]:
        payload = encode(op, **fields)
        if len(payload) > MAX_FRAME:
            raise BackendError(f"a BAASH {op} of {len(payload)} bytes is over the {MAX_FRAME}-byte frame limit; "
                               f"send fewer or smaller blocks at a time")
        with self._lock:
            for attempt in (1, 2):
                if self._sock is None:
                    self._sock = self._connect()
                try:
                    answer = self._exchange(self._sock, payload)
                    break
                except (OSError, ConnectionError, WireError) as exc:
                    self._sock.close()
                    self._sock = None
                    if attempt == 2 or isinstance(exc, WireError):
                        raise BackendUnavailable(f"BAASH service at {self.path}: {exc}") from exc
            if answer["kind"] == "error" and answer["status"] in ("forbidden", "bad_request"):
                if self._sock is not None:
                    self._sock.close()  # the service may have hung up
                self._sock = None
        if answer["kind"] == "error":
            status, message = answer["status"], answer["message"]
            if status == "conflict":
                raise AppendConflict(message)
            if status == "rejected":
                raise BlockRejected(f"the BAASH validators refused the block: {message}")
            if status == "unavailable":
                raise BackendUnavailable(f"BAASH service: {message}")
            if status == "forbidden":
                raise AccessDenied(f"BAASH service at {self.path}: {message}")
            raise BackendError(f"BAASH service answered {status}: {message}")
        if answer["kind"] != expect:
            raise BackendError(f"BAASH service answered {answer['kind']!r} to {op!r} (expected {expect!r})")
        return answer

    # -- the Backend contract --------------------------------------------------------------
    def append(self, blocks: Sequence[StoredBlock]) -> None:
        if blocks:
            self._call("append", "committed", blocks=[block_to_wire(b) for b in blocks])

    def head(self) -> ChainHead | None:
        head = self._call("head", "head")["head"]
        return None if head is None else ChainHead(int(head[0]), str(head[1]))

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        position = start
        while stop is None or position < stop:
            page = self._call("blocks", "blocks", start=position, stop=stop)["blocks"]
            if not page:
                return
            yield from page
            position += len(page)

    def record_count(self) -> int:
        return self._call("record_count", "count")["count"]

    def known(self, record_ids: Iterable[str]) -> set[str]:
        ids = list(record_ids)
        return set(self._call("known", "known", ids=ids)["known"]) if ids else set()

    @staticmethod
    def _located(items: list[Any]) -> list[Located]:
        return [Located(h, p, r) for h, p, r in items]

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        return self._located(self._call("find", "found", role=role, path=path, digest=digest)["found"])

    def by_run(self, run_id: str) -> list[Located]:
        return self._located(self._call("by_run", "found", run_id=run_id)["found"])

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        return self._located(self._call("by_id_prefix", "found", prefix=prefix, limit=limit)["found"])

    # -- beyond the contract: the service's own state ----------------------------------------
    def status(self) -> dict[str, Any]:
        return self._call("status", "status")["status"]

    def ledgers(self) -> list[dict[str, Any]]:
        """Every rank's in-memory ledger, each verified by the core on its rank."""
        return self._call("ledgers", "ledgers")["ledgers"]

    def whoami(self) -> dict[str, Any]:
        """The uid the service sees for this process and its roles there."""
        answer = self._call("whoami", "identity")
        return {"uid": answer["uid"], "roles": answer["roles"]}

    def register(self, uid: int, roles: Iterable[str]) -> list[str]:
        """Give ``uid`` these roles (admin, provider, user); an admin's call."""
        return self._call("register", "registered", uid=uid, roles=sorted(set(roles)))["roles"]

    def revoke(self, uid: int) -> None:
        """Take every role from ``uid``; an admin's call."""
        self._call("revoke", "registered", uid=uid)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
