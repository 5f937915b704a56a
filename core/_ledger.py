"""The ledger: the chain logic on top of any back-end, and the lineage queries.

:func:`open_ledger` picks the back-end by URL, and replays records a crashed process
left in the spool. Appends build blocks on the current head and retry on
:class:`AppendConflict`, which is how concurrent writers interleave without a lock
server. Query results are re-checked against the record bytes, so a tampered index can
hide a record but never make the ledger claim something a record does not say.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from blake3 import blake3

from ._chain import (
    ChainSummary,
    ChainTip,
    ChainVerifier,
    _verify_columns,
    build_block,
    columns_of,
    verify_chain,
)
from ._errors import AppendConflict, BackendError, ChainBroken, LedgerError, RecordTampered
from ._model import Record, StoredBlock, StoredRecord
from ._spool import describe_quarantine, spool_directory, spool_path, take_orphans

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend, ChainHead, Located

__all__ = ["DEFAULT_URL", "Ledger", "LedgerRecord", "LineageNode", "open_ledger"]

DEFAULT_URL = ".lineage/ledger.db"
DEFAULT_SPOOL = ".lineage/spool"
_DECODE_CACHE = 50_000
_STEADY_READS = 20  # reads of the chain before concurrent appends count as a failure
log = logging.getLogger("lineage_ledger")


@dataclass(frozen=True)
class LedgerRecord:
    """A record read back from the ledger, with its id and place."""

    id: str
    record: Record
    height: int
    position: int

    @property
    def order(self) -> tuple[int, int]:
        return (self.height, self.position)


@dataclass
class LineageNode:
    """One file version in a lineage tree.

    ``kind`` is ``produced`` (a record output it), ``source`` (no record ever output the
    path), or ``broken`` (records output the path, but none with this digest: the file
    changed between being produced and being consumed).
    """

    path: str
    digest: str | None
    kind: str
    producer: LedgerRecord | None = None
    parents: list[LineageNode] = field(default_factory=list)


_T = TypeVar("_T")

class Ledger:
    def __init__(self, backend: Backend, *, spool_root: str = DEFAULT_SPOOL) -> None:
        self.backend = backend
        self.url: str = backend.url
        self._spool_root = spool_root
        # Decoded records by id. An entry exists only for bytes that hashed to the id,
        # so a hit is as good as a fresh decode. Bounded; cleared when full.
        self._decoded: dict[str, Record] = {}
        self._decode_limit: int | None = _DECODE_CACHE
        # verified_view(): the view, its verifier, and the (height, id) it ends on.
        self._verified: tuple[Ledger, ChainVerifier, tuple[int, str]] | None = None
        self._verified_lock = threading.Lock()

    @functools.cached_property
    def spool_dir(self) -> str:
        """Created on first use, so a ledger that is only read leaves no directory behind."""
        return spool_directory(self._spool_root, self.backend.identity)

    # -- writing ------------------------------------------------------------------------
    def append_records(self, records: Sequence[StoredRecord], *, block_size: int = 1000) -> int:
        """Append records not yet in the ledger as blocks; returns how many were new."""
        unique = list({r.id: r for r in records}.values())
        for attempt in range(200):
            known = self.backend.known(r.id for r in unique)
            fresh = [r for r in unique if r.id not in known]
            if not fresh:
                return 0
            prev: ChainTip | None = self.backend.head()
            blocks: list[StoredBlock] = []
            for start in range(0, len(fresh), block_size):
                block = build_block(fresh[start : start + block_size], prev)
                blocks.append(block.stored())
                prev = block.header
            try:
                self.backend.append(blocks)
                return len(fresh)
            except AppendConflict:
                # Another writer took the head; rebuild on theirs after a short random pause.
                time.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))
        raise AppendConflict(f"{self.url}: gave up after 200 conflicting appends")

    def record(self, record: Record) -> str:
        """Append one record synchronously (no spool); for scripts and tests."""
        stored = record.stored()
        self.append_records([stored])
        return stored.id

    def recorder(self, **options: Any):
        from ._recorder import Recorder

        return Recorder(self, **options)

    def replay_spool(self) -> int:
        """Ship what crashed processes left in the spool; raise if damaged lines were set aside."""
        if not os.path.isdir(spool_path(self._spool_root, self.backend.identity)):
            return 0  # nothing was ever spooled here; do not create directories to find out
        segments, quarantined = take_orphans(self.spool_dir)
        shipped = 0
        try:
            for segment in segments:
                if len(segment):
                    shipped += self.append_records(segment.stored())
                segment.delete()
        finally:
            for segment in segments:
                if os.path.exists(segment.path):
                    os.close(segment.fd)
        if shipped:
            log.info("lineage-ledger: replayed %d records from %s", shipped, self.spool_dir)
        if quarantined:
            raise describe_quarantine(quarantined)
        return shipped

    # -- reading ------------------------------------------------------------------------
    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        return self.backend.blocks(start, stop)

    def verify_chain(self) -> ChainSummary:
        # Back-ends written before block_columns existed may not derive from Backend.
        columns = getattr(self.backend, "block_columns", None)
        if columns is not None:
            return self._read_steady(lambda: _verify_columns(columns()))
        return self._read_steady(lambda: verify_chain(self.backend.blocks()))

    def _read_steady(self, read: Callable[[], ChainSummary]) -> ChainSummary:
        """Run ``read`` (which verifies the blocks) and check it against the stored totals.

        The blocks, the head and the record count come from separate queries. An append
        by another writer (or this process's own recorder) between them would look like a
        missing block or a record outside the chain, so the whole read is repeated until
        the head is the same before and after it. Appends are atomic and only add blocks,
        so an unchanged head means the three reads saw one state of the store.
        """
        summary, head, stored = self._steady(read)
        self._check_totals(summary, head, stored)
        return summary

    def _steady(self, read: Callable[[], _T]) -> tuple[_T, ChainHead | None, int]:
        """``read()``, the head and the record count, from one state of the store (see
        :meth:`_read_steady`)."""
        for _ in range(_STEADY_READS):
            before = self.backend.head()
            value = read()
            stored = self.backend.record_count()
            if self.backend.head() == before:
                return value, before, stored
        raise BackendError(
            f"{self.url}: the ledger kept growing during {_STEADY_READS} reads of the chain; "
            "verify again when the writers are quieter"
        )

    def _check_totals(self, summary: ChainSummary, head: ChainHead | None, stored: int) -> None:
        """The chain must end at the stored head and hold every stored record."""
        if (head is None and summary.blocks) or (head is not None and head.id != summary.head):
            height = summary.blocks
            raise ChainBroken(f"block {height} is missing: the chain stops before the stored head", height=height)
        if stored != summary.records:
            raise ChainBroken(
                f"{stored} records are stored but the blocks hold {summary.records}: "
                "records were added or removed outside the chain",
                height=None,
            )

    def snapshot(self) -> tuple[Ledger, ChainSummary]:
        """Read and verify the whole chain once; return an in-memory, indexed ledger of
        exactly the verified blocks, and the verification summary.

        Queries on the snapshot are dictionary look-ups, and they answer from the same
        bytes that were verified, so nothing can change in the store between the two.
        """
        from lineage_ledger.backends.memory import MemoryBackend

        read: list[StoredBlock] = []

        def keep(blocks: Iterator[StoredBlock]) -> Iterator[StoredBlock]:
            for block in blocks:
                read.append(block)
                yield block

        def verify_and_keep() -> ChainSummary:
            read.clear()
            return verify_chain(keep(self.backend.blocks()))

        summary = self._read_steady(verify_and_keep)
        view = Ledger(MemoryBackend(f"snapshot+{self.url}", private=True), spool_root=self._spool_root)
        view._decode_limit = None  # everything is in memory already; keep every decode
        _add_verified(view, read)
        return view, summary

    def verified_view(self) -> Ledger:
        """The view of :meth:`snapshot`, kept up to date for repeated pre-run checks.

        The first call reads and verifies the whole chain. A later call reads and verifies
        only the blocks appended since, after checking that the block the last call ended
        on is still stored with the same id: an edit below it that keeps the chain valid
        must rewrite it. (An edit that breaks the chain is for ``verify-lineage``, which
        always reads everything; this view keeps answering from the bytes it verified.)
        Any failure raises and forgets the view, so the next call starts again.
        """
        with self._verified_lock:  # plugins check from several threads
            return self._verified_view()

    def _verified_view(self) -> Ledger:
        from lineage_ledger.backends.memory import MemoryBackend

        kept = self._verified
        if kept is not None:
            view, verifier, tip = kept
            head = self.backend.head()
            if head is not None and (head.height, head.id) == tip:
                return view
            ended_on = list(self.backend.blocks(tip[0], tip[0] + 1))  # (read to the end: closes the query)
            if not ended_on or ended_on[0].id != tip[1]:
                kept = None  # the chain below changed: verify it all again
        if kept is None:
            view = Ledger(MemoryBackend(f"verified+{self.url}", private=True), spool_root=self._spool_root)
            view._decode_limit = None
            verifier, tip = ChainVerifier(), (-1, "")
        self._verified = None
        fresh, head, stored = self._steady(lambda: list(self.backend.blocks(tip[0] + 1)))
        verifier.feed(columns_of(fresh))
        self._check_totals(verifier.summary(), head, stored)
        _add_verified(view, fresh)
        if head is not None:
            self._verified = (view, verifier, (head.height, head.id))
        return view

    def _decode(self, located: Located) -> LedgerRecord:
        stored = located.record
        cached = self._decoded.get(stored.id)
        if cached is not None:
            return LedgerRecord(stored.id, cached, located.height, located.position)
        if blake3(stored.body).hexdigest() != stored.id:
            raise RecordTampered(
                f"record {stored.id[:16]} in block {located.height} does not hash to its id",
                height=located.height,
            )
        try:
            record = Record.decode(stored.body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RecordTampered(f"record {stored.id[:16]} is unreadable: {exc}", height=located.height) from exc
        if self._decode_limit is not None and len(self._decoded) >= self._decode_limit:
            self._decoded.clear()
        self._decoded[stored.id] = record
        return LedgerRecord(stored.id, record, located.height, located.position)

    def get(self, id_or_prefix: str) -> LedgerRecord:
        prefix = id_or_prefix.strip().lower()
        if len(prefix) < 4:
            raise LedgerError("give at least 4 hex digits of a record id")
        matches = self.backend.by_id_prefix(prefix, limit=2)
        if not matches:
            raise LedgerError(f"no record with id {id_or_prefix!r}")
        if len(matches) > 1:
            raise LedgerError(f"id prefix {id_or_prefix!r} is ambiguous; give more digits")
        return self._decode(matches[0])

    def _find(self, role: Literal["in", "out"], path: str | None, digest: str | None) -> list[LedgerRecord]:
        found = []
        for located in self.backend.find(role, path=path, digest=digest):
            entry = self._decode(located)
            side = entry.record.inputs if role == "in" else entry.record.outputs
            if any(
                (path is None or p == path) and (digest is None or e["blake3"] == digest)
                for p, e in side.items()
            ):
                found.append(entry)
        return found

    def producers(self, path: str | None = None, digest: str | None = None) -> list[LedgerRecord]:
        """Records that output ``path`` (and/or ``digest``), oldest first."""
        return self._find("out", path, digest)

    def consumers(self, path: str | None = None, digest: str | None = None) -> list[LedgerRecord]:
        """Records that read ``path`` (and/or ``digest``), oldest first."""
        return self._find("in", path, digest)

    def producer(self, path: str | None = None, digest: str | None = None) -> LedgerRecord | None:
        found = self.producers(path, digest)
        return found[-1] if found else None

    def last_seen(
        self, path: str, roles: tuple[Literal["in", "out"], ...] = ("out", "in")
    ) -> tuple[LedgerRecord, str, Mapping[str, Any]] | None:
        """The latest record that read or wrote ``path``: (record, role, entry).

        "Latest" is by the time the task ended, then by ledger order: a crashed process's
        spool replayed days later lands late in the ledger but must not count as newer.
        Decodes come from the ledger's cache, so a source read by thousands of tasks is
        cheap on a snapshot.
        """
        best: tuple[Any, ...] | None = None
        for role in roles:
            for located in self.backend.find(role, path=path):
                entry = self._decode(located)
                side = entry.record.outputs if role == "out" else entry.record.inputs
                if path not in side:  # the index claimed a record that does not name the path
                    continue
                key = (entry.record.ended, entry.order, role == "out")
                if best is None or key > best[0]:
                    best = (key, entry, role, side[path])
        return None if best is None else (best[1], best[2], best[3])

    def run(self, run_id: str) -> list[LedgerRecord]:
        return [self._decode(located) for located in self.backend.by_run(run_id)]

    def recent(self, limit: int) -> list[LedgerRecord]:
        """The newest ``limit`` records, oldest first, reading only the last blocks."""
        from lineage_ledger.backends import Located

        head = self.backend.head()
        entries: list[LedgerRecord] = []
        stop = 0 if head is None else head.height + 1
        while stop > 0 and len(entries) < limit:
            start = max(0, stop - 8)
            chunk = [
                self._decode(Located(block.height, position, record))
                for block in self.backend.blocks(start, stop)
                for position, record in enumerate(block.records)
            ]
            entries, stop = chunk + entries, start
        return entries[-limit:] if limit else entries

    # -- lineage ------------------------------------------------------------------------
    def lineage(self, path: str, digest: str | None = None) -> LineageNode:
        """The tree of file versions ``path`` was derived from, back to the sources."""
        memo: dict[tuple[str, str | None], LineageNode] = {}
        return self._lineage(path, digest, None, memo)

    def _lineage(self, path, digest, consumer, memo) -> LineageNode:
        key = (path, digest)
        if key in memo:
            return memo[key]
        if digest is None:
            producer = self.producer(path)
            if producer is None:
                node = LineageNode(path, None, "source")
                memo[key] = node
                return node
            digest = producer.record.outputs[path]["blake3"]
        else:
            candidates = self.producers(path, digest)
            if consumer is not None:  # prefer the version made before it was consumed
                earlier = [c for c in candidates if c.order < consumer.order]
                candidates = earlier or candidates
            producer = candidates[-1] if candidates else None
            if producer is None:
                kind = "broken" if self.producers(path) else "source"
                node = LineageNode(path, digest, kind)
                memo[key] = node
                return node
        node = LineageNode(path, digest, "produced", producer)
        memo[key] = node
        memo[(path, None)] = memo.get((path, None), node)
        for input_path, entry in sorted(producer.record.inputs.items()):
            node.parents.append(self._lineage(input_path, entry["blake3"], producer, memo))
        return node

    def derived(self, path: str, digest: str | None = None, _seen: set | None = None) -> list[tuple[LedgerRecord, list]]:
        """What was derived from ``path``: [(consumer record, [(its outputs' subtrees)...])]."""
        seen = set() if _seen is None else _seen
        tree = []
        for consumer in self.consumers(path, digest):
            if consumer.id in seen:
                continue
            seen.add(consumer.id)
            children = [
                (out_path, self.derived(out_path, entry["blake3"], seen))
                for out_path, entry in sorted(consumer.record.outputs.items())
            ]
            tree.append((consumer, children))
        return tree

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_ledger(url: str | None = None, *, spool: str | None = None, replay: bool = True) -> Ledger:
    """Open the ledger at ``url`` (default ``$LINEAGE_LEDGER_URL`` or ``.lineage/ledger.db``).

    Records that a crashed process left in the spool are shipped first; if any lines were
    damaged, :class:`SpoolCorrupt` is raised after the good ones are in the ledger.
    """
    from lineage_ledger.backends import open_backend

    if url is None:
        url = os.environ.get("LINEAGE_LEDGER_URL", DEFAULT_URL)
    spool_root = spool or os.environ.get("LINEAGE_SPOOL") or DEFAULT_SPOOL
    backend = open_backend(url)
    ledger = Ledger(backend, spool_root=spool_root)
    if replay:
        try:
            ledger.replay_spool()
        except BaseException:
            ledger.close()
            raise
    return ledger


def _add_verified(view: Ledger, blocks: Iterable[StoredBlock]) -> None:
    """Put verified blocks in ``view``'s memory store, keyed with the index fields (inputs,
    outputs, run) that a SQL store does not return with the blocks."""
    for block in blocks:
        records = []
        for position, stored in enumerate(block.records):
            try:
                record = Record.decode(stored.body)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RecordTampered(
                    f"block {block.height}: record {position} ({stored.id[:16]}) is not a readable "
                    f"record: {exc}",
                    height=block.height,
                ) from exc
            view._decoded[stored.id] = record
            records.append(record.stored(stored.body, stored.id))
        view.backend.append([StoredBlock(block.height, block.id, block.header, tuple(records))])
