"""Protocol 3: what a validator checks before it votes, and the vote itself.

The chain checks are the core's own (:func:`lineage_ledger.verify_block`: header id,
height, previous-block link, record ids, Merkle root); this module adds what a ledger
service must refuse besides: records whose bytes do not parse as a record with
well-formed digests, index keys that do not match the record, and record ids already in
the ledger or earlier in the same consensus round.

A vote is a digest over the block id and the verdict, so validators that agree cast the
same vote and the coordinator counts equal digests. An invalid block gets the NULL vote.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lineage_ledger import LedgerError, StoredBlock, StoredRecord, verify_block
from lineage_ledger._log.chain import ChainVerifier, columns_of
from lineage_ledger._model import digest_hex

from .endorse import TreeTracker

__all__ = ["NULL_VOTE", "ChainState", "RoundIds", "Verdict", "check_block", "vote_for"]

NULL_VOTE = "null"
VERIFY_PIECE = 64  # blocks a ledger report verifies between two looks at the clock


def vote_for(block_id: str, valid: bool) -> str:
    """The vote of a validator that found ``block_id`` valid (or the NULL vote)."""
    return digest_hex(b"baash-vote-v1\x00" + block_id.encode()) if valid else NULL_VOTE


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    reason: str = ""


def check_block(
    block: StoredBlock,
    expected_height: int,
    expected_prev: str | None,
    known: set[str] | frozenset[str],
    earlier_in_round: set[str] | frozenset[str] = frozenset(),
) -> Verdict:
    """Validate one block against a ledger state; never raises for a bad block.
    ``earlier_in_round``: the record ids of the round's blocks before this one, a set the
    caller grows block by block (copied here for each block, it made a round of n blocks
    cost n squared: 49 s for 16,000 blocks, and a request may carry 65,536)."""
    try:
        verify_block(block, expected_height, expected_prev)
    except LedgerError as err:
        return Verdict(False, str(err))
    seen: set[str] = set()
    for position, record in enumerate(block.records):
        if record.id in known or record.id in earlier_in_round or record.id in seen:
            return Verdict(False, f"block {expected_height}: record {record.id[:16]} is already in the ledger")
        seen.add(record.id)
        try:
            parsed = StoredRecord.from_body(record.body)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            return Verdict(False, f"block {expected_height}: record {position} is not a well-formed record: {err}")
        if (parsed.run_id, parsed.inputs, parsed.outputs) != (record.run_id, record.inputs, record.outputs):
            return Verdict(False, f"block {expected_height}: record {position}'s index keys do not match its body")
    return Verdict(True)


class RoundIds:
    """The record ids of a round's blocks before block i, grown as i grows (rebuilt if it goes back)."""

    def __init__(self, blocks: Sequence[StoredBlock]) -> None:
        self.blocks, self.upto, self.ids = blocks, 0, set[str]()

    def before(self, i: int) -> set[str]:
        if i < self.upto:
            self.upto, self.ids = 0, set()
        for block in self.blocks[self.upto:i]:
            self.ids.update(r.id for r in block.records)
        self.upto = max(self.upto, i)
        return self.ids


@dataclass
class ChainState:
    """A rank's in-memory ledger: the chain, and every record id for the duplicate check."""

    blocks: list[StoredBlock] = field(default_factory=list)
    record_ids: set[str] = field(default_factory=set)
    tree: TreeTracker = field(default_factory=TreeTracker)  # the tree head a rank endorses
    # The core's verifier, fed the blocks as far as reports have verified them: blocks in
    # memory never change, so a report verifies only those added since the last one.
    verifier: ChainVerifier = field(default_factory=ChainVerifier)
    verified: int = 0
    chain_error: str | None = None  # the first problem found: it stays (appends only add)

    @property
    def head(self) -> tuple[int, str | None]:
        """(height of the next block, id of the last block)."""
        return len(self.blocks), (self.blocks[-1].id if self.blocks else None)

    def add(self, block: StoredBlock) -> None:
        if block.height != len(self.blocks):
            raise ValueError(f"block {block.height} does not follow height {len(self.blocks) - 1}")
        self.blocks.append(block)
        self.record_ids.update(r.id for r in block.records)
        self.tree.extend([block])

    def extend(self, blocks: Iterable[StoredBlock]) -> None:
        for block in blocks:
            if block.height >= len(self.blocks):
                self.add(block)

    def check_round(self, blocks: Sequence[StoredBlock], indices: Iterable[int]) -> dict[int, Verdict]:
        """Validate ``blocks[i]`` for each i in ``indices``, the round chained on this state."""
        verdicts = {}
        base_height, base_prev = self.head
        earlier = RoundIds(blocks)
        for i in sorted(set(indices)):
            prev = blocks[i - 1].id if i > 0 else base_prev
            verdicts[i] = check_block(blocks[i], base_height + i, prev, self.record_ids, earlier.before(i))
        return verdicts

    def summary(self, seconds: float | None = None) -> dict[str, object]:
        """What the identical-ledgers check compares: the chain verified by the core, or the
        error. Verified from where the last report stopped, for ``seconds`` at most: past
        them, a report that says so (``pending``) and how far it got; the next goes on."""
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while self.chain_error is None and self.verified < len(self.blocks):
                piece = self.blocks[self.verified:self.verified + VERIFY_PIECE]
                self.verifier.feed(columns_of(piece))
                self.verified += len(piece)
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except LedgerError as err:
            self.chain_error = str(err)
        head = self.blocks[-1].id if self.blocks else None
        if self.chain_error is not None:
            return {"valid": False, "blocks": len(self.blocks), "error": self.chain_error, "head": head}
        if self.verified < len(self.blocks):
            return {"valid": False, "pending": True, "verified": self.verified, "blocks": len(self.blocks),
                    "head": head, "error": f"verified {self.verified} of {len(self.blocks)} blocks so far"}
        checked = self.verifier.summary()
        return {"valid": True, "blocks": checked.blocks, "records": checked.records,
                "head": checked.head, "log_root": checked.log_root}
