"""The RFC 9162 tree code: published SHA-256 vectors, our BLAKE3 vectors, and properties.

Every result is also checked against a naive recursive transcription of RFC 9162 2.1
(``_mth``, ``_path``, ``_subproof`` below), which shares no code with ``_tree``.

Regenerate ``tests/vectors/tree_blake3.json`` (only after a deliberate format change) with
``python -m tests.test_tree --write-vectors``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger import Record
from lineage_ledger._canonical import canonical_bytes, from_canonical
from lineage_ledger._errors import ProofFailed
from lineage_ledger._log.merkle import leaf_hash as merkle_leaf_hash
from lineage_ledger._log.merkle import merkle_root
from lineage_ledger._log.tree import (
    BLAKE3,
    SHA256,
    TreeHasher,
    compact_range,
    consistency_proof,
    inclusion_proof,
    levels_of,
    memory_source,
    root,
    root_of_compact_range,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors"
RFC = json.loads((VECTORS / "rfc9162_sha256.json").read_text())
H = bytes.fromhex


# --- a naive reference: RFC 9162 2.1, transcribed literally -------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(hasher: TreeHasher, d: list[bytes]) -> bytes:
    """MTH over leaf hashes (the leaves are hashed already)."""
    if not d:
        return hasher.empty_root()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hasher.node(_mth(hasher, d[:k]), _mth(hasher, d[k:]))


def _path(hasher: TreeHasher, m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return _path(hasher, m, d[:k]) + [_mth(hasher, d[k:])]
    return _path(hasher, m - k, d[k:]) + [_mth(hasher, d[:k])]


def _subproof(hasher: TreeHasher, m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_mth(hasher, d)]
    k = _k(n)
    if m <= k:
        return _subproof(hasher, m, d[:k], b) + [_mth(hasher, d[k:])]
    return _subproof(hasher, m - k, d[k:], False) + [_mth(hasher, d[:k])]


def _proof(hasher: TreeHasher, m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else _subproof(hasher, m, d, True)


# --- the RFC 9162 / RFC 6962 SHA-256 vectors ----------------------------------------------

RFC_LEAVES = [SHA256.leaf(H(x)) for x in RFC["leaves"]]
RFC_SOURCE = memory_source(levels_of(RFC_LEAVES, SHA256))
RFC_ROOTS = {int(n): H(r) for n, r in RFC["roots"].items()}


def test_rfc_empty_root_and_roots():
    assert SHA256.empty_root() == RFC_ROOTS[0]
    for size in range(9):
        assert root(RFC_SOURCE, size, SHA256) == RFC_ROOTS[size]
        assert _mth(SHA256, RFC_LEAVES[:size]) == RFC_ROOTS[size]
        assert root_of_compact_range(compact_range(RFC_SOURCE, size), SHA256) == RFC_ROOTS[size]


@pytest.mark.parametrize("vector", RFC["inclusion"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_rfc_inclusion_vectors(vector):
    index, size, proof = vector["index"], vector["size"], [H(p) for p in vector["proof"]]
    assert inclusion_proof(RFC_SOURCE, index, size, SHA256) == proof
    verify_inclusion(SHA256, index, size, RFC_LEAVES[index], proof, RFC_ROOTS[size])
    for bad in _corrupt_inclusion(index, size, proof):
        with pytest.raises(ProofFailed):
            verify_inclusion(SHA256, *bad)


def _corrupt_inclusion(index, size, proof):
    """The probes transparency-dev/merkle runs against each good inclusion proof."""
    leaf, good_root, other = RFC_LEAVES[index], RFC_ROOTS[size], b"\xab" * 32
    probes = [
        (index - 1, size, leaf, proof, good_root), (index + 1, size, leaf, proof, good_root),
        (index ^ 2, size, leaf, proof, good_root), (index, size * 2, leaf, proof, good_root),
        (index, size // 2, leaf, proof, good_root), (index, size, b"WrongLeaf", proof, good_root),
        (index, size, leaf, proof, RFC_ROOTS[0]), (index, size, leaf, proof, other),
        (index, size, leaf, proof + [b""], good_root), (index, size, leaf, proof + [good_root], good_root),
        (index, size, leaf, [b""] + proof, good_root), (index, size, leaf, [good_root] + proof, good_root),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        probes.append((index, size, leaf, flipped, good_root))
    if proof:
        probes.append((index, size, leaf, proof[:-1], good_root))
    if len(proof) > 1:
        probes.append((index, size, leaf, [proof[0], other] + proof[1:], good_root))
    return probes


@pytest.mark.parametrize("vector", RFC["consistency"], ids=lambda v: f"{v['old_size']}to{v['new_size']}")
def test_rfc_consistency_vectors(vector):
    old, new, proof = vector["old_size"], vector["new_size"], [H(p) for p in vector["proof"]]
    assert consistency_proof(RFC_SOURCE, old, new, SHA256) == proof
    verify_consistency(SHA256, old, new, RFC_ROOTS[old], RFC_ROOTS[new], proof)
    if not proof:
        return
    r1, r2, other = RFC_ROOTS[old], RFC_ROOTS[new], b"\xab" * 32
    probes = [
        (old - 1, new, r1, r2, proof), (old + 1, new, r1, r2, proof), (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof), (old, new // 2, r1, r2, proof), (old, new, other, r2, proof),
        (old, new, r1, other, proof), (old, new, r2, r1, proof), (old, new, r1, r2, []),
        (old, new, r1, r2, proof + [b""]), (old, new, r1, r2, proof + [r1]), (old, new, r1, r2, proof + [r2]),
        (old, new, r1, r2, [b""] + proof), (old, new, r1, r2, [r1] + proof), (old, new, r1, r2, [r2] + proof),
        (old, new, r1, r2, [proof[0]] + proof), (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 16]) + proof[i][1:]
        probes.append((old, new, r1, r2, flipped))
    for bad in probes:
        with pytest.raises(ProofFailed):
            verify_consistency(SHA256, *bad)


def test_trivial_consistency_cases():
    empty, some, other = SHA256.empty_root(), RFC_ROOTS[3], RFC_ROOTS[4]
    verify_consistency(SHA256, 0, 0, empty, empty, [])
    verify_consistency(SHA256, 0, 5, empty, some, [])
    verify_consistency(SHA256, 3, 3, some, some, [])
    for bad in [
        (0, 0, empty, some, []), (3, 3, some, other, []), (0, 3, some, some, []),  # size 0 needs H("")
        (1, 0, some, empty, []), (4, 3, other, some, []), (1, 2, some, other, []),
        (0, 0, empty, empty, [empty]), (0, 1, empty, some, [empty]), (3, 3, some, some, [empty]),
        (-1, 3, some, some, []), (3, 4, some[:31], other, [some]),
    ]:
        with pytest.raises(ProofFailed):
            verify_consistency(SHA256, *bad)


def test_trivial_inclusion_cases():
    leaf = SHA256.leaf(b"data")
    verify_inclusion(SHA256, 0, 1, leaf, [], leaf)
    for bad in [
        (0, 1, leaf, [], b""), (0, 1, b"", [], leaf), (0, 0, leaf, [], leaf), (1, 1, leaf, [], leaf),
        (-1, 1, leaf, [], leaf), (2, 1, leaf, [], leaf), (0, 1, leaf, [], SHA256.empty_root()),
    ]:
        with pytest.raises(ProofFailed):
            verify_inclusion(SHA256, *bad)


def test_proof_failed_messages_name_what_is_wrong():
    proof = inclusion_proof(RFC_SOURCE, 5, 8, SHA256)
    with pytest.raises(ProofFailed, match="has 2 hashes, expected 3"):
        verify_inclusion(SHA256, 5, 8, RFC_LEAVES[5], proof[:2], RFC_ROOTS[8])
    with pytest.raises(ProofFailed, match="proof element 1 is not a 32-byte hash"):
        verify_inclusion(SHA256, 5, 8, RFC_LEAVES[5], [proof[0], b"x"], RFC_ROOTS[8])
    with pytest.raises(ProofFailed, match="leaf 5 is not in the tree of 8 leaves"):
        verify_inclusion(SHA256, 5, 8, RFC_LEAVES[4], proof, RFC_ROOTS[8])
    with pytest.raises(ProofFailed, match="does not extend the tree of 6 leaves"):
        verify_consistency(SHA256, 6, 8, RFC_ROOTS[6], RFC_ROOTS[7], consistency_proof(RFC_SOURCE, 6, 8, SHA256))


def test_producers_refuse_impossible_arguments():
    for index, size in [(0, 0), (8, 8), (-1, 8)]:
        with pytest.raises(ValueError):
            inclusion_proof(RFC_SOURCE, index, size, SHA256)
    with pytest.raises(ValueError):
        consistency_proof(RFC_SOURCE, 5, 4, SHA256)
    with pytest.raises(ValueError, match="not a subtree"):
        subtree_root(RFC_SOURCE, 1, 4, SHA256)  # 3 leaves must start at a multiple of 2
    assert subtree_root(RFC_SOURCE, 2, 5, SHA256) == SHA256.node(RFC_SOURCE(1, 1), RFC_LEAVES[4])
    assert subtree_root(RFC_SOURCE, 4, 4, SHA256) == SHA256.empty_root()


def test_levels_hold_only_complete_subtrees():
    levels = levels_of(RFC_LEAVES[:7], SHA256)
    assert [len(level) for level in levels] == [7, 3, 1]
    assert levels_of([], SHA256) == [[]]
    with pytest.raises(IndexError):
        memory_source(levels)(1, -1)


# --- BLAKE3: the ledger's hash ------------------------------------------------------------


def test_blake3_leaf_is_the_ledger_leaf_hash():
    record_id = "ab" * 32
    assert BLAKE3.leaf(bytes.fromhex(record_id)) == merkle_leaf_hash(record_id)
    assert BLAKE3.size == SHA256.size == 32


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70))
def test_root_matches_merkle_root(raw_ids):
    record_ids = [raw.hex() for raw in raw_ids]
    leaves = [BLAKE3.leaf(raw) for raw in raw_ids]
    assert root(memory_source(levels_of(leaves, BLAKE3)), len(leaves), BLAKE3).hex() == merkle_root(record_ids)


# One tree of 300 leaves serves every size: a prefix's perfect subtrees are the same nodes.
BIG = 300
BIG_LEAVES = [BLAKE3.leaf(BLAKE3.leaf(i.to_bytes(4, "big"))) for i in range(BIG)]
BIG_SOURCE = memory_source(levels_of(BIG_LEAVES, BLAKE3))
BIG_ROOTS = [root(BIG_SOURCE, n, BLAKE3) for n in range(BIG + 1)]


def _counting(source):
    calls = []

    def nodes(level, index):
        calls.append((level, index))
        return source(level, index)

    return nodes, calls


def _flip(proof, which, at, mask):
    element = proof[which]
    at %= len(element)
    return proof[:which] + [element[:at] + bytes([element[at] ^ mask]) + element[at + 1 :]] + proof[which + 1 :]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_inclusion_proofs_verify_and_catch_any_change(data):
    size = data.draw(st.integers(1, BIG), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    nodes, calls = _counting(BIG_SOURCE)
    proof = inclusion_proof(nodes, index, size, BLAKE3)
    assert len(calls) <= 2 * size.bit_length() + 1
    assert proof == _path(BLAKE3, index, BIG_LEAVES[:size])
    leaf, good_root = BIG_LEAVES[index], BIG_ROOTS[size]
    verify_inclusion(BLAKE3, index, size, leaf, proof, good_root)

    mask = data.draw(st.integers(1, 255), label="mask")
    at = data.draw(st.integers(0, 31), label="byte")
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1), label="element")
        with pytest.raises(ProofFailed):
            verify_inclusion(BLAKE3, index, size, leaf, _flip(proof, which, at, mask), good_root)
    with pytest.raises(ProofFailed):
        verify_inclusion(BLAKE3, index, size, leaf, proof, _flip([good_root], 0, at, mask)[0])
    with pytest.raises(ProofFailed):
        verify_inclusion(BLAKE3, index, size, _flip([leaf], 0, at, mask)[0], proof, good_root)
    other_index = data.draw(st.integers(0, size), label="other index")
    if other_index != index:
        with pytest.raises(ProofFailed):
            verify_inclusion(BLAKE3, other_index, size, leaf, proof, good_root)
    # A tree head is a (size, root) pair: another size comes with its own root.
    other_size = data.draw(st.integers(max(1, index), BIG), label="other size")
    if other_size != size:
        with pytest.raises(ProofFailed):
            verify_inclusion(BLAKE3, index, other_size, leaf, proof, BIG_ROOTS[other_size])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_consistency_proofs_verify_and_catch_any_change(data):
    new = data.draw(st.integers(1, BIG), label="new size")
    old = data.draw(st.integers(0, new), label="old size")
    nodes, calls = _counting(BIG_SOURCE)
    proof = consistency_proof(nodes, old, new, BLAKE3)
    assert len(calls) <= 2 * new.bit_length() + 2
    assert proof == _proof(BLAKE3, old, BIG_LEAVES[:new])
    r1, r2 = BIG_ROOTS[old], BIG_ROOTS[new]
    verify_consistency(BLAKE3, old, new, r1, r2, proof)

    mask = data.draw(st.integers(1, 255), label="mask")
    at = data.draw(st.integers(0, 31), label="byte")
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1), label="element")
        with pytest.raises(ProofFailed):
            verify_consistency(BLAKE3, old, new, r1, r2, _flip(proof, which, at, mask))
    with pytest.raises(ProofFailed):
        verify_consistency(BLAKE3, old, new, _flip([r1], 0, at, mask)[0], r2, proof)
    if old:  # the empty tree is a prefix of every tree: any new root is consistent with it
        with pytest.raises(ProofFailed):
            verify_consistency(BLAKE3, old, new, r1, _flip([r2], 0, at, mask)[0], proof)
    other_old = data.draw(st.integers(0, new), label="other old size")
    # Sizes whose own proof is this one (empty: equal sizes, or size 0) rightly verify.
    if other_old != old and _proof(BLAKE3, other_old, BIG_LEAVES[:new]) != proof:
        with pytest.raises(ProofFailed):
            verify_consistency(BLAKE3, other_old, new, BIG_ROOTS[other_old], r2, proof)
    other_new = data.draw(st.integers(old, BIG), label="other new size")
    if other_new != new and _proof(BLAKE3, old, BIG_LEAVES[:other_new]) != proof:
        with pytest.raises(ProofFailed):
            verify_consistency(BLAKE3, old, other_new, r1, BIG_ROOTS[other_new], proof)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, BIG))
def test_compact_range_is_one_subtree_per_set_bit(size):
    compact = compact_range(BIG_SOURCE, size)
    assert [level for level, _ in compact] == [b for b in range(size.bit_length() - 1, -1, -1) if size >> b & 1]
    assert root_of_compact_range(compact, BLAKE3) == BIG_ROOTS[size] == _mth(BLAKE3, BIG_LEAVES[:size])


# --- BLAKE3 vectors for independent verifiers -----------------------------------------------

VECTOR_SIZE = 11


def _vector_records() -> list[bytes]:
    """Canonical bytes of eleven task records, one with non-ASCII text and a float."""
    from tests.support.factories import make_records

    records = [r.encode() for r in make_records(VECTOR_SIZE - 1)]
    odd = Record(
        engine="test", run_id="run-1", task_id="task-ü", task_name="Zürich ∆", status="failed",
        started=datetime(2026, 1, 1, 12, tzinfo=timezone.utc),
        ended=datetime(2026, 1, 1, 12, 0, 1, 500000, tzinfo=timezone.utc),
        inputs=[], outputs=[], parameters={"ratio": 0.5, "flags": [True, None], "b": {"z": 1, "a": "x"}},
        environment={"host": "test"},
    )
    return records + [odd.encode()]


def build_blake3_vectors(canonical: list[bytes] | None = None) -> dict:
    """The vector file's content, computed by the naive reference (not by ``_tree``)."""
    canonical = _vector_records() if canonical is None else canonical
    ids = [blake3(data).hexdigest() for data in canonical]  # record id = BLAKE3(canonical bytes)
    leaves = [BLAKE3.leaf(bytes.fromhex(i)) for i in ids]
    hexes = lambda hashes: [h.hex() for h in hashes]  # noqa: E731
    n = len(leaves)
    return {
        "description": "lineage-ledger's Merkle tree (RFC 9162 shape) with BLAKE3, over eleven records: "
        "each record's canonical bytes, its id, its leaf hash, the root of every tree size, every "
        "inclusion proof and every consistency proof. Generated by tests/test_tree.py from a naive "
        "recursive transcription of RFC 9162 2.1 and checked against lineage_ledger._log.tree.",
        "hash": "blake3 (32-byte output)",
        "record_id": "hex(BLAKE3(canonical bytes)); canonical bytes are given here as UTF-8 text",
        "leaf_hash": "BLAKE3(0x00 || 32 raw bytes of the record id)",
        "node_hash": "BLAKE3(0x01 || left || right)",
        "empty_root": "BLAKE3('')",
        "records": [{"canonical": data.decode("utf-8"), "id": i} for data, i in zip(canonical, ids, strict=True)],
        "leaf_hashes": hexes(leaves),
        "roots": {str(size): _mth(BLAKE3, leaves[:size]).hex() for size in range(n + 1)},
        "inclusion": [
            {"index": index, "size": size, "proof": hexes(_path(BLAKE3, index, leaves[:size]))}
            for size in range(1, n + 1) for index in range(size)
        ],
        "consistency": [
            {"old_size": old, "new_size": new, "proof": hexes(_proof(BLAKE3, old, leaves[:new]))}
            for new in range(1, n + 1) for old in range(0, new + 1)
        ],
    }


