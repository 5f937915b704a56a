"""Building blocks on a head, and verifying a chain of stored blocks.

The core owns every hash and link: back-ends only store what :func:`build_block`
produced and hand back the bytes for :func:`verify_chain` to recompute.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from blake3 import blake3

from ._canonical import utcnow
from ._errors import ChainBroken, MerkleMismatch, RecordTampered
from ._merkle import MerkleBuilder, merkle_root, root_of_leaf_hashes
from ._model import Block, BlockHeader, StoredBlock, StoredRecord

__all__ = ["ChainSummary", "ChainTip", "build_block", "verify_block", "verify_chain"]


class ChainTip(Protocol):
    """Anything that names a block: a header, a stored block, a back-end's head."""

    @property
    def height(self) -> int: ...

    @property
    def id(self) -> str: ...


def build_block(records: Sequence[StoredRecord], prev: ChainTip | None, time: datetime | None = None) -> Block:
    """The block that follows ``prev`` (``None`` for the genesis block)."""
    height, prev_id = (0, None) if prev is None else (prev.height + 1, prev.id)
    header = BlockHeader(
        height=height,
        prev=prev_id,
        merkle_root=merkle_root(r.id for r in records),
        time=time or utcnow(),
        count=len(records),
    )
    return Block(header, tuple(records))


@dataclass(frozen=True)
class ChainSummary:
    """What a successful verification established."""

    blocks: int
    records: int
    head: str | None
    log_root: str  # Merkle root over every record id in ledger order: a checkpoint


def verify_block(
    block: StoredBlock, expected_height: int, expected_prev: str | None, log: MerkleBuilder | None = None
) -> BlockHeader:
    """Recompute one block; raise the error naming what is wrong with it."""
    height = expected_height
    try:
        header = BlockHeader.decode(block.header)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ChainBroken(f"block {height}: header is not readable ({exc})", height=height) from exc
    if blake3(block.header).hexdigest() != block.id:
        raise ChainBroken(f"block {height}: header does not hash to the stored block id", height=height)
    if header.height != expected_height or block.height != expected_height:
        raise ChainBroken(
            f"block {height}: stored height {block.height}, header height {header.height}",
            height=height,
        )
    if header.prev != expected_prev:
        raise ChainBroken(f"block {height}: previous-block link does not match", height=height)
    if header.count != len(block.records):
        raise MerkleMismatch(
            f"block {height}: header counts {header.count} records, {len(block.records)} stored",
            height=height,
        )
    leaves = []
    for position, record in enumerate(block.records):
        digest = blake3(record.body).digest()
        if digest.hex() != record.id:
            raise RecordTampered(
                f"block {height}: record {position} ({record.id[:16]}) does not hash to its id",
                height=height,
            )
        leaves.append(blake3(b"\x00" + digest).digest())  # leaf_hash, without the hex round trip
    if root_of_leaf_hashes(leaves).hex() != header.merkle_root:
        raise MerkleMismatch(f"block {height}: Merkle root does not match its records", height=height)
    if log is not None:
        add = log.add_leaf_hash
        for leaf in leaves:
            add(leaf)
    return header


def verify_chain(blocks: Iterable[StoredBlock]) -> ChainSummary:
    """Verify ids, heights, links, Merkle roots and record hashes; stop at the first bad block."""
    log = MerkleBuilder()
    prev: str | None = None
    expected = 0
    seen: set[str] = set()
    for block in blocks:
        verify_block(block, expected, prev, log)
        for record in block.records:
            if record.id in seen:
                raise ChainBroken(
                    f"block {expected}: record {record.id[:16]} appears twice in the ledger",
                    height=expected,
                )
            seen.add(record.id)
        prev = block.id
        expected += 1
    return ChainSummary(blocks=expected, records=log.size, head=prev, log_root=log.root())
