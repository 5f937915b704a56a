"""Protocol 2 at a cluster coordinator: sub-clusters, votes, extension, storage fallback.

A cluster is an MPI communicator (``COMM_WORLD.Split``); its rank 0 is the coordinator,
which does not validate. The other ranks are split into disjoint sub-clusters of
``min(3f+1, validators)``; the blocks of a round are dealt out to the sub-clusters, which
validate in parallel. The two-phase quorum commit, as the coordinator sees it:

1. prepare: the whole round goes to every rank of the cluster (all of them must be able to
   commit it later), each told which blocks it validates;
2. vote: each validator answers with one vote per assigned block;
3. decide: a vote held by more than half of the sub-cluster decides the block. A
   validator that did not answer in time has failed. With no majority, idle ranks join
   the sub-cluster one at a time (at most ``c``) and the count is taken again over the
   larger sub-cluster. Still none: the block is validated against the shared-storage ledger.

Commit and acknowledge are the gateway's (:mod:`.gateway`), once every cluster decided.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .validation import NULL_VOTE, ChainState, RoundIds, check_block, vote_for

__all__ = ["VOTE_SECONDS_PER_BLOCK", "ClusterCoordinator", "Decision", "quorum_of"]

#: A validator's time to answer grows with the round: it decodes every block of it and checks
#: its share (about 0.8 ms a block on 2 cores at load 4-6). The vote timeout alone was the
#: wait whatever the round: under load a validator of a round of thousands missed it, was
#: counted failed for the rest of the job, and its blocks fell to the slower storage check.
VOTE_SECONDS_PER_BLOCK = 0.005


@dataclass(frozen=True, slots=True)
class Decision:
    valid: bool
    how: str            # "quorum", "extended", "storage"
    voters: int
    agreeing: int
    reason: str = ""


def quorum_of(size: int, mode: str) -> int:
    """Votes needed: a majority for BAASH, more than two thirds for the PBFT baseline."""
    return (2 * size) // 3 + 1 if mode == "pbft" else size // 2 + 1


class ClusterCoordinator:
    def __init__(self, comm: Any, inbox: Any, state: ChainState, store: Any, *, f: int, c: int,
                 mode: str, vote_timeout: float, tags: Any) -> None:
        self.comm, self.inbox, self.state, self.store = comm, inbox, state, store
        self.f, self.c, self.mode, self.vote_timeout, self.tags = f, c, mode, vote_timeout, tags
        self.members = list(range(1, comm.Get_size()))
        self.failed: set[int] = set()   # validators that missed a vote, this job's lifetime
        self._round_ids: RoundIds | None = None  # the round's ids so far, for blocks storage decides

    def layout(self) -> tuple[list[list[int]], list[int]]:
        """Disjoint sub-clusters of 3f+1 (fewer if the cluster is small) and the idle ranks."""
        alive = [m for m in self.members if m not in self.failed] or self.members
        size = max(1, min(3 * self.f + 1, len(alive)))
        count = max(1, len(alive) // size)
        subs = [alive[j * size:(j + 1) * size] for j in range(count)]
        return subs, alive[count * size:]

    def decide(self, round_id: int, blocks: list[Any], indices: list[int]) -> dict[int, Decision]:
        if not self.members:  # a cluster of one rank: only shared storage can validate
            return {i: self._storage_decision(blocks, i, 0) for i in indices}
        subs, idle = self.layout()
        sub_of = {i: subs[n % len(subs)] for n, i in enumerate(indices)}
        assigned: dict[int, list[int]] = {m: [] for m in self.members}
        for i, sub in sub_of.items():
            for member in sub:
                assigned[member].append(i)
        for member in self.members:  # phase 1: prepare
            plan = [(i, sub_of[i]) for i in assigned[member]]
            self.comm.send(("prepare", round_id, blocks, plan, self.mode), dest=member, tag=self.tags.PREPARE)
        votes: dict[int, dict[int, tuple[str, str]]] = {i: {} for i in indices}
        waiting = {m for m in self.members if assigned[m]}
        self._collect(round_id, votes, waiting, len(blocks))  # phase 2: votes
        decisions = {}
        for i in indices:  # phase 3: decide
            decisions[i] = self._decide_one(round_id, blocks, i, list(sub_of[i]), idle, votes[i])
        return decisions

    def _collect(self, round_id: int, votes: dict[int, dict[int, tuple[str, str]]], waiting: set[int],
                 blocks: int = 1) -> None:
        deadline = time.monotonic() + self.vote_timeout + blocks * VOTE_SECONDS_PER_BLOCK
        while waiting:
            message = self.inbox.next(deadline)
            if message is None:
                self.failed.update(waiting)  # no vote in time: counted as failed
                return
            comm, source, tag, body = message
            if comm is not self.comm or tag != self.tags.VOTE or body[0] != round_id:
                continue  # a late vote from an earlier round
            for i, vote in body[1].items():
                if i in votes:
                    votes[i][source] = vote
            waiting.discard(source)

    def _tally(self, block_id: str, voters: list[int], cast: dict[int, tuple[str, str]]) -> tuple[str | None, int, str]:
        counts = Counter(cast[v][0] for v in voters if v in cast)
        if not counts:
            return None, 0, ""
        vote, agreeing = counts.most_common(1)[0]
        if agreeing < quorum_of(len(voters), self.mode):
            return None, agreeing, ""
        reasons = [cast[v][1] for v in voters if v in cast and cast[v][0] == vote and cast[v][1]]
        return vote, agreeing, reasons[0] if reasons else ""

    def _decide_one(self, round_id: int, blocks: list[Any], i: int, voters: list[int], idle: list[int],
                    cast: dict[int, tuple[str, str]]) -> Decision:
        block_id = blocks[i].id
        how = "quorum"
        vote, agreeing, reason = self._tally(block_id, voters, cast)
        if vote is None and self.mode == "baash":
            spares = [m for m in idle if m not in voters] + [m for m in self.members if m not in voters and m not in idle]
            for extra in spares[: self.c]:  # more than half failed: widen the sub-cluster
                voters.append(extra)
                self.comm.send(("extra", round_id, i), dest=extra, tag=self.tags.EXTRA)
                waiting = {extra}
                self._collect(round_id, {i: cast}, waiting)
                vote, agreeing, reason = self._tally(block_id, voters, cast)
                how = "extended"
                if vote is not None:
                    break
        if vote is None:
            return self._storage_decision(blocks, i, len(voters))
        valid = vote == vote_for(block_id, True)
        if not valid and vote != NULL_VOTE:
            reason = "the majority vote names no valid block"
        return Decision(valid, how, len(voters), agreeing, reason)

    def _storage_decision(self, blocks: list[Any], i: int, voters: int) -> Decision:
        """Protocol 2, line 11: the shared-storage ledger validates the block."""
        self.store.refresh()
        height = self.store.height
        if height != self.state.head[0]:
            return Decision(False, "storage", voters, 0, "shared storage and this rank disagree on the head")
        prev = blocks[i - 1].id if i > 0 else (self.store.ids[-1] if self.store.ids else None)
        if self._round_ids is None or self._round_ids.blocks is not blocks:
            self._round_ids = RoundIds(blocks)  # one per round: blocks fall back in order, each O(1) more
        verdict = check_block(blocks[i], height + i, prev, self.state.record_ids, self._round_ids.before(i))
        return Decision(verdict.valid, "storage", voters, 0, verdict.reason)
