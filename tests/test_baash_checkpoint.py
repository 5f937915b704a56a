"""Issue 14, item 8 for BAASH: tree heads endorsed by a quorum of the ranks' keys.

These run the ranks' own code (the tree a rank keeps, its key, the gateway's note) without
MPI; test_baash_remote.py gets an endorsed tree head from a running service.
"""

from __future__ import annotations

import base64
import os
import stat

import pytest

from lineage_ledger import CheckpointInvalid, ConfigError, verify_chain
from lineage_ledger._log.checkpoint import load_signer, parse, write_keypair
from lineage_ledger.backends.baash.endorse import (
    Endorser,
    TreeTracker,
    assemble,
    ensure_keys,
    ensure_origin,
    load_verifiers,
    quorum_of,
    read_endorsed,
    save_endorsed,
    verify_endorsed,
)
from tests.backend_conformance import chain_of
from tests.support.factories import make_records

CHAIN = chain_of(make_records(11), 4)


@pytest.fixture
def storage(tmp_path):
    ensure_origin(str(tmp_path))
    ensure_keys(str(tmp_path), 4)
    return str(tmp_path)


def _endorsements(storage: str, blocks) -> tuple[str, list[tuple[int, str, str]]]:
    """What each of the 4 ranks sends the gateway after committing ``blocks``."""
    out = []
    for slot in range(4):
        tracker = TreeTracker()
        tracker.extend(blocks[:1])
        tracker.extend(blocks[1:])  # in any batches, as rounds commit
        endorser = Endorser.load(storage, slot)
        assert endorser is not None
        out.append(endorser.sign(tracker))
    return Endorser.load(storage, 0).body(tracker), out


def test_the_tree_a_rank_signs_is_the_cores_tree(storage):
    body, endorsements = _endorsements(storage, CHAIN)
    summary = verify_chain(CHAIN)
    checkpoint = parse(body)
    assert checkpoint.size == summary.records == 11
    assert checkpoint.root.hex() == summary.log_root  # the core's RFC 9162 tree over every record
    assert checkpoint.origin == ensure_origin(storage) and checkpoint.origin.startswith("lineage-ledger:")
    assert {(size, root) for size, root, _ in endorsements} == {(11, summary.log_root)}
    assert TreeTracker().root().hex() == verify_chain([]).log_root
    records = make_records(37)
    for count in range(1, 38, 3):  # every shape of the right edge, blocks of any size, fed in any batches
        for blocks in (1, 2, 5):
            chain = chain_of(records[:count], min(blocks, count))
            tracker = TreeTracker()
            for block in chain:
                tracker.extend([block])
            assert (tracker.size, tracker.root().hex()) == (count, verify_chain(chain).log_root), (count, blocks)


def test_a_quorum_verifies_and_too_few_or_a_changed_head_fails(storage):
    body, endorsements = _endorsements(storage, CHAIN)
    lines = [line for _, _, line in endorsements]
    keys = load_verifiers(os.path.join(storage, "keys", "ranks.pub"))
    assert len(keys) == 4 and quorum_of(4) == 3 and quorum_of(7) == 5 and quorum_of(1) == 1

    assert verify_endorsed(assemble(body, lines), keys).size == 11
    assert verify_endorsed(assemble(body, lines[1:]), keys).size == 11  # 3 of 4 is a quorum
    with pytest.raises(CheckpointInvalid, match="signed by 2 of the 4 ranks' keys .*a quorum is 3"):
        verify_endorsed(assemble(body, lines[:2]), keys)
    with pytest.raises(CheckpointInvalid, match="signed by 2 of the 4"):  # one rank's line twice counts once
        verify_endorsed(assemble(body, lines[:2]) + lines[0], keys)
    with pytest.raises(CheckpointInvalid, match="a quorum of 5 out of 4 rank keys is impossible"):
        verify_endorsed(assemble(body, lines), keys, quorum=5)

    # A changed root or size: every rank's signature fails.
    root_line = body.split("\n")[2]
    shorter = TreeTracker()
    shorter.extend(CHAIN[:-1])
    other_root = shorter.root()
    for changed in (body.replace(root_line, base64.b64encode(other_root).decode()), body.replace("\n11\n", "\n12\n")):
        with pytest.raises(CheckpointInvalid, match="does not verify"):
            verify_endorsed(assemble(changed, lines), keys)

    # Signatures by keys that are not the ranks' do not count towards the quorum.
    stranger_path = os.path.join(storage, "stranger.key")
    write_keypair(stranger_path, "baash-rank-9")
    stranger = Endorser(ensure_origin(storage), load_signer(stranger_path))
    tracker = TreeTracker()
    tracker.extend(CHAIN)
    with pytest.raises(CheckpointInvalid, match="signed by 2 of the 4"):
        verify_endorsed(assemble(body, [*lines[:2], stranger.sign(tracker)[2]]), keys)


