"""Clients on other nodes: a TCP listener that admits only mutual-TLS clients with a role.

The Unix socket's identity is the kernel's word for the peer's uid; across nodes it is
a certificate. The service is given a CA, its own certificate and key (``--tls-ca``,
``--tls-cert``, ``--tls-key``), and a client must present a certificate that this CA
issued, that is inside its validity period and whose subject names a role in an
``OU`` (organizational unit) attribute, the way Fabric's NodeOUs classify identities:
``OU=user``, ``OU=provider``, ``OU=admin``. Other OUs are ignored; a certificate with no
role OU is refused like a uid that is not on the allow-list. OpenSSL checks the chain
and the dates during the handshake (TLS 1.2 at least); a client that fails them never
reaches the request parser. The role model is :mod:`.access`'s: admins read and register,
providers and users read and append.

The listener binds the loopback address unless a host is named (``--listen HOST:PORT``).
Clients name the files in the URL::

    baash+tls://host:port?ca=/path/ca.pem&cert=/path/client.pem&key=/path/client.key

and check the service's certificate against the same CA and the host name (or
``server_name=NAME`` when the certificate names the service differently).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lineage_ledger._errors import ConfigError

from ._wire import ROLES, encode, send_frame

if TYPE_CHECKING:
    from .admission import Admission

__all__ = ["Peer", "TLSListener", "certificate_peer", "client_context", "parse_listen", "server_context", "uid_peer"]

log = logging.getLogger("lineage_ledger.baash")
HANDSHAKE_SECONDS = 10.0  # a client that connects and says nothing must not hold a thread
REFUSED_DRAIN = 1 << 20
REFUSED_SECONDS = 2.0  # a refused client's connection is closed this long after its answer, at most


@dataclass(frozen=True)
class Peer:
    """Who is at the other end: a uid (Unix socket, roles from the allow-list) or a
    certificate (TCP, roles fixed by the certificate)."""

    name: str
    uid: int | None = None
    subject: str | None = None
    roles: frozenset[str] | None = None  # None: look the uid up in the allow-list at each request
    how_to_gain: str = ""


def uid_peer(uid: int) -> Peer:
    return Peer(f"uid {uid}", uid=uid,
                how_to_gain="on this BAASH service's allow-list (an admin adds it: "
                            "lineage-ledger baash register --ledger URL USER ROLE)")


def certificate_peer(der: bytes) -> Peer:
    """The peer a verified client certificate names: its subject, and its role OUs."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certificate = x509.load_der_x509_certificate(der)
    units = {attr.value for attr in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    subject = certificate.subject.rfc4514_string()
    return Peer(f"certificate {subject!r}", subject=subject[:1024],
                roles=frozenset(role for role in ROLES if role in units),
                how_to_gain="as an OU of its certificate (OU=admin, OU=provider or OU=user), issued by this "
                            "BAASH service's CA")


def _load(context: ssl.SSLContext, ca: str, cert: str, key: str, who: str) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{who}: cannot load the CA certificate {ca}: {exc}") from None
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{who}: cannot load the certificate {cert} with its key {key}: {exc}") from None
    return context


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """Mutual TLS for the service: its certificate, and client certificates from ``ca`` required."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca, cert, key, "the BAASH TLS listener")


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """Mutual TLS for a client: the service's certificate must chain to ``ca`` and name its host."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname is on
    return _load(context, ca, cert, key, "BAASH client")


def parse_listen(value: str) -> tuple[str, int]:
    """``PORT`` (loopback), ``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {value!r}: expected PORT or HOST:PORT (loopback when no host is given)")
    return host, int(port)


def drain_and_close(sock: socket.socket) -> None:
    """Hang up so that the peer reads what was sent (an answer, a TLS alert), not a reset:
    half-close, then read and drop what it still sends until it closes, for
    :data:`REFUSED_SECONDS` in all (a wait per read let a peer that sent a byte now and
    then hold the connection, and a thread, for as long as it liked)."""
    deadline = time.monotonic() + REFUSED_SECONDS
    try:
        sock.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < REFUSED_DRAIN:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    finally:
        sock.close()


class TLSListener:
    """A threaded TCP server: handshake with a client certificate, then ``serve(sock, peer)``.
    Connections count against ``admission`` by host until the handshake names the client,
    then by its certificate."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext,
                 serve: Callable[[socket.socket, Peer], None], on_refused: Callable[[str], None],
                 admission: Admission | None = None) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.key = f"host {self.client_address[0]}"  # what the connection counts under
                if admission is not None and admission.admit(self.key) is not None:
                    self.request.close()  # before a handshake there is no channel to say why on
                    return
                try:
                    self._handle()
                finally:
                    if admission is not None and self.key:
                        admission.release(self.key)

            def _handle(self) -> None:
                raw: socket.socket = self.request
                raw.settimeout(HANDSHAKE_SECONDS)  # CPython's handshake takes it as a deadline for all of it
                tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                try:
                    tls.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
                    on_refused(f"a TLS client from {self.client_address[0]} failed the handshake: {reason}")
                    drain_and_close(tls)  # OpenSSL has sent its alert; let the client read it
                    return
                tls.settimeout(None)
                der = tls.getpeercert(binary_form=True)
                if not der:  # CERT_REQUIRED makes this impossible; refuse rather than assume
                    on_refused(f"a TLS client from {self.client_address[0]} sent no certificate")
                    drain_and_close(tls)
                    return
                peer = certificate_peer(der)
                if admission is not None:
                    why = admission.rekey(self.key, peer.name)
                    self.key = "" if why is not None else peer.name
                    if why is not None:
                        with contextlib.suppress(OSError):
                            send_frame(tls, encode("error", status="unavailable", message=why))
                        drain_and_close(tls)
                        return
                try:
                    serve(tls, peer)
                finally:
                    tls.close()

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = family

        self.server = Server(address, Handler)
        bound = self.server.server_address
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="baash-tls",
                         daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def check_private_key(path: str) -> None:
    """A client's private key readable by others is refused, as ssh refuses one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"the TLS key {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
