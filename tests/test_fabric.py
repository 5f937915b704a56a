"""The Fabric back-end against a real Fabric 2.5 network (tests/support/fabric.py).

One network per session: an orderer and two organisations' peers as local processes, the
provenance chaincode deployed as a service. Each test uses a ledger of its own name on it.
"""

from __future__ import annotations

import itertools
import threading

import pytest

from lineage_ledger import AppendConflict, BackendUnavailable, build_block, open_ledger
from lineage_ledger.backends import open_backend
from tests.backend_conformance import BackendConformance, chain_of
from tests.conftest import run_cli
from tests.support.fabric import shared_network
from tests.support.factories import make_records

pytestmark = [pytest.mark.fabric, pytest.mark.timeout(600)]
_names = itertools.count()


@pytest.fixture(scope="session")
def fabric_network(request, tmp_path_factory):
    return shared_network(request, tmp_path_factory)  # one network for every fabric test module


@pytest.fixture
def ledger_name():
    return f"t{next(_names)}"


@pytest.fixture
def provider_url(fabric_network, ledger_name):
    return fabric_network.client_url(fabric_network.orgs[0], "provider1", "provider", ledger_name)


class TestFabricConformance(BackendConformance):
    @pytest.fixture
    def url(self, provider_url):
        return provider_url


def test_mvcc_refuses_the_second_block_at_one_height(fabric_network, ledger_name):
    """Both rivals are endorsed on the empty ledger; ordering decides, validation refuses the loser."""
    org1, org2 = fabric_network.orgs
    first = open_backend(fabric_network.client_url(org1, "provider1", "provider", ledger_name))
    second = open_backend(fabric_network.client_url(org2, "user2", "user", ledger_name))
    from lineage_ledger.backends.fabric._gateway import TransactionInvalid
    from lineage_ledger.backends.fabric.backend import encode_blocks

    ledger = ledger_name.encode()
    ours = chain_of(make_records(3, run_id="ours"), 3)
    theirs = chain_of(make_records(3, run_id="theirs"), 3)
    prepared_ours = first._client.endorse("lineage:Append", ledger, encode_blocks(ours))
    prepared_theirs = second._client.endorse("lineage:Append", ledger, encode_blocks(theirs))
    first._client.commit(prepared_ours)
    with pytest.raises(TransactionInvalid) as refused:
        second._client.commit(prepared_theirs)
    assert refused.value.code_name == "MVCC_READ_CONFLICT"
    assert second.head().id == ours[0].id  # org2's peer has ours, not theirs
    assert second.known([r.id for r in theirs[0].records]) == set()
    with pytest.raises(AppendConflict):  # and through the Backend contract
        second.append(theirs)
    first.close(), second.close()


