"""``baash:///path/to/baash.sock``: the back-end a Recorder or ``open_ledger`` uses to reach a service.

The service listens on a Unix socket (``lineage-ledger baash serve --socket PATH``); the
kernel tells it who we are, and its allow-list says what we may do (docs/baash.md). From
another node, ``baash+tls://host:port?ca=CA.pem&cert=CLIENT.pem&key=CLIENT.key`` reaches its
TLS listener (``--listen``): our certificate says who we are and, in its OUs, our roles.
One connection per back-end object, shared under a lock and reopened when it breaks.
Re-sending after a broken connection is safe: an append the service already committed
is an idempotent no-op the second time, and reads have no effect.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lineage_ledger._errors import AppendConflict, BackendError, BackendUnavailable, ConfigError
from lineage_ledger._model import StoredBlock
from lineage_ledger.backends._base import Backend, ChainHead, Located, Role

from ._wire import ANSWERS, MAX_FRAME, WireError, block_to_wire, encode, receive, send_frame
from .access import peer_uid, service_uids

__all__ = ["AccessDenied", "Address", "BaashBackend", "BlockRejected", "parse_address", "parse_url"]

SCHEMES = ("baash", "baash+unix")
TLS_SCHEME = "baash+tls"
_TLS_FORM = "baash+tls://host:port?ca=/path/ca.pem&cert=/path/client.pem&key=/path/client.key"


class BlockRejected(BackendError):
    """The service's validators (or shared storage) found a block invalid; nothing was stored."""


class AccessDenied(BackendError):
    """The service does not let this user do that: not on its allow-list, or not in the role needed."""


@dataclass(frozen=True)
class Address:
    """Where a service is: a Unix socket ``path``, or ``host:port`` with the TLS files."""

    path: str | None = None
    host: str = ""
    port: int = 0
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str | None = None

    @property
    def where(self) -> str:
        if self.path is not None:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(url: str) -> str:
    """The socket path of ``baash:///path/to/baash.sock`` (or ``baash+unix:///...``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ConfigError(f"malformed BAASH URL {url!r}: expected baash:///path/to/baash.sock or {_TLS_FORM}")
    path = rest.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        host = path.split("/", 1)[0]
        if ":" in host:
            raise ConfigError(
                f"BAASH URL {url!r} names a TCP address without TLS; the service takes TCP clients only "
                f"with mutual TLS: {_TLS_FORM}")
        raise ConfigError(f"malformed BAASH URL {url!r}: expected baash:///path/to/baash.sock (an absolute path)")
    return os.path.normpath(path)


def parse_url(url: str) -> Address:
    """A ``baash://`` / ``baash+unix://`` socket path, or a ``baash+tls://`` address and its files."""
    scheme, sep, _ = url.partition("://")
    if scheme.lower() != TLS_SCHEME:
        return Address(path=parse_address(url))
    parts = urllib.parse.urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"malformed BAASH URL {url!r}: {exc}; expected {_TLS_FORM}") from None
    if not host or port is None or parts.path not in ("", "/") or parts.username or parts.fragment:
        raise ConfigError(f"malformed BAASH URL {url!r}: expected {_TLS_FORM}")
    try:
        query = urllib.parse.parse_qs(parts.query, strict_parsing=bool(parts.query), max_num_fields=8)
    except ValueError as exc:
        raise ConfigError(f"malformed BAASH URL {url!r}: {exc}") from None
    unknown = set(query) - {"ca", "cert", "key", "server_name"}
    repeated = [name for name, values in query.items() if len(values) > 1]
    missing = [name for name in ("ca", "cert", "key") if name not in query]
    if unknown or repeated or missing:
        problem = (f"unknown parameter {sorted(unknown)[0]!r}" if unknown else
                   f"{repeated[0]!r} given twice" if repeated else f"missing {', '.join(missing)}")
        raise ConfigError(f"BAASH URL {url!r}: {problem}; expected {_TLS_FORM} (and optionally &server_name=NAME)")
    files = {name: os.path.abspath(query[name][0]) for name in ("ca", "cert", "key")}
    server_name = query["server_name"][0] if "server_name" in query else None
    return Address(host=host, port=port, server_name=server_name, **files)


