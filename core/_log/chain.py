"""Building blocks on a head, and verifying a chain of stored blocks.

The core owns every hash and link: back-ends only store what :func:`build_block`
produced and hand back the bytes for :func:`verify_chain` to recompute.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from blake3 import blake3

from .._canonical import utcnow
from .._errors import ChainBroken, MerkleMismatch, RecordTampered
from .._model import Block, BlockColumns, BlockHeader, StoredBlock, StoredRecord
from .merkle import MerkleBuilder, leaf_hashes, merkle_levels, merkle_root

_EMPTY_ROOT = blake3(b"").digest()

__all__ = ["BLOCK_BYTES", "ChainSummary", "ChainTip", "block_spans", "build_block", "verify_block",
           "verify_block_columns", "verify_chain"]

# The most record bytes a block is built with (a record longer than this is a block of its
# own). Whoever verifies a block holds it whole: its bodies, decoded, and its index rows. By
# count alone, 1,000 records of a scatter step naming 1,000 chunk files each were one block
# of 130 MB, and the audit of that one block peaked above 500 MB. Task-shaped records
# (about 1 KB) still fill blocks of 1,000: this is twice what those hold.
BLOCK_BYTES = 2 << 20


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


def block_spans(sizes: Sequence[int], block_size: int) -> list[slice]:
    """Where a run of records of these body sizes is cut into blocks: at most ``block_size``
    records and :data:`BLOCK_BYTES` of bodies each, one record at least."""
    if block_size < 1:
        raise ValueError(f"a block holds at least one record, not {block_size}")
    spans: list[slice] = []
    start = held = 0
    for at, size in enumerate(sizes):
        if at > start and (at - start >= block_size or held + size > BLOCK_BYTES):
            spans.append(slice(start, at))
            start, held = at, 0
        held += size
    if start < len(sizes):
        spans.append(slice(start, len(sizes)))
    return spans


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
    records = block.records
    return _verify_parts(
        block.height, block.id, block.header, [r.id for r in records], [r.body for r in records],
        expected_height, expected_prev, log,
    )[0]


_digest = blake3.digest


def _verify_parts(
    stored_height: int,
    block_id: str,
    header_bytes: bytes,
    ids: Sequence[str],
    bodies: Sequence[bytes],
    expected_height: int,
    expected_prev: str | None,
    log: MerkleBuilder | None,
) -> tuple[BlockHeader, list[bytes]]:
    """:func:`verify_block` on a block given as columns (record ids, record bodies); also
    returns the records' leaf hashes, which the log tree is built from."""
    height = expected_height
    try:
        header = BlockHeader.decode(header_bytes)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ChainBroken(f"block {height}: header is not readable ({exc})", height=height) from exc
    if blake3(header_bytes).hexdigest() != block_id:
        raise ChainBroken(f"block {height}: header does not hash to the stored block id", height=height)
    if header.height != expected_height or stored_height != expected_height:
        raise ChainBroken(
            f"block {height}: stored height {stored_height}, header height {header.height}",
            height=height,
        )
    if header.prev != expected_prev:
        raise ChainBroken(f"block {height}: previous-block link does not match", height=height)
    if header.count != len(bodies) or len(ids) != len(bodies):
        raise MerkleMismatch(
            f"block {height}: header counts {header.count} records, {len(bodies)} stored",
            height=height,
        )
    # The hot loop, as C-level maps: one BLAKE3 per body, then every id compared at once
    # (element by element, so no two ids can trade characters and still match).
    try:
        digests = list(map(_digest, map(blake3, bodies)))
        intact = list(map(bytes.hex, digests)) == list(ids)
    except TypeError:  # a body that is not bytes: the loop below says which
        intact = False
    if not intact:
        for position, (record_id, body) in enumerate(zip(ids, bodies, strict=True)):
            if record_id == "" and body == b"":  # what a store hands back for a row it lacks
                raise MerkleMismatch(f"block {height}: record {position} of {len(ids)} is missing from the store",
                                     height=height)
            if blake3(body).hexdigest() != record_id:
                raise RecordTampered(
                    f"block {height}: record {position} ({str(record_id)[:16]}) does not hash to its id",
                    height=height,
                )
    levels = merkle_levels(leaf_hashes(digests))
    if (levels[-1][0] if bodies else _EMPTY_ROOT).hex() != header.merkle_root:
        raise MerkleMismatch(f"block {height}: Merkle root does not match its records", height=height)
    if log is not None:
        log.add_levels(levels)
    return header, levels[0]


def verify_block_columns(
    block: BlockColumns, expected_height: int, expected_prev: str | None
) -> tuple[BlockHeader, list[bytes]]:
    """:func:`verify_block` on columns; returns the header and the records' leaf hashes."""
    return _verify_parts(*block, expected_height, expected_prev, None)


def verify_chain(blocks: Iterable[StoredBlock]) -> ChainSummary:
    """Verify ids, heights, links, Merkle roots and record hashes; stop at the first bad block."""
    return _verify_columns(columns_of(blocks))


def columns_of(blocks: Iterable[StoredBlock]) -> Iterator[BlockColumns]:
    """Stored blocks as the (height, id, header, record ids, record bodies) the verifier reads."""
    for b in blocks:
        yield BlockColumns(b.height, b.id, b.header, [r.id for r in b.records], [r.body for r in b.records])


def _verify_columns(blocks: Iterable[BlockColumns]) -> ChainSummary:
    """:func:`verify_chain` on blocks as (height, id, header, record ids, record bodies)."""
    verifier = ChainVerifier()
    verifier.feed(blocks)
    return verifier.summary()


class ChainVerifier:
    """:func:`verify_chain` that can be fed the blocks appended since (appends only add).

    After a :meth:`feed` raises, the verifier is in an unknown state: start a new one.
    """

    def __init__(self) -> None:
        self._log = MerkleBuilder()
        self._prev: str | None = None
        self._expected = 0
        self._seen: set[str] = set()

    def feed(self, blocks: Iterable[BlockColumns]) -> None:
        log, seen = self._log, self._seen
        for height, block_id, header, ids, bodies in blocks:
            _verify_parts(height, block_id, header, ids, bodies, self._expected, self._prev, log)
            fresh = set(ids)
            if len(fresh) != len(ids) or not seen.isdisjoint(fresh):
                for record_id in ids:
                    if record_id in seen:
                        raise ChainBroken(
                            f"block {self._expected}: record {record_id[:16]} appears twice in the ledger",
                            height=self._expected,
                        )
                    seen.add(record_id)
            seen |= fresh
            self._prev = block_id
            self._expected += 1

    def summary(self) -> ChainSummary:
        return ChainSummary(blocks=self._expected, records=self._log.size, head=self._prev,
                            log_root=self._log.root())
