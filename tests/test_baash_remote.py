"""What a client on another node gets from BAASH: mutual TLS (issue 15, item 2) and tree
heads endorsed by a quorum of the ranks (issue 14, item 8).

One real service (``lineage-ledger baash serve --listen 0 --tls-...``) for the module, with
real certificates made here: a client certificate from the service's CA with a role OU
is served in that role; no certificate, another CA's, an expired one, or one without a
role is refused with a clear ``AccessDenied`` and nothing it sent is committed. The Unix
socket keeps working beside the listener. A client fetches the tree head the ranks signed
and checks it against their public keys.
"""

from __future__ import annotations

import os
import socket
import ssl
import time

import pytest

from lineage_ledger import BackendError, CheckpointInvalid, ConfigError, build_block
from lineage_ledger._log.checkpoint import generate_key, parse
from lineage_ledger.backends import open_backend
from lineage_ledger.backends.baash import AccessDenied
from lineage_ledger.backends.baash._wire import ANSWERS, encode, receive, send_frame
from lineage_ledger.backends.baash.endorse import load_verifiers, verify_endorsed
from tests.conftest import run_cli
from tests.support.baash import BaashService, Pki, tls_url
from tests.support.factories import make_records

pytestmark = pytest.mark.mpi

#: How long the service may take to count a refusal its client has already heard of:
#: only a limit for a hang (it is a few microseconds, or a thread switch on a busy machine).
COUNTED_BOUND_S = 30


@pytest.fixture(scope="module")
def tls_service(tmp_path_factory):
    base = tmp_path_factory.mktemp("baash-tls")
    pki = Pki(base / "pki")
    cert, key = pki.issue("ledger-service", server=True)
    service = BaashService(base, 4, "--listen", "0", "--tls-ca", str(pki.ca), "--tls-cert", str(cert),
                           "--tls-key", str(key))
    try:
        yield service, pki
    finally:
        service.stop()


def _url(service: BaashService, pki: Pki, cert, key) -> str:
    return tls_url(service.info["tls"], pki.ca, cert, key)


def _block(backend, run_id: str, count: int = 2):
    return build_block([r.stored() for r in make_records(count, run_id=run_id)], backend.head()).stored()


