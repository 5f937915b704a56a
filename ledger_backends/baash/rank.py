"""The MPI program: ``mpiexec -n N python -m lineage_ledger.backends.baash.rank ...``.

World rank 0 is the gateway (it talks to the daemon and commits); the first rank of each
cluster is its coordinator; every other rank validates. Each rank restores its in-memory
chain from shared storage when it starts, so a restarted job resumes where storage is.
Errors are returned, not fatal (``MPI.ERRORS_RETURN``): a rank that sees one reports it
and exits, and the daemon restarts the job without the rank that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections import Counter
from typing import Any, NoReturn

from mpi4py import MPI

from lineage_ledger._errors import ConfigError

from ._mpi import Inbox, Tag
from ._wire import install_mpi_codec
from .consensus import ClusterCoordinator, quorum_of
from .endorse import Endorser
from .liveness import beat_forever
from .storage import SharedStore
from .validation import ChainState, vote_for

__all__ = ["exit_now", "main"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="baash-rank")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--control", required=True, help="path of the daemon's control socket")
    parser.add_argument("--f", type=int, default=1)
    parser.add_argument("--c", type=int, default=2)
    parser.add_argument("--clusters", type=int, default=1)
    parser.add_argument("--mode", choices=("baash", "pbft", "replicate"), default="baash")
    parser.add_argument("--vote-timeout", type=float, default=5.0)
    parser.add_argument("--ledgers-seconds", type=float, default=10.0,
                        help="how long a rank verifies its chain for one 'ledgers' request at most")
    parser.add_argument("--faulty-voter", type=int, action="append", default=[],
                        help="world rank that votes the opposite of what it found (fault injection)")
    parser.add_argument("--silent-voter", type=int, action="append", default=[],
                        help="world rank that never votes, as if hung (fault injection)")
    parser.add_argument("--stalled-round", type=int, action="append", default=[],
                        help="round number the gateway takes and never answers, its heartbeats going on "
                             "(fault injection: a gateway wedged in MPI or on hung storage)")
    parser.add_argument("--lying-signer", type=int, action="append", default=[],
                        help="world rank that reports the tree head it holds but signs another (fault injection)")
    return parser.parse_args(argv)


class Validator:
    """A rank that validates (Protocol 3), commits what the gateway says, and reports."""

    def __init__(self, world: Any, cluster: Any, state: ChainState, store: SharedStore, args: argparse.Namespace,
                 endorser: Endorser | None = None) -> None:
        self.world, self.cluster, self.state, self.store, self.args = world, cluster, state, store, args
        self.endorser = endorser  # signs the tree head after each commit (endorse.py)
        self.faulty = world.Get_rank() in args.faulty_voter
        self.silent = world.Get_rank() in args.silent_voter
        self.lying = world.Get_rank() in args.lying_signer
        self.rounds: dict[int, list[Any]] = {}        # round id -> its blocks, until committed
        self.pbft: dict[tuple[int, int], dict[str, Any]] = {}

    def _vote(self, blocks: list[Any], indices: list[int]) -> dict[int, tuple[str, str]]:
        votes = {}
        for i, verdict in self.state.check_round(blocks, indices).items():
            valid = verdict.valid != self.faulty  # a faulty voter says the opposite
            votes[i] = (vote_for(blocks[i].id, valid), "" if valid else (verdict.reason or "voted invalid"))
        return votes

    def handle(self, comm: Any, source: int, tag: int, body: Any) -> bool:
        if tag == Tag.PREPARE:
            _, round_id, blocks, plan, mode = body
            self.rounds[round_id] = blocks
            if mode == "pbft":
                self._pbft_start(round_id, blocks, plan)
            elif plan and not self.silent:
                comm.send((round_id, self._vote(blocks, [i for i, _ in plan])), dest=source, tag=Tag.VOTE)
        elif tag == Tag.EXTRA and not self.silent:
            _, round_id, i = body
            comm.send((round_id, self._vote(self.rounds[round_id], [i])), dest=source, tag=Tag.VOTE)
        elif tag in (Tag.PBFT_PREPREPARE, Tag.PBFT_PREPARE, Tag.PBFT_COMMIT):
            self._pbft_message(tag, source, body)
        elif tag == Tag.COMMIT:
            round_id, count, carried = body
            blocks = carried if carried is not None else self.rounds.get(round_id, [])
            self.state.extend(blocks[:count])
            self.rounds.pop(round_id, None)
            self.pbft = {k: v for k, v in self.pbft.items() if k[0] != round_id}
            # The acknowledgement carries this rank's signature of the tree head it now holds.
            endorsement = (self.endorser.sign(self.state.tree, lie=self.lying)
                           if self.endorser is not None and count else ())
            comm.send((round_id, *self.state.head, *endorsement), dest=source, tag=Tag.ACK)
        elif tag == Tag.LEDGER:
            ask, seconds = body
            comm.send((ask, self.state.summary(seconds)), dest=source, tag=Tag.SUMMARY)
        elif tag == Tag.SYNC:
            self.state.extend(self.store.load(self.state.head[0]))
            comm.send((-1, *self.state.head), dest=source, tag=Tag.ACK)
        elif tag == Tag.STOP:
            return False
        return True

    # -- the PBFT baseline over the same sub-clusters: all-to-all prepare and commit ----------
    def _entry(self, round_id: int, i: int) -> dict[str, Any]:
        return self.pbft.setdefault((round_id, i), {
            "members": None, "vote": None, "prepares": Counter(), "commits": Counter(),
            "committed": False, "replied": False, "coordinator": None})

    def _pbft_start(self, round_id: int, blocks: list[Any], plan: list[tuple[int, list[int]]]) -> None:
        me = self.cluster.Get_rank()
        for i, members in plan:
            entry = self._entry(round_id, i)
            entry["members"], entry["coordinator"] = members, 0
            if members[0] == me:  # the primary pre-prepares, then everyone validates
                for m in members[1:]:
                    self.cluster.send((round_id, i, blocks[i].id), dest=m, tag=Tag.PBFT_PREPREPARE)
                self._pbft_validate(round_id, i)
            elif entry.get("preprepared"):
                self._pbft_validate(round_id, i)

    def _pbft_validate(self, round_id: int, i: int) -> None:
        entry = self._entry(round_id, i)
        if entry["vote"] is not None or entry["members"] is None:
            return
        entry["vote"] = self._vote(self.rounds[round_id], [i])[i]
        self._pbft_broadcast(entry, Tag.PBFT_PREPARE, (round_id, i, entry["vote"]))
        entry["prepares"][entry["vote"]] += 1
        self._pbft_progress(round_id, i)

    def _pbft_broadcast(self, entry: dict[str, Any], tag: int, body: Any) -> None:
        me = self.cluster.Get_rank()
        for m in entry["members"]:
            if m != me:
                self.cluster.send(body, dest=m, tag=tag)

    def _pbft_message(self, tag: int, source: int, body: Any) -> None:
        round_id, i = body[0], body[1]
        entry = self._entry(round_id, i)
        if tag == Tag.PBFT_PREPREPARE:
            entry["preprepared"] = True
            self._pbft_validate(round_id, i)
        elif tag == Tag.PBFT_PREPARE:
            entry["prepares"][tuple(body[2])] += 1
        else:
            entry["commits"][tuple(body[2])] += 1
        self._pbft_progress(round_id, i)

    def _pbft_progress(self, round_id: int, i: int) -> None:
        entry = self._entry(round_id, i)
        if entry["vote"] is None or entry["members"] is None:
            return
        need = quorum_of(len(entry["members"]), "pbft")
        vote = tuple(entry["vote"])
        if not entry["committed"] and entry["prepares"][vote] >= need:
            entry["committed"] = True
            self._pbft_broadcast(entry, Tag.PBFT_COMMIT, (round_id, i, vote))
            entry["commits"][vote] += 1
        if entry["committed"] and not entry["replied"] and entry["commits"][vote] >= need:
            entry["replied"] = True
            self.cluster.send((round_id, {i: vote}), dest=entry["coordinator"], tag=Tag.VOTE)


def restore(store: SharedStore) -> ChainState:
    """The chain in shared storage, verified (once: a ``ledgers`` request then verifies only
    the blocks committed since)."""
    state = ChainState()
    state.extend(store.load())
    state.summary()
    return state


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    install_mpi_codec()  # schema-checked JSON between ranks, never pickle
    world = MPI.COMM_WORLD
    world.Set_errhandler(MPI.ERRORS_RETURN)
    rank, size = world.Get_rank(), world.Get_size()
    clusters = max(1, min(args.clusters, size))
    cluster = world.Split(color=rank % clusters, key=rank)  # coordinators: world ranks 0..clusters-1
    cluster.Set_errhandler(MPI.ERRORS_RETURN)
    store = SharedStore(args.storage)
    # Beat before restoring: the daemon then waits for a long chain's restore while every rank
    # beats, and names a rank that dies meanwhile, instead of a fixed time for both.
    beat_forever(args.control, rank, os.getpid())
    started = time.monotonic()
    state = restore(store)
    try:
        endorser = Endorser.load(args.storage, rank)
    except ConfigError as exc:  # a key others may read: sign nothing with it, but keep validating
        print(f"baash rank {rank}: endorsing no tree head: {exc}", file=sys.stderr)
        endorser = None
    refusal = (endorser.check_restored(args.storage, state.blocks, verified=True, chain_error=state.chain_error)
               if endorser is not None else None)
    if refusal is not None:  # keep serving, but sign no tree head of this chain
        print(f"baash rank {rank}: endorsing no tree head: {refusal}", file=sys.stderr)
        endorser = None
    pids = world.gather((os.getpid(), time.monotonic() - started), root=0)
    inbox = Inbox([cluster, world])
    try:
        if rank == 0:
            from .gateway import Gateway

            Gateway(world, cluster, inbox, state, store, args, clusters, endorser).serve(pids or [])
        else:
            coordinator = None
            if cluster.Get_rank() == 0:
                coordinator = ClusterCoordinator(cluster, Inbox([cluster], Tag.VOTE), state, store, f=args.f, c=args.c, mode=args.mode,
                                                 vote_timeout=args.vote_timeout, tags=Tag)
            validator = Validator(world, cluster, state, store, args, endorser)
            while True:
                comm, source, tag, body = inbox.next()  # type: ignore[misc]
                if tag == Tag.ROUND and coordinator is not None:
                    round_id, blocks, indices = body
                    validator.rounds[round_id] = blocks
                    decisions = coordinator.decide(round_id, blocks, indices)
                    world.send((round_id, decisions), dest=0, tag=Tag.DECISION)
                elif not validator.handle(comm, source, tag, body):
                    break
    except MPI.Exception as exc:  # the fault monitor's first checkpoint: a failed exchange
        print(f"baash rank {rank}: MPI error {exc}; leaving so the daemon restarts the job", file=sys.stderr)
        return 3
    return 0


def exit_now(code: int) -> NoReturn:
    """Leave MPI and exit without Python's teardown of the rank's objects.

    A rank's state is its in-memory chain; what it committed is in shared storage, fsync'd,
    before the round was answered. Freeing it object by object at exit was most of a stop: 4
    ranks on 2 cores took 0.31 s from their last message to mpiexec's exit, 0.10 s this way
    (more with a long chain). MPI is finalized and the output flushed first, as at any exit."""
    if not MPI.Is_finalized():
        MPI.Finalize()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing to keep
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
