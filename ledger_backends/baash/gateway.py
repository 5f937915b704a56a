"""World rank 0: the link to the daemon, the commit and acknowledge phases, Protocol 4.

A round from the daemon is a list of blocks chained on the committed head, grouped by
client request. The gateway sends each other cluster's coordinator its share, decides
its own cluster's share as coordinator of cluster 0, and collects the other decisions.
Then, in chain order, a request commits only if every block of it was decided valid
(an append is atomic); the requests after a refused one were built on a block that will
not exist, so they conflict. Committed blocks go to shared storage first (the durable
copy: a crash after this point loses nothing), then every rank appends them to its
in-memory chain and acknowledges its new head, with its signature of the tree head it
holds; the gateway puts the signatures of the ranks that agree with its own under one
note, the endorsed checkpoint (:mod:`.endorse`).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

from lineage_ledger._errors import ConfigError
from lineage_ledger._model import BlockHeader

from ._mpi import Inbox, Tag
from ._wire import TO_GATEWAY, WireError, receive, send
from .consensus import VOTE_SECONDS_PER_BLOCK, ClusterCoordinator, Decision
from .endorse import Endorser, assemble, load_verifiers, signs

__all__ = ["Gateway"]

HEARTBEAT_EVERY = 0.5


class Gateway:
    def __init__(self, world: Any, cluster: Any, inbox: Inbox, state: Any, store: Any, args: Any, clusters: int,
                 endorser: Endorser | None = None) -> None:
        self.world, self.cluster, self.state, self.store, self.args = world, cluster, state, store, args
        self.endorser = endorser
        self.verifiers = []  # the ranks' public keys: a rank's signature line is checked before it is kept
        if endorser is not None:
            try:
                self.verifiers = load_verifiers(os.path.join(args.storage, "keys", "ranks.pub"))
            except ConfigError as exc:  # then only the gateway's own line: it fails closed
                print(f"baash gateway: cannot check the ranks' signatures: {exc}", file=sys.stderr)
        self.clusters = clusters
        self._asked_ledgers = 0
        self.inbox = inbox
        self.coordinator = ClusterCoordinator(cluster, Inbox([cluster], Tag.VOTE), state, store, f=args.f, c=args.c,
                                              mode=args.mode, vote_timeout=args.vote_timeout, tags=Tag)

    def serve(self, pids: list[tuple[int, float]]) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.args.control)
        subs, idle = self.coordinator.layout()
        send(sock, "hello", pids=[p for p, _ in pids], restore_seconds=max(t for _, t in pids),
             size=self.world.Get_size(), clusters=self.clusters, mode=self.args.mode,
             subclusters=subs, idle=idle, head=list(self.state.head), gateway_pid=os.getpid())
        try:
            while True:
                ready, _, _ = select.select([sock], [], [], HEARTBEAT_EVERY)
                if not ready:
                    send(sock, "heartbeat", at=time.time())
                    continue
                request = receive(sock, TO_GATEWAY)
                if request["kind"] == "round" and request["round_id"] in self.args.stalled_round:
                    threading.Event().wait()  # fault injection: wedged for good; only the daemon ends it
                if request["kind"] == "round":
                    round_id, outcomes, info, endorsed = self.round(request["round_id"], request["blocks"],
                                                                    [tuple(g) for g in request["groups"]])
                    send(sock, "result", round_id=round_id, outcomes=[list(o) for o in outcomes], info=info,
                         checkpoint=endorsed)
                elif request["kind"] == "ledgers":
                    send(sock, "ledgers", ledgers=self.ledgers())
                elif request["kind"] == "stop":
                    break
        except (ConnectionError, OSError, WireError) as exc:
            # The daemon went away: stop the job rather than hold the storage with nobody
            # to answer to. The line lands in DIR/logs/mpiexec-<generation>.log.
            print(f"baash gateway: lost the daemon ({exc!r}); stopping the job", file=sys.stderr)
        finally:
            for rank in range(1, self.world.Get_size()):
                self.world.send(None, dest=rank, tag=Tag.STOP)
            sock.close()

    def _decide(self, round_id: int, blocks: list[Any]) -> dict[int, Decision]:
        if self.args.mode == "replicate":  # the baseline: no validation at all
            return {i: Decision(True, "replicated", 0, 0) for i in range(len(blocks))}
        shares = {k: [i for i in range(len(blocks)) if i % self.clusters == k] for k in range(self.clusters)}
        for k in range(1, self.clusters):
            if shares[k]:
                self.world.send((round_id, blocks, shares[k]), dest=k, tag=Tag.ROUND)
        decisions = self.coordinator.decide(round_id, blocks, shares[0])
        waiting = {k for k in range(1, self.clusters) if shares[k]}
        deadline = time.monotonic() + 4 * self.args.vote_timeout + len(blocks) * VOTE_SECONDS_PER_BLOCK
        decision_inbox = Inbox([self.world], Tag.DECISION)
        while waiting:
            message = decision_inbox.next(deadline)
            if message is None:
                break  # a coordinator is gone: its blocks fall to shared storage below
            _, source, _, (rid, theirs) = message
            if rid == round_id:
                decisions.update(theirs)
                waiting.discard(source)
        for k in waiting:
            for i in shares[k]:
                decisions[i] = self.coordinator._storage_decision(blocks, i, 0)
        return decisions

    def catch_up(self) -> None:
        """Storage ahead of the ranks (the daemon stored blocks while they were down): reload."""
        self.store.refresh()
        if self.store.height > self.state.head[0]:
            self.state.extend(self.store.load(self.state.head[0]))
            size = self.world.Get_size()
            for rank in range(1, size):
                self.world.send(None, dest=rank, tag=Tag.SYNC)
            # Wait until every rank has reloaded: a prepare on the cluster communicator could
            # otherwise overtake the sync on the world communicator.
            inbox, synced = Inbox([self.world], Tag.ACK), 0
            deadline = time.monotonic() + 2 * self.args.vote_timeout
            while synced < size - 1:
                message = inbox.next(deadline)
                if message is None:
                    break
                synced += message[3][0] == -1

    def round(self, round_id: int, blocks: list[Any], groups: list[tuple[int, int]]) -> tuple[Any, ...]:
        self.catch_up()
        started = time.perf_counter()
        decisions = self._decide(round_id, blocks) if blocks else {}
        decided = time.perf_counter()
        outcomes: list[tuple[str, str]] = []
        count = 0
        head_id = self.state.head[1]
        for start, end in groups:
            if count != start:
                outcomes.append(("conflict", "built on a block that was refused in the same round"))
                continue
            first_prev = BlockHeader.decode(blocks[start].header).prev if self.args.mode == "replicate" else head_id
            bad = [decisions[i] for i in range(start, end) if not decisions[i].valid]
            if bad or first_prev != head_id:
                outcomes.append(("rejected", bad[0].reason if bad else "does not follow the head"))
                continue
            count = end
            head_id = blocks[end - 1].id
            outcomes.append(("committed", ""))
        committed = blocks[:count]
        try:
            self.store.commit(committed)  # Protocol 4: shared storage, one look-up per block
        except OSError as exc:
            # Storage refused the round (a full or read-only disk): nothing of it is committed
            # (the log line commits, and it is taken back). That is no rank's failure: answer
            # the round's requests 'unavailable' (their recorders keep them) and keep the job.
            why = self.store.refusal(exc)
            print(f"baash gateway: {why}", file=sys.stderr)
            outcomes = [("unavailable", why) if status == "committed" else (status, message)
                        for status, message in outcomes]
            count, committed = 0, []
        persisted = time.perf_counter()
        carried = committed if self.args.mode == "replicate" else None
        size = self.world.Get_size()
        for rank in range(1, size):  # phase: commit
            self.world.send((round_id, count, carried), dest=rank, tag=Tag.COMMIT)
        self.state.extend(committed)
        mine = self.endorser.sign(self.state.tree) if self.endorser is not None and count else None
        signatures = [] if mine is None else [mine[2]]
        body = "" if mine is None else self.endorser.body(self.state.tree)  # type: ignore[union-attr]
        acks, agreeing = 0, 0
        ack_inbox = Inbox([self.world], Tag.ACK)
        deadline = time.monotonic() + self.args.vote_timeout
        while acks < size - 1:  # phase: acknowledge
            message = ack_inbox.next(deadline)
            if message is None:
                break
            rid, height, head, *endorsement = message[3]
            if rid == round_id:
                acks += 1
                agreeing += (height, head) == self.state.head
                if mine is not None and len(endorsement) == 3 and tuple(endorsement[:2]) == mine[:2]:
                    # Only for the tree head the gateway holds too, and only a line that signs it.
                    if signs(body, endorsement[2], self.verifiers):
                        signatures.append(endorsement[2])
                    else:
                        print(f"baash gateway: rank {message[1]} reported tree head {mine[0]} but its signature "
                              "does not verify; left out of the endorsement", file=sys.stderr)
        ways = Counter(d.how for d in decisions.values())
        timing = {"decide": decided - started, "persist": persisted - decided,
                  "commit": time.perf_counter() - persisted}
        endorsed = "" if mine is None else assemble(body, signatures)
        return round_id, outcomes, {"acks": acks, "agreeing": agreeing, "ways": dict(ways), "timing": timing,
                                    "failed_validators": sorted(self.coordinator.failed)}, endorsed

    def ledgers(self) -> list[dict[str, Any]]:
        """Every rank's report (:meth:`ChainState.summary`), each rank verifying for at most
        ``--ledgers-seconds``. Requests are numbered: the late report of a rank that missed
        an earlier request's wait is not taken for this one's."""
        self._asked_ledgers += 1
        ask, seconds, size = self._asked_ledgers, self.args.ledgers_seconds, self.world.Get_size()
        for rank in range(1, size):
            self.world.send((ask, seconds), dest=rank, tag=Tag.LEDGER)
        reports: dict[int, dict[str, Any]] = {0: {**self.state.summary(seconds), "rank": 0}}
        inbox = Inbox([self.world], Tag.SUMMARY)
        deadline = time.monotonic() + seconds + 30
        while len(reports) < size:
            message = inbox.next(deadline)
            if message is None:
                break
            answered, report = message[3]
            if answered == ask:
                reports[message[1]] = {**report, "rank": message[1]}
        return [reports.get(r, {"rank": r, "valid": False, "error": "no answer"}) for r in range(size)]
