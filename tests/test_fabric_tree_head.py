"""The tree head the consortium endorses (issue 14, item 8), against a real Fabric network.

The chaincode keeps the ledger's RFC 9162 log tree as world state and every endorsing peer
signs its tree head; the client proves the signatures against the member orgs' root CAs and
compares the head with the tree the core verified from the records it read.
"""

from __future__ import annotations

import base64
import datetime
import json
import re

import pytest
from blake3 import blake3

from lineage_ledger import open_ledger
from lineage_ledger._tree import BLAKE3, levels_of, memory_source, root
from tests.conftest import run_cli
from tests.support.fabric import (
    PRE_TREE_CHAINCODE_COMMIT,
    build_chaincode,
    chaincode_source_at,
    shared_network,
)
from tests.support.factories import make_records

pytestmark = [pytest.mark.fabric, pytest.mark.timeout(600)]
_EMPTY_ROOT = blake3(b"").hexdigest()


@pytest.fixture(scope="session")
def fabric_network(request, tmp_path_factory):
    return shared_network(request, tmp_path_factory)  # the session's one network (test_fabric.py's too)


def endorsed_head(url: str, cwd):
    """``python -m lineage_ledger.backends.fabric endorsed-head --json``, as a user runs it."""
    return run_cli("-m", "lineage_ledger.backends.fabric", "endorsed-head", "--ledger", url, "--json",
                   program="python", cwd=cwd)


def _append(url: str, spool, records, block_size: int) -> None:
    ledger = open_ledger(url, spool=str(spool))
    try:
        ledger.append_records([r.stored() for r in records], block_size=block_size)
    finally:
        ledger.close()


def _log_root(url: str) -> tuple[int, str]:
    """The RFC 9162 root over every record id the ledger returns, computed from scratch."""
    from lineage_ledger.backends import open_backend

    backend = open_backend(url)
    try:
        leaves = [BLAKE3.leaf(bytes.fromhex(r.id)) for block in backend.blocks() for r in block.records]
    finally:
        backend.close()
    return len(leaves), root(memory_source(levels_of(leaves, BLAKE3)), len(leaves), BLAKE3).hex()


