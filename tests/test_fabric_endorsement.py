"""Endorsed answers that do not prove themselves, and endorsements kept as evidence
(issue 14, item 8), against a real Fabric network: what a lying gateway, a rogue CA, a
member org's client or a single org can make of a genuine answer, and `--save` /
`verify-endorsement` offline."""

from __future__ import annotations

import datetime
import json
import re

import pytest

from tests.conftest import run_cli
from tests.support.fabric import append_to, shared_network
from tests.support.factories import make_records

pytestmark = [pytest.mark.fabric, pytest.mark.timeout(600)]


@pytest.fixture(scope="session")
def fabric_network(request, tmp_path_factory):
    return shared_network(request, tmp_path_factory)  # the session's one network


def endorsed_head(url: str, cwd):
    return run_cli("-m", "lineage_ledger.backends.fabric", "endorsed-head", "--ledger", url, "--json",
                   program="python", cwd=cwd)


def test_a_peer_that_the_pinned_cas_did_not_issue_is_refused(fabric_network, workdir):
    """A profile that pins another CA for Org2MSP refuses Org2's real peer, and a quorum of
    two is then out of reach: exit 1, never a head."""
    org1, org2 = fabric_network.orgs
    wrong = {"Org1MSP": str(org1.ca_cert), "Org2MSP": str(org1.ca_cert)}
    url = fabric_network.client_url(org1, "p1", "provider", "pins", endorsers=wrong)
    result = endorsed_head(url, workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "claims Org2MSP, but no root CA of that MSP issued it" in result.stderr


def _issue(ca_cert, ca_key, unit: str, name: str):
    """A certificate (OU ``unit``) that ``ca_key`` signs, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject if ca_cert else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(max(now - datetime.timedelta(minutes=1),
                                  ca_cert.not_valid_before_utc if ca_cert else now - datetime.timedelta(minutes=1)))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca_cert is None, path_length=None), critical=True)
            .sign(ca_key or key, hashes.SHA256()))
    return cert, key


def _endorsement(msp_id: str, cert, key, signed: bytes):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from fabric_protos.msp import identities_pb2
    from fabric_protos.peer import proposal_response_pb2

    endorser = identities_pb2.SerializedIdentity(
        mspid=msp_id, id_bytes=cert.public_bytes(serialization.Encoding.PEM)).SerializeToString()
    return proposal_response_pb2.Endorsement(endorser=endorser,
                                             signature=key.sign(signed + endorser, ec.ECDSA(hashes.SHA256())))


def _rebuilt(envelope, *, answer: bytes | None = None, endorsements=None):
    """The endorsed envelope with its answer or its endorsements replaced (what a gateway,
    or anyone between it and us, could send)."""
    from fabric_protos.common import common_pb2
    from fabric_protos.peer import proposal_pb2, proposal_response_pb2, transaction_pb2

    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    action_payload = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload)
    action = action_payload.action
    if answer is not None:
        response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(action.proposal_response_payload)
        chaincode_action = proposal_pb2.ChaincodeAction.FromString(response_payload.extension)
        chaincode_action.response.payload = answer
        response_payload.extension = chaincode_action.SerializeToString()
        action.proposal_response_payload = response_payload.SerializeToString()
    if endorsements is not None:
        del action.endorsements[:]
        action.endorsements.extend(endorsements)
    transaction.actions[0].payload = action_payload.SerializeToString()
    payload.data = transaction.SerializeToString()
    return common_pb2.Envelope(payload=payload.SerializeToString())


def _action(envelope):
    from fabric_protos.common import common_pb2
    from fabric_protos.peer import transaction_pb2

    transaction = transaction_pb2.Transaction.FromString(common_pb2.Payload.FromString(envelope.payload).data)
    return transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload).action


def test_forged_altered_and_replayed_answers_are_refused(fabric_network, tmp_path):
    """Real endorsed answers from the network, then what a lying gateway could make of them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from lineage_ledger.backends import open_backend
    from lineage_ledger.backends.fabric._endorsement import EndorsementRefused, verify_endorsed_answer
    from tests.support.fabric import issue_client_certificate

    org1, org2 = fabric_network.orgs
    url = fabric_network.client_url(org1, "p1", "provider", "forge", endorsers=fabric_network.endorsers())
    append_to(url, tmp_path / "spool", make_records(5), 5)
    backend = open_backend(url)
    roots = backend.endorsement_roots()
    proposal, envelope = backend._client.endorsed_answer("lineage:TreeHead", b"forge")
    later_proposal, later = backend._client.endorsed_answer("lineage:TreeHead", b"forge")
    backend.close()

    def check(proposal_bytes, candidate, quorum=2, trusted=roots):
        return verify_endorsed_answer(proposal_bytes, candidate, roots=trusted, quorum=quorum, chaincode="lineage")

    answer, endorsers = check(proposal, envelope)
    assert answer.split(b"\t")[0] == b"5" and [e.msp_id for e in endorsers] == ["Org1MSP", "Org2MSP"]
    cases = {
        "the answer altered": (proposal, _rebuilt(envelope, answer=b"4" + answer[1:]), "does not verify"),
        "an earlier answer replayed": (later_proposal, envelope, "proposal hash differs"),
        "one org's endorsement dropped": (proposal, _rebuilt(envelope, endorsements=_action(envelope).endorsements[:1]),
                                          "1 organisation(s) (Org1MSP); 2 must sign"),
        "the same org twice": (proposal, _rebuilt(envelope, endorsements=[_action(envelope).endorsements[0]] * 2),
                               "2 must sign"),
    }
    signed = _action(envelope).proposal_response_payload  # what the real peers signed
    rogue_ca, rogue_ca_key = _issue(None, None, "ca", "ca.org2.example.com")
    rogue_peer, rogue_key = _issue(rogue_ca, rogue_ca_key, "peer", "peer0.org2.example.com")
    org2_ca = x509.load_pem_x509_certificate(org2.ca_cert.read_bytes())
    org2_key = serialization.load_pem_private_key(org2.ca_key.read_bytes(), password=None)
    client_cert, client_key_path = issue_client_certificate(org2, "mallory", "provider", tmp_path / "clients")
    client = x509.load_pem_x509_certificate(client_cert.read_bytes())
    client_key = serialization.load_pem_private_key(client_key_path.read_bytes(), password=None)
    first = _action(envelope).endorsements[0]
    cases["a peer of a CA outside the consortium"] = (
        proposal, _rebuilt(envelope, endorsements=[first, _endorsement("Org2MSP", rogue_peer, rogue_key, signed)]),
        "claims Org2MSP, but no root CA of that MSP issued it")
    cases["a client of a member org, not a peer"] = (
        proposal, _rebuilt(envelope, endorsements=[first, _endorsement("Org2MSP", client, client_key, signed)]),
        "is not a peer")
    # One org alone, even with a genuine peer key of its own CA, cannot make another answer.
    insider, insider_key = _issue(org2_ca, org2_key, "peer", "peer9.org2.example.com")
    altered = _rebuilt(envelope, answer=b"4" + answer[1:])
    altered_signed = _action(altered).proposal_response_payload
    cases["one org's peer endorsing another answer alone"] = (
        proposal, _rebuilt(altered, endorsements=[_endorsement("Org2MSP", insider, insider_key, altered_signed)]),
        "1 organisation(s) (Org2MSP); 2 must sign")
    cases["one org's peer endorsing another answer beside a real endorsement"] = (
        proposal, _rebuilt(altered, endorsements=[first, _endorsement("Org2MSP", insider, insider_key, altered_signed)]),
        "does not verify")
    for name, (proposal_bytes, candidate, message) in cases.items():
        with pytest.raises(EndorsementRefused, match=re.escape(message)):
            check(proposal_bytes, candidate)
        print("refused:", name)
    with pytest.raises(EndorsementRefused, match="MSP 'Org2MSP', which is not a trusted member"):
        check(proposal, envelope, quorum=1, trusted={"Org1MSP": roots["Org1MSP"]})
    assert check(later_proposal, later)[0] == answer  # a genuine answer still passes


def test_a_saved_endorsement_verifies_offline_and_becomes_a_checkpoint(fabric_network, workdir, tmp_path):
    """What the peers signed, kept with `--save`, proves the head again with no network, and
    the checkpoint it yields is one `verify-lineage --against` holds the ledger to."""
    org1, org2 = fabric_network.orgs
    url = fabric_network.client_url(org1, "p1", "provider", "saved")
    append_to(url, tmp_path / "s1", make_records(5, run_id="kept"), 2)
    saved = run_cli("-m", "lineage_ledger.backends.fabric", "endorsed-head", "--ledger", url, "--save",
                    "evidence.json", program="python", cwd=workdir)
    assert saved.returncode == 0, saved.stderr
    cas = ("--ca", f"Org1MSP={org1.ca_cert}", "--ca", f"Org2MSP={org2.ca_cert}")

    def verify(path, *options):
        return run_cli("-m", "lineage_ledger.backends.fabric", "verify-endorsement", path, *options,
                       program="python", cwd=workdir)

    result = verify("evidence.json", *cas, "-o", "endorsed.checkpoint")
    assert result.returncode == 0, result.stderr
    assert "endorsed by Org1MSP, Org2MSP" in result.stdout and "5 records" in result.stdout
    append_to(url, tmp_path / "s2", make_records(3, start=10, run_id="later"), 3)
    against = run_cli("--ledger", url, "--against", "endorsed.checkpoint", program="verify-lineage", cwd=workdir)
    assert against.returncode == 0, against.stdout + against.stderr

    data = json.loads((workdir / "evidence.json").read_text())
    edits = {"root": {"root": "00" * 32}, "ledger": {"ledger": "other"}, "channel": {"channel": "elsewhere"}}
    messages = {"root": "the file claims", "ledger": "does not ask the tree head of ledger 'other'",
                "channel": "made on channel 'lineage'"}
    for name, edit in edits.items():
        (workdir / f"{name}.json").write_text(json.dumps({**data, **edit}))
        result = verify(f"{name}.json", *cas)
        assert result.returncode == 1 and messages[name] in result.stderr, (name, result.stderr)
    result = verify("evidence.json", "--ca", f"Org1MSP={org1.ca_cert}")  # Org2 is no member to this verifier
    assert result.returncode == 1 and "'Org2MSP', which is not a trusted member" in result.stderr
    (workdir / "not.json").write_text('{"format": "something else"}')
    result = verify("not.json", *cas)
    assert result.returncode == 2 and "not an endorsed tree head" in result.stderr



def test_answers_asked_while_another_client_appends_wait_for_the_lagging_peer(fabric_network, tmp_path):
    """An append returns once the gateway's own peer has committed; the other org's peer may
    still be committing that block. An endorsed answer asked in that moment gets two
    different payloads, which the gateway refuses ("ProposalResponsePayloads do not match",
    seen once in CI): the client asks again until the peers agree, whether it names the
    orgs or lets the gateway plan. Here one thread appends record after record while the
    test asks for the endorsed head all along; every answer verifies and never goes back."""
    import threading

    from lineage_ledger.backends import open_backend
    from lineage_ledger.backends.fabric._endorsement import verify_endorsed_answer

    org1, _ = fabric_network.orgs
    url = fabric_network.client_url(org1, "p1", "provider", "lagging", endorsers=fabric_network.endorsers())
    records = make_records(16)
    appended = threading.Event()

    def append_one_by_one():
        try:
            for record in records:
                append_to(url, tmp_path / "spool", [record], 1)
        finally:
            appended.set()

    writer = threading.Thread(target=append_one_by_one)
    backend = open_backend(url)
    sizes = []
    try:
        roots = backend.endorsement_roots()
        writer.start()
        while not appended.is_set():
            proposal, envelope = backend._client.endorsed_answer("lineage:TreeHead", b"lagging")
            answer, _ = verify_endorsed_answer(proposal, envelope, roots=roots, quorum=2, chaincode="lineage")
            sizes.append(int(answer.split(b"\t")[0] or 0))
            sizes.append(backend.endorsed_tree_head().size)
        writer.join()
        assert backend.endorsed_tree_head().size == len(records)
    finally:
        writer.join()
        backend.close()
    assert sizes == sorted(sizes) and len(sizes) >= 4, sizes
