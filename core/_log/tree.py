"""Merkle tree algorithms of RFC 9162 section 2.1, with the hash function as a parameter.

The ledger keeps one append-only tree over every record in ledger order (BLAKE3); the
same code runs with SHA-256 so that the RFC's published test vectors check it.

Hashing (RFC 9162 2.1.1): the empty tree's root is ``H("")``, a leaf is
``H(0x00 || data)``, an interior node ``H(0x01 || left || right)``. The tree over ``n``
leaves splits at the largest power of two below ``n``.

Nothing here stores a tree. The functions read hashes through a *node source*,
``nodes(level, index)``, which returns the root of the perfect subtree of ``2**level``
leaves starting at leaf ``index << level`` (level 0: the leaf hashes). Any node of the
RFC tree is either such a perfect subtree or lies on the right edge of the tree, so
roots and proofs need only O(log n) calls of the source: storage can be a file of each
level's complete nodes, a database table, or :func:`memory_source` for tests.

Producing proofs raises ``ValueError`` for impossible arguments (a caller's bug);
verifying them raises :class:`~lineage_ledger._errors.ProofFailed`, whose message says
what did not match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from blake3 import blake3

from .._errors import ProofFailed

__all__ = [
    "BLAKE3",
    "SHA256",
    "NodeSource",
    "TreeHasher",
    "compact_range",
    "consistency_proof",
    "inclusion_proof",
    "levels_of",
    "memory_source",
    "root",
    "root_of_compact_range",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

#: ``nodes(level, index)``: the hash of the perfect subtree over leaves
#: ``[index << level, (index + 1) << level)``.
NodeSource = Callable[[int, int], bytes]


class TreeHasher:
    """The three hashes of RFC 9162 2.1.1 over one hash function.

    The 0x00 / 0x01 prefixes keep a leaf from ever being mistaken for an interior node
    (second-preimage resistance), which is why a leaf's data is hashed again even when
    it is itself a digest (a record id).
    """

    __slots__ = ("_empty", "_hash", "size")

    def __init__(self, hash_function: Callable[[bytes], bytes]) -> None:
        self._hash = hash_function
        self._empty = hash_function(b"")
        #: Digest length in bytes; every proof element and root must have it.
        self.size = len(self._empty)

    def empty_root(self) -> bytes:
        """Root of the tree with no leaves: ``H("")``."""
        return self._empty

    def leaf(self, data: bytes) -> bytes:
        """``H(0x00 || data)``."""
        return self._hash(b"\x00" + data)

    def node(self, left: bytes, right: bytes) -> bytes:
        """``H(0x01 || left || right)``."""
        return self._hash(b"\x01" + left + right)


#: The ledger's hash. A leaf's data is the 32 raw bytes of a record id.
BLAKE3 = TreeHasher(lambda data: blake3(data).digest())
#: RFC 6962 / 9162's hash, for their test vectors and interoperability checks.
SHA256 = TreeHasher(lambda data: hashlib.sha256(data).digest())


# --- building (in memory) -------------------------------------------------------------


def levels_of(leaf_hashes: Sequence[bytes], hasher: TreeHasher) -> list[list[bytes]]:
    """Every complete perfect subtree of the tree over ``leaf_hashes``, level by level.

    Level ``k`` holds ``len(leaf_hashes) >> k`` hashes; an incomplete subtree at the right
    edge is never stored, because it changes as leaves are appended (its hash is computed
    from the complete ones when needed). The last level has one entry (none for no leaves).
    """
    levels = [list(leaf_hashes)]
    node = hasher.node
    while len(levels[-1]) >= 2:
        below = levels[-1]
        levels.append([node(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


def memory_source(levels: Sequence[Sequence[bytes]]) -> NodeSource:
    """A node source over the output of :func:`levels_of`."""

    def nodes(level: int, index: int) -> bytes:
        if level < 0 or index < 0:
            raise IndexError(f"no node at level {level}, index {index}")
        return levels[level][index]

    return nodes


# --- roots ------------------------------------------------------------------------------


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2): where RFC 9162 splits."""
    return 1 << ((n - 1).bit_length() - 1)