class BaashBackend(Backend):
    def __init__(self, url: str, *, timeout: float = 330.0) -> None:
        super().__init__(url)
        self.address = parse_url(url)
        self.path = self.address.where
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._origin: str | None = None
        if self.address.path is None:
            from .tls import check_private_key, client_context

            check_private_key(self.address.key)
            self._tls = client_context(self.address.ca, self.address.cert, self.address.key)

    @property
    def identity(self) -> str:
        if self.address.path is None:
            return f"{TLS_SCHEME}://{self.address.where}"
        return f"baash://{self.path}"

    def _refused_tls(self, exc: ssl.SSLError) -> AccessDenied:
        reason = getattr(exc, "reason", None) or str(exc)
        for prefix in ("TLSV13_ALERT_", "TLSV1_ALERT_", "SSLV3_ALERT_"):  # OpenSSL's name of the alert
            if reason.startswith(prefix):
                reason = "TLS alert: " + reason[len(prefix):].lower().replace("_", " ")
        return AccessDenied(
            f"the BAASH service at {self.path} refused this client's TLS certificate ({reason}): it admits "
            f"only certificates its CA issued, within their validity dates, with a role OU "
            f"(OU=admin, OU=provider or OU=user); this client presents {self.address.cert}")

    def _connect(self) -> socket.socket:
        if self._tls is not None:
            return self._connect_tls(self._tls)
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
        # The service asks the kernel who we are; we ask who it is, before a byte is sent: a
        # socket another user planted where the service would be (/tmp) must get no record.
        uid = peer_uid(sock)
        if uid not in service_uids(self.path):
            sock.close()
            raise BackendError(
                f"the BAASH service at {self.path} is not who it should be: the process listening there runs as "
                f"uid {uid}, which is neither this user, root, nor the owner of a socket directory that only "
                f"its owner could have made (each directory above it writable by root or that owner alone); "
                f"nothing was sent. Serve from a directory only the service's user can write (--socket)")
        return sock

    def _connect_tls(self, context: ssl.SSLContext) -> socket.socket:
        address = self.address
        try:
            raw = socket.create_connection((address.host, address.port), timeout=self.timeout)
        except OSError as exc:
            raise BackendUnavailable(f"cannot reach the BAASH service at {self.path}: {exc}") from exc
        try:
            return context.wrap_socket(raw, server_hostname=address.server_name or address.host)
        except ssl.SSLCertVerificationError as exc:
            raise BackendError(
                f"the BAASH service at {self.path} is not who it should be: its certificate does not verify "
                f"against {address.ca} ({exc.verify_message}); nothing was sent") from exc
        except ssl.SSLError as exc:  # TLS 1.2: the service refused our certificate during the handshake
            raise self._refused_tls(exc) from exc
        except OSError as exc:
            raise BackendUnavailable(f"cannot reach the BAASH service at {self.path}: {exc}") from exc
        finally:
            raw.close()  # wrap_socket took over its descriptor, or failed

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
                except ssl.SSLError as exc:  # TLS 1.3: the refusal of our certificate comes as an alert
                    self._sock.close()
                    self._sock = None
                    raise self._refused_tls(exc) from exc
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

    @property
    def origin(self) -> str:
        """The ledger's name in its checkpoints, kept by the service (the same over every socket)."""
        if self._origin is None:
            self._origin = self.checkpoint()["origin"]
        return self._origin

    def checkpoint(self) -> dict[str, Any]:
        """The last tree head the ranks endorsed: ``note`` (a signed note, None before the
        first commit of this daemon's job), ``origin``, and ``keys``, the public keys the
        service says its ranks use. Check the note with keys you got another way
        (``DIR/keys/ranks.pub``): :func:`lineage_ledger.backends.baash.endorse.verify_endorsed`."""
        answer = self._call("checkpoint", "checkpoint")
        return {"origin": answer["origin"], "note": answer["note"], "keys": answer["keys"]}

    def whoami(self) -> dict[str, Any]:
        """Who the service sees (a uid, or a certificate's subject over TLS) and its roles there."""
        answer = self._call("whoami", "identity")
        return {"uid": answer["uid"], "subject": answer["subject"], "roles": answer["roles"]}

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