def test_keys_and_origin_are_made_once_and_private(tmp_path):
    root = str(tmp_path)
    origin = ensure_origin(root)
    first = [v.text() for v in ensure_keys(root, 4)]
    assert ensure_origin(root) == origin and [v.text() for v in ensure_keys(root, 4)] == first
    assert [v.text() for v in ensure_keys(root, 5)][:4] == first  # a larger job adds slots, keeps the old
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "rank-0").st_mode) == 0o600
    (tmp_path / "origin").write_text("not an origin\n")
    with pytest.raises(ConfigError, match="does not hold a ledger origin"):
        ensure_origin(root)


def test_a_rank_endorses_a_restored_chain_only_if_it_extends_the_last_endorsed_head(storage):
    """After a restart each rank restores its chain from shared storage; it signs nothing
    for a chain that fails verification or rewrote the history the ranks endorsed last."""
    body, endorsements = _endorsements(storage, CHAIN[:3])
    save_endorsed(storage, assemble(body, [line for _, _, line in endorsements]))
    endorser = Endorser.load(storage, 1)
    assert read_endorsed(storage) is not None
    assert endorser.check_restored(storage, CHAIN) is None  # the same history, grown since
    assert endorser.check_restored(storage, CHAIN[:3]) is None

    rewritten = chain_of(make_records(11, run_id="rewritten"), 4)  # a consistent rewrite: it verifies
    assert verify_chain(rewritten).records == 11
    assert "not an extension of the tree head the ranks endorsed last" in endorser.check_restored(storage, rewritten)
    shrunk = CHAIN[:2]
    assert "not an extension" in endorser.check_restored(storage, shrunk)
    broken = [CHAIN[0], CHAIN[2]]
    assert "does not verify" in endorser.check_restored(storage, broken)

    save_endorsed(storage, assemble(body, [line for _, _, line in endorsements][:2]))  # no quorum
    assert "does not verify" in endorser.check_restored(storage, CHAIN)


def test_a_note_kept_before_the_job_grew_is_counted_over_the_keys_it_was_endorsed_under(storage):
    """A service restarted with more ranks rewrites ranks.pub (7 keys: a quorum is 5); the
    note its 4 ranks endorsed is counted over the 4 keys it was made under (checkpoint.keys,
    kept with it, or for a note kept before that file existed, the ranks.pub the start is
    about to replace), so the restored ranks go on endorsing. Before, each refused: 'signed
    by 4 of the 7 ranks' keys; a quorum is 5' (tests/test_baash_resized.py runs the service)."""
    body, endorsements = _endorsements(storage, CHAIN[:3])
    note = assemble(body, [line for _, _, line in endorsements])
    save_endorsed(storage, note)
    assert os.path.exists(os.path.join(storage, "checkpoint.keys"))
    os.unlink(os.path.join(storage, "checkpoint.keys"))  # as a service before this fix kept it
    ensure_keys(storage, 7)
    assert len(load_verifiers(os.path.join(storage, "keys", "ranks.pub"))) == 7
    endorser = Endorser.load(storage, 5)
    assert endorser is not None and endorser.check_restored(storage, CHAIN) is None
    with pytest.raises(CheckpointInvalid, match="signed by 4 of the 7 ranks' keys"):  # what the ranks checked
        verify_endorsed(note, load_verifiers(os.path.join(storage, "keys", "ranks.pub")))
