"""The tree head the consortium endorses (issue 14, item 8), against a real Fabric network.

The chaincode keeps the ledger's RFC 9162 log tree as world state and every endorsing peer
signs its tree head; the client proves the signatures against the member orgs' root CAs and
compares the head with the tree the core verified from the records it read.
"""

from __future__ import annotations

import json

import pytest
from blake3 import blake3

from lineage_ledger import open_ledger
from lineage_ledger._log.audit_rows import decode_views
from lineage_ledger._log.tree import BLAKE3, levels_of, memory_source, root
from tests.conftest import run_cli
from tests.support.fabric import (
    PRE_TREE_CHAINCODE_COMMIT,
    append_to,
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
        append_to(url_i, tmp_path / f"spool{i}", make_records(count, start=100 * i, run_id=f"r{i}"), block_size)
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
    append_to(url, tmp_path / "spool", records, 2)
    ledger = open_ledger(url, read_only=True)
    ledger.tree_head()
    store = ledger.verifier.store
    forged_id = blake3(records[3].stored().body.replace(b"honest", b"forged")).digest()
    with store.locked():
        writer = store.fresh_writer()
        for block in ledger.backend.block_columns():
            leaves = [BLAKE3.leaf(bytes.fromhex(record_id)) for record_id in block.ids]
            if block.height == 1:
                leaves[1] = BLAKE3.leaf(forged_id)  # record 3 of the ledger
            # Names as a real writer keeps them, so that the next command trusts this state
            # rather than reading the whole ledger again.
            writer.add_names(writer.size, decode_views(block))
            writer.add_block(block.id, leaves)
        writer.commit(audited=True)
        writer.close()
        store.adopt(writer)
    ledger.close()
    # Every command compares the verified tree with the peers' endorsed head: the rewritten
    # view can neither be published as a checkpoint nor answer a read ...
    for command in (("checkpoint",), ("log",)):
        refused = run_cli(*command, "--ledger", url, cwd=workdir)
        assert refused.returncode == 1, (command, refused.stdout, refused.stderr)
        assert "verification failed" in refused.stderr and "endorsers sign" in refused.stderr, refused.stderr
    forged_root = store.root_at(6)
    assert forged_root != _log_root(url)[1]
    # ... and the peers' endorsement is not the client's to make.
    result = endorsed_head(url, workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verification failed" in result.stderr and "is not the tree verified" in result.stderr
    assert "Org1MSP, Org2MSP" in result.stderr and forged_root in result.stderr


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
    append_to(url, tmp_path / "s1", make_records(7, run_id="before"), 3)  # blocks of 3, 3, 1
    result = run_cli("-m", "lineage_ledger.backends.fabric", "endorsed-head", "--ledger", url,
                     program="python", cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr  # the old chaincode has no TreeHead
    assert "chaincode 'legacy' predates the endorsed tree head; upgrade it" in result.stderr

    fabric_network.deploy_chaincode("legacy", build_chaincode(), sequence=2)
    append_to(url, tmp_path / "s2", make_records(2, start=50, run_id="between"), 2)  # the old ledger still appends
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
    append_to(url, tmp_path / "s3", make_records(3, start=80, run_id="after"), 3)  # appends now extend it
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
    from lineage_ledger import HistoryRewritten, Ledger
    from lineage_ledger.backends.fabric import EndorsedHeadMismatch, check_endorsed_head

    url = fabric_network.client_url(fabric_network.orgs[0], "p1", "provider", "lying",
                                     endorsers=fabric_network.endorsers())
    append_to(url, tmp_path / "spool", make_records(8, run_id="true"), 3)
    cases = {"rewritten": (_lying_gateway(url, rewrite=lambda body: body.replace(b'"task-5"', b'"task-X"')),
                           "is not the tree verified from the records read here"),
             "withheld": (_lying_gateway(url, withhold=1), "the view verified here holds 6: records are withheld")}
    for name, (backend, message) in cases.items():
        ledger = Ledger(backend, spool_root=str(tmp_path / name), state_dir=str(tmp_path / f"state-{name}"))
        # The audit itself compares its tree with the endorsed head (the core's hook) ...
        with pytest.raises(HistoryRewritten, match="endorsers sign"):
            ledger.audit()
        with pytest.raises(EndorsedHeadMismatch, match=message):  # ... and so does the explicit check
            check_endorsed_head(ledger)
        ledger.close()
    honest = Ledger(_lying_gateway(url), spool_root=str(tmp_path / "h"), state_dir=str(tmp_path / "state-honest"))
    endorsed, verified_root = check_endorsed_head(honest)  # the same class, telling the truth
    assert (endorsed.size, endorsed.root) == (8, verified_root) == _log_root(url)
    honest.close()
