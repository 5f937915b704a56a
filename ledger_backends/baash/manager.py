"""Protocol 1 in the daemon: de-duplicate, batch into consensus rounds, queue, answer.

The core builds the blocks (it owns every hash and link), so the service does not re-batch
records: it validates and commits the blocks clients send. What it batches is *requests*:
appends that arrive within ``batch_time`` seconds, up to ``batch_blocks`` blocks, go to
the MPI job as one consensus round (the pending queue; the round in flight is the active
queue). Before a block enters a round, the manager locks its record ids against the
committed ledger and the round (de-duplication): a block already committed under the same
id is skipped (idempotent re-append), a taken height, a known record or a block that does
not follow the head is an ``AppendConflict``, answered at once.

While the MPI job is down the manager validates rounds against the shared-storage ledger
itself and persists them there, so clients are answered throughout a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lineage_ledger._model import StoredBlock
from lineage_ledger.backends.memory import MemoryBackend

from ._wire import block_to_wire
from .storage import SharedStore
from .validation import check_block

__all__ = ["JobDown", "Request", "TransactionManager"]

log = logging.getLogger("lineage_ledger.baash")


class JobDown(Exception):
    """The MPI job died or stopped answering while a round was in flight."""


@dataclass
class Request:
    blocks: list[StoredBlock]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: tuple[str, str] = ("", "")

    def finish(self, status: str, message: str = "") -> None:
        self.outcome = (status, message)
        self.done.set()


class TransactionManager:
    def __init__(self, store: SharedStore, job: Any, *, batch_blocks: int = 64, batch_time: float = 0.002) -> None:
        self.store, self.job = store, job
        self.batch_blocks, self.batch_time = batch_blocks, batch_time
        self.index = MemoryBackend("memory://baash-index", private=True)  # what reads are served from
        self.wire: list[str] = []  # block by height, as the JSON text the `blocks` answer carries
        self.pending: deque[Request] = deque()
        self.active: list[Request] = []
        self.cond = threading.Condition()
        self.stats = {"rounds": 0, "blocks": 0, "storage_rounds": 0, "storage_blocks": 0, "requeued": 0}
        self.decided_by: dict[str, int] = {}  # blocks decided by quorum, extended quorum, storage
        self.seconds: dict[str, float] = {}  # time per phase of the job's rounds, summed
        self._stopping = False
        self._round_id = 0
        self.resync()
        self.thread = threading.Thread(target=self._run, name="baash-manager", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self.thread.ident is not None:  # started (a service stopped while its job started was not)
            self.thread.join(timeout=10)

    def resync(self) -> int:
        """Bring the read index up to what shared storage holds (after a crash mid-commit)."""
        head = self.index.head()
        start = 0 if head is None else head.height + 1
        added = 0
        for block in self.store.load(start):
            self._index([block])
            added += 1
        return added

    def _index(self, blocks: list[StoredBlock]) -> None:
        """Make committed blocks readable; their wire form is encoded once, here, not per read."""
        self.index.append(blocks)
        self.wire.extend(json.dumps(block_to_wire(b), separators=(",", ":")) for b in blocks)

    def submit(self, blocks: list[StoredBlock], timeout: float | None = None) -> tuple[str, str]:
        request = Request(blocks)
        with self.cond:
            self.pending.append(request)
            self.cond.notify_all()
        if not request.done.wait(timeout):
            return ("unavailable", "the service did not decide in time; the append may still commit")
        return request.outcome

    # -- the loop ---------------------------------------------------------------------------
    def _take(self) -> list[Request]:
        with self.cond:
            while not self.pending and not self._stopping:
                self.cond.wait()
            if self._stopping:
                return []
            deadline = time.monotonic() + self.batch_time
            while sum(len(r.blocks) for r in self.pending) < self.batch_blocks:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            taken: list[Request] = []
            count = 0
            while self.pending and (not taken or count + len(self.pending[0].blocks) <= self.batch_blocks):
                request = self.pending.popleft()
                taken.append(request)
                count += len(request.blocks)
            return taken

    def _run(self) -> None:
        while True:
            requests = self._take()
            if not requests:
                return
            try:
                self._round(requests)
            except Exception as err:  # noqa: BLE001 - the front door must keep answering
                log.exception("baash: round failed")
                # The round may have reached storage before it failed: read it back, or every
                # later append would be checked against a head storage has left behind.
                with contextlib.suppress(Exception):
                    self.resync()
                for request in requests:
                    if not request.done.is_set():
                        request.finish("unavailable", f"internal error: {err}")

    def _precheck(self, requests: list[Request]) -> tuple[list[StoredBlock], list[tuple[int, int]], list[Request]]:
        head = self.index.head()
        next_height = committed_next = 0 if head is None else head.height + 1
        locked: set[str] = set()
        blocks: list[StoredBlock] = []
        groups: list[tuple[int, int]] = []
        members: list[Request] = []
        for request in requests:
            fresh: list[StoredBlock] = []
            problem = ""
            for block in request.blocks:
                if block.height < committed_next and not fresh:
                    stored = next(iter(self.index.blocks(block.height, block.height + 1)), None)
                    if stored is not None and stored.id == block.id:
                        continue  # already committed: an idempotent re-append
                    problem = f"height {block.height} is taken by another block"
                    break
                if committed_next <= block.height < next_height and not fresh:
                    problem = f"height {block.height} is taken by a block of another append in this round"
                    break
                if block.height != next_height + len(fresh):
                    problem = f"block {block.height} does not follow the head (next height {next_height + len(fresh)})"
                    break
                fresh.append(block)
            ids = [r.id for b in fresh for r in b.records]
            if not problem and (len(set(ids)) != len(ids) or locked.intersection(ids) or self.index.known(ids)):
                problem = "a record of this append is already stored"
            if problem:
                request.finish("conflict", problem)
            elif not fresh:
                request.finish("committed")
            else:
                locked.update(ids)
                groups.append((len(blocks), len(blocks) + len(fresh)))
                blocks.extend(fresh)
                members.append(request)
                next_height += len(fresh)
        return blocks, groups, members

    def _storage_settled(self) -> bool:
        """Wait until the failed job's ranks are gone, then read what they persisted.

        A gateway killed mid-round may still write the round's blocks to storage after the
        manager saw it die. True when storage held nothing new, so a precheck made before
        still holds; False when it did, and the round must be prechecked again.
        """
        if not self.job.wait_storage_free(60.0):
            log.warning("baash: the failed MPI job's ranks did not stop within 60 s; reading storage anyway")
        return self.resync() == 0

    def _requeue(self, members: list[Request]) -> None:
        with self.cond:
            self.pending.extendleft(reversed(members))
            self.stats["requeued"] += len(members)

    def _round(self, requests: list[Request]) -> None:
        blocks, groups, members = self._precheck(requests)
        if not members:
            return
        self._round_id += 1
        self.active = members
        try:
            outcomes = None
            if not self.job.up:
                # A job starting meanwhile may restore without these blocks; its gateway
                # catches up from storage before its first round.
                if not self._storage_settled():
                    self._requeue(members)
                    return
                outcomes = self._storage_round(blocks, groups)
            if outcomes is None:
                try:
                    sent = time.perf_counter()
                    outcomes, info = self.job.run_round(self._round_id, blocks, groups)
                    self.stats["rounds"] += 1
                    for phase, seconds in {**info["timing"], "round_trip": time.perf_counter() - sent}.items():
                        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
                    for how, count in info["ways"].items():  # quorum / extended / storage
                        self.decided_by[how] = self.decided_by.get(how, 0) + count
                except JobDown:
                    # Storage may hold part of the round already; precheck again from it.
                    self._storage_settled()
                    self._requeue(members)
                    return
            committed = 0
            for (_start, end), (status, _message) in zip(groups, outcomes, strict=True):
                if status == "committed":
                    committed = end
            self._index(blocks[:committed])
            self.stats["blocks"] += committed
            for request, (status, message) in zip(members, outcomes, strict=True):
                request.finish(status, message)
        finally:
            self.active = []

    def _storage_round(self, blocks: list[StoredBlock], groups: list[tuple[int, int]]) -> list[tuple[str, str]]:
        """The job is down: shared storage validates (Protocol 2, line 11) and stores."""
        self.resync()
        self.store.refresh()
        base = self.store.height
        prev = self.store.ids[-1] if self.store.ids else None
        outcomes: list[tuple[str, str]] = []
        count = 0
        seen: set[str] = set()
        for start, end in groups:
            if count != start:
                outcomes.append(("conflict", "built on a block that was refused in the same round"))
                continue
            verdicts = []
            for i in range(start, end):
                verdicts.append(check_block(blocks[i], base + i, blocks[i - 1].id if i else prev,
                                            self.index.known(r.id for r in blocks[i].records), seen))
                seen.update(r.id for r in blocks[i].records)
            bad = [v for v in verdicts if not v.valid]
            if bad:
                outcomes.append(("rejected", bad[0].reason))
                continue
            count = end
            outcomes.append(("committed", ""))
        try:
            self.store.commit(blocks[:count])
        except OSError as exc:  # a full or read-only disk: nothing committed, the recorders keep it
            log.warning("baash: %s", self.store.refusal(exc))
            return [("unavailable", self.store.refusal(exc)) if status == "committed" else (status, message)
                    for status, message in outcomes]
        self.stats["storage_rounds"] += 1
        self.stats["storage_blocks"] += count
        return outcomes