@pytest.mark.parametrize("pinned", [True, False], ids=["profile-pins-the-CAs", "CAs-from-the-channel-config"])
def test_endorsed_head_matches_the_verified_tree_after_appends(fabric_network, workdir, tmp_path, pinned):
    org1, org2 = fabric_network.orgs
    extra = {"endorsers": fabric_network.endorsers()} if pinned else {}
    ledger_name = f"eh{int(pinned)}"
    url = fabric_network.client_url(org1, "p1", "provider", ledger_name, **extra)
    result = endorsed_head(url, workdir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["size"] == 0 and json.loads(result.stdout)["root"] == _EMPTY_ROOT
    other_org = fabric_network.client_url(org2, "u2", "user", ledger_name, **extra)
    # Blocks of 1, 3, 4 and 5 records (sizes that are and are not powers of two), from both orgs.
    for i, (url_i, count, block_size) in enumerate([(url, 4, 1), (other_org, 3, 3), (url, 9, 5)]):
        _append(url_i, tmp_path / f"spool{i}", make_records(count, start=100 * i, run_id=f"r{i}"), block_size)
        result = endorsed_head(url_i, workdir)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert (answer["size"], answer["root"]) == _log_root(url_i)
        assert answer["matches_verified_tree"] is True
        assert [e["msp_id"] for e in answer["endorsers"]] == ["Org1MSP", "Org2MSP"]  # MAJORITY of 2: both
        assert all("OU=peer" in e["subject"] for e in answer["endorsers"])
    assert answer["size"] == 16 and answer["blocks"] == 4 + 1 + 2


def test_a_rewritten_local_view_fails_against_the_endorsed_head(fabric_network, workdir, tmp_path):
    """The client rewrites what it remembers as verified (one record swapped for another,
    every hash above it recomputed): it can publish a checkpoint of that history, but the
    peers' endorsed head does not match it."""
    url = fabric_network.client_url(fabric_network.orgs[0], "p1", "provider", "rewrite")
    records = make_records(6, run_id="honest")
    _append(url, tmp_path / "spool", records, 2)
    ledger = open_ledger(url, read_only=True)
    ledger.tree_head()
    store = ledger.verifier.store
    forged_id = blake3(records[3].stored().body.replace(b"honest", b"forged")).digest()
    with store.locked():
        writer = store.fresh_writer()
        for block in ledger.backend.blocks():
            leaves = [BLAKE3.leaf(bytes.fromhex(r.id)) for r in block.records]
            if block.height == 1:
                leaves[1] = BLAKE3.leaf(forged_id)  # record 3 of the ledger
            writer.add_block(block.id, leaves)
        writer.commit(audited=True)
        writer.close()
        store.adopt(writer)
    ledger.close()
    # The rewritten view is this client's to publish: a checkpoint of it is written, exit 0 ...
    published = run_cli("checkpoint", "--ledger", url, cwd=workdir)
    assert published.returncode == 0, published.stderr
    forged_root = base64.b64decode(published.stdout.splitlines()[2]).hex()
    assert forged_root == store.root_at(6) != _log_root(url)[1]
    # ... but the peers' endorsement is not the client's to make.
    result = endorsed_head(url, workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verification failed" in result.stderr and "is not the tree verified" in result.stderr
    assert "Org1MSP, Org2MSP" in result.stderr and forged_root in result.stderr


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
    _append(url, tmp_path / "spool", make_records(5), 5)
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


def _legacy_chaincode_source(tmp_path):
    """The chaincode as it was before the log tree, from this repository's history."""
    source, why_not = chaincode_source_at(PRE_TREE_CHAINCODE_COMMIT, tmp_path / "legacy")
    if source is None:
        pytest.skip(f"commit {PRE_TREE_CHAINCODE_COMMIT} (the chaincode before the log tree) is not in this "
                    f"checkout's history (a shallow clone?): {why_not}")
    return source


def test_a_ledger_of_the_previous_chaincode_gets_its_tree_after_the_upgrade(fabric_network, workdir, tmp_path):
    """Deployed as the chaincode was before the tree, then upgraded in place (a new sequence):
    the old ledger keeps working, has no endorsed head until `build-tree`, then matches."""
    legacy = build_chaincode(_legacy_chaincode_source(tmp_path))
    fabric_network.deploy_chaincode("legacy", legacy, sequence=1)
    org1 = fabric_network.orgs[0]
    url = fabric_network.client_url(org1, "p1", "provider", "old", chaincode="legacy")
    _append(url, tmp_path / "s1", make_records(7, run_id="before"), 3)  # blocks of 3, 3, 1
    result = run_cli("-m", "lineage_ledger.backends.fabric", "endorsed-head", "--ledger", url,
                     program="python", cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr  # the old chaincode has no TreeHead
    assert "chaincode 'legacy' predates the endorsed tree head; upgrade it" in result.stderr

    fabric_network.deploy_chaincode("legacy", build_chaincode(), sequence=2)
    _append(url, tmp_path / "s2", make_records(2, start=50, run_id="between"), 2)  # the old ledger still appends
    result = endorsed_head(url, workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "has no log tree yet" in result.stderr and "build-tree" in result.stderr
    from lineage_ledger.backends import open_backend

    with open_backend(url) as backend:
        assert backend.endorsed_head() is None  # a verifier's hook: nothing to compare yet, no failure
    built = run_cli("-m", "lineage_ledger.backends.fabric", "build-tree", "--ledger", url,
                    "--blocks-per-transaction", "2", program="python", cwd=workdir)  # in two steps
    assert built.returncode == 0, built.stderr
    assert "built the log tree: 9 records in 4 blocks" in built.stdout
    result = endorsed_head(url, workdir)
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["size"], json.loads(result.stdout)["root"]) == _log_root(url)
    with open_backend(url) as backend:
        assert backend.endorsed_head() == _log_root(url)
    _append(url, tmp_path / "s3", make_records(3, start=80, run_id="after"), 3)  # appends now extend it
    result = endorsed_head(url, workdir)
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["size"], json.loads(result.stdout)["root"]) == _log_root(url)
    again = run_cli("-m", "lineage_ledger.backends.fabric", "build-tree", "--ledger", url, program="python",
                    cwd=workdir)
    assert again.returncode == 0 and "keeps its log tree already" in again.stdout


def _lying_gateway(url: str, *, rewrite=None, withhold: int = 0):
    """What a compromised gateway peer can answer to queries it alone evaluates: a consistent
    rewrite (record ids, Merkle roots, block ids and links all recomputed), or the chain
    without its last ``withhold`` blocks. Endorsed answers still come from every org's peer."""
    from lineage_ledger import StoredRecord, build_block
    from lineage_ledger.backends import ChainHead
    from lineage_ledger.backends.fabric import FabricBackend
    from tests.support.factories import BASE_TIME

    class LyingGateway(FabricBackend):
        def _chain(self):
            real_head = FabricBackend.head(self)
            stop = 0 if real_head is None else real_head.height + 1
            real = list(FabricBackend.blocks(self, 0, stop))[: -withhold or None]
            if rewrite is None:
                return real
            chain, tip = [], None
            for block in real:
                records = [StoredRecord.from_body(rewrite(r.body)) for r in block.records]
                chain.append(build_block(records, tip, time=BASE_TIME).stored())
                tip = ChainHead(chain[-1].height, chain[-1].id)
            return chain

        def head(self):
            chain = self._chain()
            return ChainHead(chain[-1].height, chain[-1].id) if chain else None

        def record_count(self):
            return sum(len(block.records) for block in self._chain())

        def blocks(self, start=0, stop=None):
            return iter(self._chain()[start:stop])

    return LyingGateway(url)


def test_a_lying_gateway_cannot_pass_off_another_history(fabric_network, tmp_path):
    """A first verification trusts any consistent history (docs/verification.md, "Limits");
    the endorsed head is what tells a rewritten or truncated one from the ledger."""
    from lineage_ledger import Ledger
    from lineage_ledger.backends.fabric import EndorsedHeadMismatch, check_endorsed_head

    url = fabric_network.client_url(fabric_network.orgs[0], "p1", "provider", "lying",
                                     endorsers=fabric_network.endorsers())
    _append(url, tmp_path / "spool", make_records(8, run_id="true"), 3)
    cases = {"rewritten": (_lying_gateway(url, rewrite=lambda body: body.replace(b'"task-5"', b'"task-X"')),
                           "is not the tree verified from the records read here"),
             "withheld": (_lying_gateway(url, withhold=1), "the view verified here holds 6: records are withheld")}
    for name, (backend, message) in cases.items():
        ledger = Ledger(backend, spool_root=str(tmp_path / name), state_dir=str(tmp_path / f"state-{name}"))
        assert ledger.audit().head.size == (8 if name == "rewritten" else 6)  # the core alone accepts it
        with pytest.raises(EndorsedHeadMismatch, match=message):
            check_endorsed_head(ledger)
        ledger.close()
    honest = Ledger(_lying_gateway(url), spool_root=str(tmp_path / "h"), state_dir=str(tmp_path / "state-honest"))
    endorsed, verified_root = check_endorsed_head(honest)  # the same class, telling the truth
    assert (endorsed.size, endorsed.root) == (8, verified_root) == _log_root(url)
    honest.close()


def test_a_saved_endorsement_verifies_offline_and_becomes_a_checkpoint(fabric_network, workdir, tmp_path):
    """What the peers signed, kept with `--save`, proves the head again with no network, and
    the checkpoint it yields is one `verify-lineage --against` holds the ledger to."""
    org1, org2 = fabric_network.orgs
    url = fabric_network.client_url(org1, "p1", "provider", "saved")
    _append(url, tmp_path / "s1", make_records(5, run_id="kept"), 2)
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
    _append(url, tmp_path / "s2", make_records(3, start=10, run_id="later"), 3)
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