def _parts(nodes: NodeSource, lo: int, n: int) -> list[tuple[int, bytes]]:
    """The aligned perfect subtrees covering ``n`` leaves from ``lo``, largest first."""
    out: list[tuple[int, bytes]] = []
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            out.append((level, nodes(level, lo >> level)))
            lo += 1 << level
    return out


def compact_range(nodes: NodeSource, size: int) -> list[tuple[int, bytes]]:
    """The perfect subtrees that make up a tree of ``size`` leaves, largest first.

    One ``(level, hash)`` per set bit of ``size``. This is all the state needed to append
    to the tree (merge equal levels from the right) or to compute its root.
    """
    if size < 0:
        raise ValueError(f"negative tree size {size}")
    return _parts(nodes, 0, size)


def root_of_compact_range(compact: Sequence[tuple[int, bytes]], hasher: TreeHasher) -> bytes:
    """The root over a compact range: fold the subtrees from the right.

    Folding right to left is the RFC shape: the left part of every split is the largest
    perfect subtree, and what remains on the right is the same problem, smaller.
    """
    if not compact:
        return hasher.empty_root()
    node = hasher.node
    digest = compact[-1][1]
    for i in range(len(compact) - 2, -1, -1):
        digest = node(compact[i][1], digest)
    return digest


def subtree_root(nodes: NodeSource, lo: int, hi: int, hasher: TreeHasher) -> bytes:
    """MTH of the leaves ``[lo, hi)``: a perfect subtree, or one on a tree's right edge.

    ``lo`` must be a multiple of the largest power of two not above ``hi - lo``, which
    holds for every node of an RFC 9162 tree; the range is then a run of aligned perfect
    subtrees, one per set bit of its length.
    """
    n = hi - lo
    if lo < 0 or n < 0:
        raise ValueError(f"no leaf range [{lo}, {hi})")
    if n == 0:
        return hasher.empty_root()
    top = n.bit_length() - 1
    if lo & ((1 << top) - 1):
        raise ValueError(f"leaves [{lo}, {hi}) are not a subtree of a tree of the RFC 9162 shape")
    if n == 1 << top:
        return nodes(top, lo >> top)
    return root_of_compact_range(_parts(nodes, lo, n), hasher)


def root(nodes: NodeSource, size: int, hasher: TreeHasher) -> bytes:
    """The tree head's root hash for ``size`` leaves (``H("")`` for none)."""
    if size < 0:
        raise ValueError(f"negative tree size {size}")
    return subtree_root(nodes, 0, size, hasher)


# --- proofs -----------------------------------------------------------------------------


def inclusion_proof(nodes: NodeSource, index: int, size: int, hasher: TreeHasher) -> list[bytes]:
    """RFC 9162 2.1.3.1 ``PATH(index, D[size])``: sibling hashes from the leaf up.

    Walks from the root down. At most one sibling (the first right sibling met) lies on
    the tree's right edge and costs O(log n) node reads; every other is one read.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree_root(nodes, lo + k, hi, hasher))
            hi = lo + k
        else:
            level = k.bit_length() - 1
            path.append(nodes(level, lo >> level))
            lo += k
    path.reverse()
    return path


def consistency_proof(nodes: NodeSource, old_size: int, new_size: int, hasher: TreeHasher) -> list[bytes]:
    """RFC 9162 2.1.4.1 ``PROOF(old_size, D[new_size])``; empty when old_size is 0 or equal.

    The iterative form of SUBPROOF: descend towards the node that ends at ``old_size``,
    recording the sibling not taken; that node itself is recorded unless it is a left
    edge node of the new tree (then the old root is that node and the verifier has it).
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    proof: list[bytes] = []
    lo, hi, on_left_edge = 0, new_size, True
    while old_size != hi:
        k = _split(hi - lo)
        if old_size <= lo + k:
            proof.append(subtree_root(nodes, lo + k, hi, hasher))
            hi = lo + k
        else:
            level = k.bit_length() - 1
            proof.append(nodes(level, lo >> level))
            lo += k
            on_left_edge = False
    if not on_left_edge:
        proof.append(subtree_root(nodes, lo, hi, hasher))
    proof.reverse()
    return proof


# --- verification -----------------------------------------------------------------------


def _check_hash(hasher: TreeHasher, value: object, what: str) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != hasher.size:
        got = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray, memoryview)) else type(value).__name__
        raise ProofFailed(f"{what} is not a {hasher.size}-byte hash (got {got})")


