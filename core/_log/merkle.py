"""Merkle trees of the RFC 6962 / RFC 9162 shape, with BLAKE3.

leaf = H(0x00 || record id bytes), node = H(0x01 || left || right); the tree over n
leaves splits at the largest power of two below n, which is the same tree as pairing
nodes bottom-up and promoting an odd last node unchanged. The empty tree's root is H("").

:class:`MerkleBuilder` adds leaves in any batches and keeps only O(log n) state (a
compact range of perfect subtrees), so a root never depends on how leaves were fed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from blake3 import blake3

__all__ = [
    "MerkleBuilder",
    "inclusion_proof",
    "leaf_hash",
    "leaf_hashes",
    "merkle_levels",
    "merkle_root",
    "node_hash",
    "root_of_leaf_hashes",
    "verify_inclusion",
]

_EMPTY = blake3(b"").digest()


def leaf_hash(record_id: str) -> bytes:
    return blake3(b"\x00" + bytes.fromhex(record_id)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return blake3(b"\x01" + left + right).digest()


# Verification hashes millions of 33- and 65-byte strings. Building a blake3 object per
# hash costs about twice the hashing, so the bulk helpers below reset and reuse one
# hasher (a local object: the functions stay safe to call from several threads).


def leaf_hashes(digests: Iterable[bytes]) -> list[bytes]:
    """``leaf_hash`` of each raw 32-byte record id, in order."""
    hasher = blake3()
    reset, update, digest = hasher.reset, hasher.update, hasher.digest
    out: list[bytes] = []
    append = out.append
    for raw in digests:
        reset()
        update(b"\x00" + raw)
        append(digest())
    return out


def _next_level(level: list[bytes]) -> list[bytes]:
    hasher = blake3()
    reset, update, digest = hasher.reset, hasher.update, hasher.digest
    nxt: list[bytes] = []
    append = nxt.append
    for left, right in zip(level[0::2], level[1::2], strict=False):
        reset()
        update(b"\x01" + left + right)
        append(digest())
    if len(level) % 2:
        nxt.append(level[-1])
    return nxt


def merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree over ``leaves``, leaves first, the root's level last.

    Node ``i`` of level ``k`` covers leaves ``i * 2**k`` to ``(i + 1) * 2**k - 1``; it is a
    perfect subtree when that range lies inside the leaves, which lets
    :meth:`MerkleBuilder.add_levels` reuse it.
    """
    levels = [leaves]
    while len(levels[-1]) > 1:
        levels.append(_next_level(levels[-1]))
    return levels


def root_of_leaf_hashes(level: list[bytes]) -> bytes:
    if not level:
        return _EMPTY
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_root(record_ids: Iterable[str]) -> str:
    return root_of_leaf_hashes(leaf_hashes(map(bytes.fromhex, record_ids))).hex()


class MerkleBuilder:
    """Streaming root computation: ``extend`` in any batches, ``root()`` at any time."""

    __slots__ = ("_hasher", "_stack", "size")

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes decreasing
        self.size = 0
        self._hasher = blake3()  # reused for node hashes; a builder is not shared by threads

    def _node(self, left: bytes, right: bytes) -> bytes:
        hasher = self._hasher
        hasher.reset()
        hasher.update(b"\x01" + left + right)
        return hasher.digest()

    def add_leaf_hash(self, leaf: bytes) -> None:
        size, digest = 1, leaf
        stack = self._stack
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, digest = left_size + size, node_hash(left, digest)
        stack.append((size, digest))
        self.size += 1

    def add_levels(self, levels: Sequence[Sequence[bytes]]) -> None:
        """Add the leaves ``levels[0]``, reusing the subtrees of :func:`merkle_levels`.

        The same as ``add_leaf_hash`` for each leaf, with fewer hashes: wherever a perfect
        subtree of the given tree is also aligned in this one (its first leaf lands at a
        multiple of its size), it is added whole.
        """
        if not levels:
            return
        count = len(levels[0])
        top = len(levels) - 1
        stack, node = self._stack, self._node
        done = 0
        while done < count:
            offset = self.size
            # The largest k with 2**k dividing both offsets and 2**k leaves left.
            k = min(((offset & -offset) or 1 << 62).bit_length(), ((done & -done) or 1 << 62).bit_length()) - 1
            k = min(k, top, (count - done).bit_length() - 1)
            size, digest = 1 << k, levels[k][done >> k]
            while stack and stack[-1][0] == size:
                left_size, left = stack.pop()
                size, digest = left_size + size, node(left, digest)
            stack.append((size, digest))
            self.size += 1 << k
            done += 1 << k

    def extend(self, record_ids: Iterable[str]) -> None:
        for record_id in record_ids:
            self.add_leaf_hash(leaf_hash(record_id))

    def root(self) -> str:
        if not self._stack:
            return _EMPTY.hex()
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            digest = node_hash(left, digest)
        return digest.hex()


def inclusion_proof(record_ids: Sequence[str], index: int) -> list[str]:
    """Audit path (leaf to root) proving ``record_ids[index]`` is in the tree."""
    if not 0 <= index < len(record_ids):
        raise IndexError(f"leaf {index} outside a tree of {len(record_ids)}")
    level = [leaf_hash(i) for i in record_ids]
    path: list[str] = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling].hex())
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, index = nxt, index // 2
    return path


def verify_inclusion(record_id: str, index: int, size: int, path: Sequence[str], root: str) -> bool:
    """RFC 9162 section 2.1.3.2: does ``path`` prove leaf ``index`` of ``size`` under ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    digest = leaf_hash(record_id)
    for sibling_hex in path:
        sibling = bytes.fromhex(sibling_hex)
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            digest = node_hash(digest, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and digest.hex() == root