def test_concurrent_appends_on_one_head_leave_one_chain(fabric_network, ledger_name):
    org1, org2 = fabric_network.orgs
    urls = [fabric_network.client_url(org, f"w{i}", "provider", ledger_name) for i, org in enumerate((org1, org2))]
    results: list[object] = []

    def write(url: str, run_id: str) -> None:
        backend = open_backend(url)
        try:
            backend.append(chain_of(make_records(5, run_id=run_id), 5))
            results.append("ok")
        except AppendConflict as exc:
            results.append(exc)
        finally:
            backend.close()

    threads = [threading.Thread(target=write, args=(url, f"r{i}")) for i, url in enumerate(urls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("ok") == 1 and len(results) == 2
    ledger = open_ledger(urls[0], spool=str(fabric_network.base / f"spool-{ledger_name}"))
    assert ledger.verify_chain().records == 5
    ledger.close()


def test_chaincode_recomputes_ids_and_roots(fabric_network, ledger_name, provider_url):
    from lineage_ledger.backends.fabric import InvalidBlock
    from lineage_ledger.backends.fabric.backend import StoredBlock, StoredRecord

    backend = open_backend(provider_url)
    block = chain_of(make_records(4), 4)[0]
    edited = StoredRecord(block.records[1].id, block.records[1].body.replace(b"task-1", b"task-9"))
    tampered = StoredBlock(0, block.id, block.header, (block.records[0], edited, *block.records[2:]))
    with pytest.raises(InvalidBlock, match="does not hash to its id"):
        backend.append([tampered])
    reordered = StoredBlock(0, block.id, block.header, (block.records[1], block.records[0], *block.records[2:]))
    with pytest.raises(InvalidBlock, match="Merkle root"):
        backend.append([reordered])
    assert backend.head() is None  # nothing of a refused transaction is stored
    backend.append([block])
    duplicate = build_block([block.records[2]], backend.head()).stored()
    with pytest.raises(AppendConflict, match="already stored"):
        backend.append([duplicate])
    backend.close()


def test_id_filter_keeps_known_and_duplicate_checks_exact(fabric_network, ledger_name, provider_url):
    """The chaincode skips id reads for records its Bloom filter has never seen: every
    stored record must still be known and refused again, however many blocks ago it came."""
    backend = open_backend(provider_url)
    records = [r.stored() for r in make_records(600)]
    stored, fresh = records[:500], records[500:]
    ledger = open_ledger(provider_url)
    for start in range(0, len(stored), 100):  # five blocks: the filter's shards fill up
        assert ledger.append_records(stored[start : start + 100], block_size=100) == 100
    asked = [r.id for r in stored[::7]] + [r.id for r in fresh] + ["not-a-record-id", "0" * 64]
    assert backend.known(asked) == {r.id for r in stored[::7]}
    for old in (stored[0], stored[250], stored[-1]):
        duplicate = build_block([fresh[0], old], backend.head()).stored()
        with pytest.raises(AppendConflict, match="already stored"):
            backend.append([duplicate])
    assert ledger.append_records(records) == len(fresh)  # only the new ones, in one more block
    assert backend.record_count() == len(records)
    assert backend.known(r.id for r in records) == {r.id for r in records}
    ledger.close()
    backend.close()


def test_roles_after_table_1(fabric_network, ledger_name, provider_url):
    from lineage_ledger.backends.fabric import AccessDenied

    org1, org2 = fabric_network.orgs
    provider = open_backend(provider_url)
    provider.append(chain_of(make_records(6), 3))
    # An admin (the MSP's admin certificate) reads, across organisations too ...
    admin1 = open_backend(fabric_network.cryptogen_url(org1, "Admin", ledger_name))
    admin2 = open_backend(fabric_network.cryptogen_url(org2, "Admin", ledger_name))
    assert admin1.whoami()[2] == admin2.whoami()[2] == "admin"
    assert admin2.head() == provider.head() and admin2.record_count() == 6
    # ... but never writes records.
    with pytest.raises(AccessDenied, match="admin.*not write records"):
        admin1.append([build_block([make_records(1, start=50)[0].stored()], admin1.head()).stored()])
    # A member of the org without a lineage role is refused, reading and writing alike.
    stranger_url = fabric_network.client_url(org1, "stranger", None, ledger_name)
    stranger = open_backend(stranger_url)
    with pytest.raises(AccessDenied, match="no lineage role.*may not read"):
        stranger.head()
    with pytest.raises(AccessDenied, match="may not write records"):
        stranger.append([build_block([make_records(1, start=60)[0].stored()], provider.head()).stored()])
    # Only an admin registers clients; once registered as a user, the stranger writes.
    with pytest.raises(AccessDenied, match="only an admin"):
        provider.register_client(stranger.whoami()[1], "user")
    admin1.register_client(stranger.whoami()[1], "user")
    stranger.append([build_block([make_records(1, start=60)[0].stored()], provider.head()).stored()])
    assert stranger.whoami()[2] == "user" and provider.record_count() == 7
    for backend in (provider, admin1, admin2, stranger):
        backend.close()


def test_identity_outside_the_consortium_is_refused(fabric_network, ledger_name, tmp_path):
    """A certificate from a CA the channel does not know is refused by the peer itself."""
    from lineage_ledger.backends.fabric import AccessDenied
    from tests.support.fabric import Org, issue_client_certificate

    org1 = fabric_network.orgs[0]
    rogue = Org("Rogue", "Org1MSP", "rogue.example.org", 0, 0, 0, base=tmp_path)
    _self_signed_ca(rogue)
    cert, key = issue_client_certificate(rogue, "mallory", "provider", tmp_path / "rogue")
    url = fabric_network.profile_url("rogue", org1, cert, key, ledger_name)
    backend = open_backend(url)
    with pytest.raises(AccessDenied, match="creator org unknown"):
        backend.append(chain_of(make_records(2), 2))
    with pytest.raises(AccessDenied, match="creator org unknown"):
        backend.head()
    backend.close()


def _self_signed_ca(org) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ca.{org.domain}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    org.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    org.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    org.ca_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))


def test_cli_records_into_fabric_and_verify_lineage_passes(fabric_network, provider_url, workdir):
    (workdir / "raw.txt").write_text("c\na\nb\n")
    run = ("run", "--ledger", provider_url, "--run-id", "r1")
    run_cli(*run, "-i", "raw.txt", "-o", "sorted.txt", "-n", "sort", "--", "sh", "-c", "sort raw.txt > sorted.txt",
            cwd=workdir, check_rc=0)
    run_cli(*run, "-i", "sorted.txt", "-o", "top.txt", "-n", "head", "--", "sh", "-c", "head -n1 sorted.txt > top.txt",
            cwd=workdir, check_rc=0)
    result = run_cli("--ledger", provider_url, "top.txt", program="verify-lineage", cwd=workdir, check_rc=0)
    assert "cli:head" in result.stdout and "cli:sort" in result.stdout
    (workdir / "sorted.txt").write_text("tampered\n")
    result = run_cli("--ledger", provider_url, "top.txt", program="verify-lineage", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sorted.txt" in result.stdout


def test_killed_peer_records_wait_in_the_spool_and_arrive(fabric_network, provider_url, tmp_path):
    org1 = fabric_network.orgs[0]
    ledger = open_ledger(provider_url, spool=str(tmp_path / "spool"))
    recorder = ledger.recorder(batch_size=20, max_age=0.05)
    records = make_records(60, run_id="outage")
    for record in records[:20]:
        recorder.record(record)
    assert recorder.flush(timeout=60)
    fabric_network.kill_peer(org1)  # kill -9 the gateway peer
    try:
        with pytest.raises(BackendUnavailable):
            ledger.backend.head()
        for record in records[20:]:
            recorder.record(record)
        assert not recorder.flush(timeout=3)
        assert recorder.pending == 40  # waiting in the spool, not lost
        assert any((tmp_path / "spool").rglob("*"))
    finally:
        fabric_network.start_peer(org1)
    assert recorder.flush(timeout=180)
    recorder.close(timeout=30)
    summary = ledger.verify_chain()
    assert summary.records == 60
    assert {e.record.task_id for e in ledger.run("outage")} == {r.task_id for r in records}
    ledger.close()


def test_parsl_example_records_into_fabric(fabric_network, provider_url, workdir):
    from tests.support.engine_example import run_parsl_example_and_verify

    summary = run_parsl_example_and_verify(provider_url, workdir)
    assert summary == {"count": 50, "sum_of_squares": 42925}