def test_a_certificate_with_a_role_is_served_in_that_role(tls_service, tmp_path):
    service, pki = tls_service
    assert service.info["tls"].startswith("127.0.0.1:"), "loopback is the default bind address"
    owner = open_backend(service.url)  # the Unix socket keeps working beside the listener
    owner.append([_block(owner, "over-unix")])

    user = open_backend(_url(service, pki, *pki.issue("alice", units=("physics", "user"))))
    assert user.identity == f"baash+tls://{service.info['tls']}"
    assert user.head() == owner.head()
    user.append([_block(user, "over-tls")])
    assert owner.head() == user.head() and len(list(owner.by_run("over-tls"))) == 2
    assert user.whoami() == {"uid": None, "subject": "OU=user,OU=physics,CN=alice", "roles": ["user"]}
    with pytest.raises(AccessDenied, match="'register': it needs the role admin .*OU of its certificate"):
        user.register(12345, ["user"])

    admin_url = _url(service, pki, *pki.issue("root-of-trust", units=("admin",)))
    admin = open_backend(admin_url)
    assert admin.register(12345, ["user"]) == ["user"]
    head = admin.head()
    with pytest.raises(AccessDenied, match="'append': it needs the role provider or user"):
        admin.append([_block(admin, "admin-writes")])
    assert owner.head() == head

    # Users meet it through the CLI: whoami, and verification of the whole ledger over TLS.
    result = run_cli("baash", "whoami", "--ledger", admin_url, cwd=tmp_path)
    assert result.stdout.strip() == "certificate OU=admin,CN=root-of-trust: admin"
    result = run_cli("--ledger", admin_url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    assert "verified" in result.stdout + result.stderr


@pytest.mark.parametrize("case", ["other CA", "expired", "not yet valid", "no role"])
def test_a_certificate_the_service_does_not_accept_is_refused_and_writes_nothing(tls_service, case):
    service, pki = tls_service
    owner = open_backend(service.url)
    head, refused = owner.head(), owner.status()["refused_connections"]
    if case == "other CA":
        issued = Pki(pki.directory.parent / "other", "another CA").issue("mallory", units=("user",))
        expected = "refused this client's TLS certificate .*(unknown ca|certificate unknown|bad certificate)"
    elif case == "expired":
        issued = pki.issue("old-alice", units=("user",), days=(-30, -1))
        expected = "refused this client's TLS certificate .*expired"
    elif case == "not yet valid":
        issued = pki.issue("future-alice", units=("user",), days=(1, 30))
        expected = "refused this client's TLS certificate"
    else:
        issued = pki.issue("no-role", units=("physics",))
        expected = "certificate 'OU=physics,CN=no-role' may not use this service: it needs the role admin"
    client = open_backend(_url(service, pki, *issued))
    for attempt in (lambda: client.append([_block(owner, f"refused-{case}")]), client.head):
        with pytest.raises(AccessDenied, match=expected):
            attempt()
    assert owner.head() == head, "nothing a refused client sent was committed"
    # A failed handshake is counted after OpenSSL has sent the client its alert, so the
    # client may hear of its refusal before the count moves: wait for it (a bound for a hang).
    deadline = time.monotonic() + COUNTED_BOUND_S
    while (counted := owner.status()["refused_connections"] - refused) < 2:
        assert time.monotonic() < deadline, f"{counted} of the 2 refusals counted after {COUNTED_BOUND_S} s"
        time.sleep(0.02)


def test_a_client_without_a_certificate_is_refused_before_any_request(tls_service):
    """A TLS client that presents no certificate (Python's ssl, as any TLS library would)."""
    service, pki = tls_service
    owner = open_backend(service.url)
    head = owner.head()
    host, port = service.info["tls"].rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(pki.ca))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE"):
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                send_frame(tls, encode("head"))
                receive(tls, ANSWERS)
    # And plain TCP (no TLS at all) gets no answer, only a closed connection.
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        send_frame(raw, encode("head"))
        assert raw.recv(65536)[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    assert owner.head() == head


def test_the_client_checks_the_service_certificate_and_the_url(tls_service):
    service, pki = tls_service
    other = Pki(pki.directory.parent / "impostor", "impostor CA")
    cert, key = pki.issue("bob", units=("user",))
    with pytest.raises(BackendError, match="is not who it should be"):
        open_backend(tls_url(service.info["tls"], other.ca, cert, key)).head()
    for bad in (f"baash+tls://{service.info['tls']}?ca={pki.ca}&cert={cert}",
                f"baash+tls://{service.info['tls']}?ca={pki.ca}&cert={cert}&key={key}&pin=1",
                f"baash://{service.info['tls']}"):
        with pytest.raises(ConfigError, match="baash\\+tls://host:port\\?ca="):
            open_backend(bad)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        open_backend(tls_url(service.info["tls"], pki.ca, cert, key))


def test_listen_needs_the_tls_files(tmp_path):
    result = run_cli("baash", "serve", "--storage", str(tmp_path / "s"), "--listen", "0", cwd=tmp_path, check_rc=2)
    assert "--listen takes TCP clients only with mutual TLS: give --tls-ca, --tls-cert, --tls-key" in result.stderr


def test_the_ranks_endorse_the_tree_head_and_a_remote_client_checks_it(tls_service, tmp_path):
    service, pki = tls_service
    url = _url(service, pki, *pki.issue("auditor", units=("admin",)))
    writer = open_backend(_url(service, pki, *pki.issue("carol", units=("user",))))
    for run in ("endorsed-1", "endorsed-2"):
        writer.append([_block(writer, run, 3)])
    keys = service.storage / "keys" / "ranks.pub"
    assert len(load_verifiers(str(keys))) == 4, "one key per rank slot, published in shared storage"

    endorsed = tmp_path / "endorsed.checkpoint"
    run_cli("baash", "checkpoint", "--ledger", url, "--keys", keys, "-o", endorsed, cwd=tmp_path, check_rc=0)
    note = endorsed.read_text()
    assert (service.storage / "checkpoint").read_text() == note  # kept for a restarted daemon and its ranks
    assert len([line for line in note.splitlines() if line.startswith("\u2014 baash-rank-")]) == 4
    checkpoint = verify_endorsed(note, load_verifiers(str(keys)))
    # The head the ranks signed is the core's own tree head of this ledger, under the service's origin.
    core = run_cli("checkpoint", "--ledger", url, cwd=tmp_path, check_rc=0).stdout
    assert parse(core).origin == checkpoint.origin == writer.origin
    assert (parse(core).size, parse(core).root) == (checkpoint.size, checkpoint.root)
    assert checkpoint.size == writer.record_count()
    run_cli("--ledger", url, "--against", endorsed, "--pubkey", service.storage / "keys" / "rank-2.pub",
            cwd=tmp_path, program="verify-lineage", check_rc=0)

    # A changed root fails every rank's signature; two signatures are not a quorum of four.
    body, _, signatures = note.partition("\n\n")
    lines = body.split("\n")
    forged = "\n".join([*lines[:2], lines[2][:-6] + ("AAAAA=" if lines[2][-6:] != "AAAAA=" else "BBBBB=")])
    tampered = tmp_path / "tampered.checkpoint"
    tampered.write_text(forged + "\n\n" + signatures)
    with pytest.raises(CheckpointInvalid, match="does not verify"):
        verify_endorsed(tampered.read_text(), load_verifiers(str(keys)))
    run_cli("--ledger", url, "--against", tampered, "--pubkey", service.storage / "keys" / "rank-2.pub",
            cwd=tmp_path, program="verify-lineage", check_rc=1)
    two = body + "\n\n" + "".join(line + "\n" for line in signatures.splitlines()[:2])
    with pytest.raises(CheckpointInvalid, match="signed by 2 of the 4 ranks' keys"):
        verify_endorsed(two, load_verifiers(str(keys)))

    # Through the CLI: seven trusted keys (the four ranks' and three others) need five signatures.
    more = tmp_path / "seven.pub"
    more.write_text(keys.read_text() + "".join(generate_key(f"other-{i}")[1] + "\n" for i in range(3)))
    result = run_cli("baash", "checkpoint", "--ledger", url, "--keys", more, cwd=tmp_path, check_rc=1)
    assert "signed by 4 of the 7 ranks' keys" in result.stderr and "a quorum is 5" in result.stderr
    result = run_cli("baash", "checkpoint", "--ledger", url, "--keys", keys, "--quorum", "5", cwd=tmp_path, check_rc=2)
    assert "--quorum 5 is more than the 4 keys" in result.stderr
    assert os.path.getsize(endorsed) == len(note.encode())