def test_blake3_vectors_are_current_and_verify():
    stored = json.loads((VECTORS / "tree_blake3.json").read_text(encoding="utf-8"))
    assert stored == build_blake3_vectors([r["canonical"].encode("utf-8") for r in stored["records"]])
    leaves = []
    for record in stored["records"]:
        data = record["canonical"].encode("utf-8")
        assert canonical_bytes(from_canonical(data)) == data
        assert blake3(data).hexdigest() == record["id"]
        leaves.append(BLAKE3.leaf(bytes.fromhex(record["id"])))
    assert [h.hex() for h in leaves] == stored["leaf_hashes"]
    source = memory_source(levels_of(leaves, BLAKE3))
    roots = {int(size): H(r) for size, r in stored["roots"].items()}
    assert roots[0] == BLAKE3.empty_root()
    for size, expected in roots.items():
        assert root(source, size, BLAKE3) == expected
    for v in stored["inclusion"]:
        proof = [H(p) for p in v["proof"]]
        assert inclusion_proof(source, v["index"], v["size"], BLAKE3) == proof
        verify_inclusion(BLAKE3, v["index"], v["size"], leaves[v["index"]], proof, roots[v["size"]])
    for v in stored["consistency"]:
        proof = [H(p) for p in v["proof"]]
        assert consistency_proof(source, v["old_size"], v["new_size"], BLAKE3) == proof
        verify_consistency(BLAKE3, v["old_size"], v["new_size"], roots[v["old_size"]], roots[v["new_size"]], proof)


def test_vector_records_are_ledger_records():
    stored = json.loads((VECTORS / "tree_blake3.json").read_text(encoding="utf-8"))
    for record in stored["records"]:
        data = record["canonical"].encode("utf-8")
        assert Record.decode(data).id == record["id"], (
            "the record format changed: regenerate with python -m tests.test_tree --write-vectors"
        )


if __name__ == "__main__" and "--write-vectors" in sys.argv:
    path = VECTORS / "tree_blake3.json"
    path.write_text(json.dumps(build_blake3_vectors(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")
