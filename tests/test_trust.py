"""The remembered tree (core/_log/trust.py): built by blocks of any sizes, it holds the same tree
as the RFC 9162 reference, its nodes prove inclusion and consistency, and a writer that died
mid-extension leaves nothing a reader could mistake for verified."""

from __future__ import annotations

import os

from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger._log.merkle import merkle_root
from lineage_ledger._log.tree import (
    BLAKE3,
    consistency_proof,
    inclusion_proof,
    levels_of,
    verify_consistency,
    verify_inclusion,
)
from lineage_ledger._log.trust import TrustStore


def _ids(n: int, salt: int) -> list[str]:
    return [blake3(f"{salt}-{i}".encode()).hexdigest() for i in range(n)]


def _build(tmp_path, blocks: list[list[str]]) -> TrustStore:
    store = TrustStore("test://ledger", "origin-1", str(tmp_path))
    with store.locked():
        writer = store.writer()
        for number, ids in enumerate(blocks):
            writer.add_block(f"{number:064x}", [BLAKE3.leaf(bytes.fromhex(i)) for i in ids])
        writer.commit()
        writer.close()
    store.reload()
    return store


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12), salt=st.integers(0, 1 << 30),
       data=st.data())
def test_blocks_of_any_sizes_make_the_reference_tree(tmp_path_factory, sizes, salt, data):
    tmp_path = tmp_path_factory.mktemp("trust")
    ids = _ids(sum(sizes), salt)
    blocks, start = [], 0
    for size in sizes:
        blocks.append(ids[start : start + size])
        start += size
    # Built in two sessions, as a later command extends what an earlier one verified.
    half = data.draw(st.integers(0, len(blocks)))
    _build(tmp_path, blocks[:half])
    store = _build(tmp_path, blocks[half:])
    head = store.head
    assert head is not None and head.size == len(ids) and head.blocks == len(blocks)
    assert head.root == merkle_root(ids)
    levels = levels_of([BLAKE3.leaf(bytes.fromhex(i)) for i in ids], BLAKE3)
    for level, nodes in enumerate(levels):
        for index, node in enumerate(nodes):
            assert store.node(level, index) == node
    for m in range(len(ids) + 1):
        assert store.root_at(m) == merkle_root(ids[:m])
    if ids:
        index = data.draw(st.integers(0, len(ids) - 1))
        height, position = store.place(index)
        assert blocks[height][position] == ids[index]
        proof = inclusion_proof(store.node, index, len(ids), BLAKE3)
        verify_inclusion(BLAKE3, index, len(ids), BLAKE3.leaf(bytes.fromhex(ids[index])), proof,
                         bytes.fromhex(head.root))
        old = data.draw(st.integers(1, len(ids)))
        verify_consistency(BLAKE3, old, len(ids), bytes.fromhex(store.root_at(old)), bytes.fromhex(head.root),
                           consistency_proof(store.node, old, len(ids), BLAKE3))


def test_nodes_a_dead_writer_left_past_the_head_are_cut_off(tmp_path):
    ids = _ids(20, 7)
    store = _build(tmp_path, [ids[:9]])
    with open(os.path.join(store.directory, "level-00.bin"), "ab") as handle:
        handle.write(b"\xff" * 32 * 5)  # a writer that died before it published its head
    store = _build(tmp_path, [ids[9:]])
    assert store.head.root == merkle_root(ids)
    assert os.path.getsize(os.path.join(store.directory, "level-00.bin")) == 32 * 20


def test_the_state_directory_is_private(tmp_path):
    old = os.umask(0o002)  # a permissive umask: the modes must not follow it
    try:
        store = _build(tmp_path, [_ids(3, 1)])
    finally:
        os.umask(old)
    assert os.stat(store.directory).st_mode & 0o777 == 0o700
    for name in os.listdir(store.directory):
        assert os.stat(os.path.join(store.directory, name)).st_mode & 0o077 == 0, name


def test_a_memory_ledgers_private_tree_goes_with_it_even_unclosed(tmp_path):
    """A process-local ledger keeps its tree in a temporary directory, removed when the
    ledger is closed or, for a caller that never closes it, collected."""
    import gc

    from lineage_ledger import open_ledger
    from tests.support.factories import make_records

    ledger = open_ledger("memory://unclosed", spool=str(tmp_path / "spool"))
    ledger.append_records([r.stored() for r in make_records(3)])
    ledger.tree_head()
    directory = ledger._private_state
    assert directory and os.path.isdir(directory)
    del ledger
    gc.collect()
    assert not os.path.exists(directory)