def _check_proof_hashes(hasher: TreeHasher, proof: Sequence[bytes]) -> None:
    for i, element in enumerate(proof):
        _check_hash(hasher, element, f"proof element {i}")


def _inclusion_length(index: int, size: int) -> int:
    """How many hashes RFC 9162 2.1.3.2 consumes for leaf ``index`` of ``size``."""
    fn, sn, count = index, size - 1, 0
    while sn:
        if fn & 1 or fn == sn:
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
        count += 1
    return count


def verify_inclusion(
    hasher: TreeHasher, index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: prove leaf ``index`` (hash ``leaf_hash``) is in the tree ``(size, root)``.

    ``leaf_hash`` is ``hasher.leaf(data)``, not the data. Raises ``ProofFailed``.
    """
    if not isinstance(index, int) or not isinstance(size, int) or not 0 <= index < size:
        raise ProofFailed(f"leaf {index} is not in a tree of {size} leaves")
    _check_hash(hasher, leaf_hash, "the leaf hash")
    _check_hash(hasher, root, "the root")
    _check_proof_hashes(hasher, proof)
    root = bytes(root)
    expected = _inclusion_length(index, size)
    if len(proof) != expected:
        raise ProofFailed(
            f"the inclusion proof for leaf {index} of {size} has {len(proof)} hashes, expected {expected}"
        )
    node = hasher.node
    fn, sn, digest = index, size - 1, bytes(leaf_hash)
    for element in proof:
        if sn == 0:  # unreachable after the length check; kept as the RFC states it
            raise ProofFailed("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            digest = node(element, digest)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            digest = node(digest, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofFailed("the inclusion proof is too short")
    if digest != root:
        raise ProofFailed(
            f"leaf {index} is not in the tree of {size} leaves with root {root.hex()}: "
            f"the proof leads to root {digest.hex()}"
        )


def _consistency_length(old_size: int, new_size: int) -> int:
    """How many hashes RFC 9162 2.1.4.2 consumes for ``0 < old_size < new_size``."""
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    count = 0
    while sn:
        if fn & 1 or fn == sn:
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
        count += 1
    # The verifier prepends the old root when old_size is a power of two.
    return count if old_size & (old_size - 1) == 0 else count + 1


def verify_consistency(
    hasher: TreeHasher, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: prove the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    Equal sizes need equal roots and an empty proof. Size 0 needs ``old_root == H("")``
    (the only root a tree of no leaves has) and an empty proof. Raises ``ProofFailed``.
    """
    if not isinstance(old_size, int) or not isinstance(new_size, int) or not 0 <= old_size <= new_size:
        raise ProofFailed(f"a tree of {new_size} leaves cannot extend one of {old_size}")
    _check_hash(hasher, old_root, "the old root")
    _check_hash(hasher, new_root, "the new root")
    _check_proof_hashes(hasher, proof)
    old_root, new_root = bytes(old_root), bytes(new_root)
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofFailed(f"the consistency proof from size {old_size} to {new_size} must be empty")
        if old_size == 0 and old_root != hasher.empty_root():
            raise ProofFailed("the old root is not the root of the empty tree")
        if old_size == new_size and old_root != new_root:
            raise ProofFailed(
                f"two different roots for the same tree size {old_size}: "
                f"{old_root.hex()} and {new_root.hex()}"
            )
        return
    expected = _consistency_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofFailed(
            f"the consistency proof from size {old_size} to {new_size} has {len(proof)} hashes, "
            f"expected {expected}"
        )
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    node = hasher.node
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first = second = path[0]
    for element in path[1:]:
        if sn == 0:  # unreachable after the length check; kept as the RFC states it
            raise ProofFailed("the consistency proof is too long")
        if fn & 1 or fn == sn:
            first = node(element, first)
            second = node(element, second)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            second = node(second, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofFailed("the consistency proof is too short")
    if first != old_root:
        raise ProofFailed(
            f"the consistency proof does not lead to the old root of size {old_size}: "
            f"{first.hex()} != {old_root.hex()}"
        )
    if second != new_root:
        raise ProofFailed(
            f"the tree of {new_size} leaves with root {new_root.hex()} does not extend the tree of "
            f"{old_size} leaves: the proof leads to {second.hex()}"
        )
