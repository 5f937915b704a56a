"""The ledger: the chain logic on top of any back-end, and the lineage queries.

:func:`open_ledger` picks the back-end by URL, and replays records a crashed process
left in the spool. Appends build blocks on the current head and retry on
:class:`AppendConflict`, which is how concurrent writers interleave without a lock
server. Every answer is proved before it is given (``_verified``): the index row names a
record, the record's bytes hash to its id, and the id is the leaf the verified tree holds
at that place; a row that disagrees with its record raises :class:`IndexTampered`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .._canonical import format_time
from .._errors import AppendConflict, IndexTampered, LedgerError, RecordTampered
from .._files.hashing import lookup_paths
from .._files.manifest import Manifest
from .._log.chain import ChainSummary, ChainTip, build_block
from .._log.trust import TreeHead, TrustStore
from .._log.verified import AuditResult, Verifier
from .._model import Record, StoredBlock, StoredRecord
from .complete import Listing, StaleNames, check_latest, check_listing, listing, named_by_a_verified_record
from .lineage import LedgerRecord, LineageNode, LineageQueries, RecordBits
from .spool import describe_quarantine, spool_directory, spool_path, take_orphans

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend, Located

__all__ = ["DEFAULT_URL", "Ledger", "LedgerRecord", "LineageNode", "open_ledger"]

DEFAULT_URL = ".lineage/ledger.db"
DEFAULT_SPOOL = ".lineage/spool"
_DECODE_CACHE = 10_000  # decoded records kept (about 5 KiB each: 50,000 held 250 MiB in `depends --all`)
log = logging.getLogger("lineage_ledger")


@dataclass
class LookAhead:
    """Index rows read ahead for many paths (:meth:`Ledger.looking_ahead`): by (role, path),
    the latest record (None: none) and the producers; and each path's key."""

    latest: dict[tuple[str, str], tuple[Located, str] | None] = field(default_factory=dict)
    places: dict[tuple[str, str], list[Located]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    bound: int = 0  # the verified tree's size before the rows were read (see Ledger._bound)
    names: dict[str, list] = field(default_factory=dict)  # each key's names (complete.py), read with the rows


class Ledger(LineageQueries):
    def __init__(self, backend: Backend, *, spool_root: str = DEFAULT_SPOOL, state_dir: str | None = None) -> None:
        self.backend = backend
        self.url: str = backend.url
        self._spool_root = spool_root
        # Decoded records by id. An entry exists only for bytes that hashed to the id and
        # were proved in the tree, so a hit is as good as a fresh check. Bounded.
        self._decoded: dict[str, Record] = {}
        self._placed: dict[str, tuple[tuple[int, int], Verifier]] = {}  # id -> place proved, by whom
        self._state_dir = state_dir
        self._private_state: str | None = None
        self._verifier: Verifier | None = None
        self._head_current = False  # the verified head was brought up to date in this process
        self._verified_lock = threading.RLock()  # plugins check from several threads
        self._manifests: dict[str, Manifest] = {}  # proved and hashed: a hit needs no new check
        self._batch = threading.local()  # index rows fetched ahead for one thread's many files

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
        from .recorder import Recorder

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

    # -- verification ---------------------------------------------------------------------
    @property
    def verifier(self) -> Verifier:
        """The trusted tree head of this ledger for this user, and the checks against it."""
        with self._verified_lock:
            if self._verifier is None:
                self._verifier = Verifier(self.backend, self._trust_store())
            return self._verifier

    def _trust_store(self) -> TrustStore:
        identity = self.backend.identity
        origin = getattr(self.backend, "origin", identity)
        if self.backend.shared_between_processes:
            return TrustStore(identity, origin, self._state_dir)
        # A store of this process only (memory://): its tree lives and dies with the process.
        self._private_state = tempfile.mkdtemp(prefix="lineage-trust-")
        # Removed with the ledger object too, for callers that never close it.
        weakref.finalize(self, shutil.rmtree, self._private_state, True)
        return TrustStore(identity, origin, self._private_state)

    def tree_head(self) -> TreeHead:
        """The verified tree head, brought up to the stored head (only new blocks are read)."""
        verifier = self.verifier
        with self._verified_lock:
            head = verifier.refresh()
            self._head_current = True
            return head

    def audit(self, *, files: bool = False) -> AuditResult:
        """Read and verify the whole ledger, index included, in bounded memory."""
        verifier = self.verifier
        with self._verified_lock:
            return verifier.audit(files=files)

    def verify_chain(self) -> ChainSummary:
        return self.audit().summary

    # -- reading (every answer proved against the verified tree) ----------------------------
    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        """Stored blocks as the back-end returns them, unverified (see :meth:`audit`)."""
        return self.backend.blocks(start, stop)

    def _proved(self, located: Located) -> LedgerRecord | None:
        """The record an index row names, once its bytes and place are proved; None for a
        row appended after the verified head."""
        stored = located.record
        record = self._decoded.get(stored.id)
        # A record decoded before was proved from its bytes then: the answer comes from those,
        # so only the row's place is proved again (a record naming 10,000 outputs is not
        # hashed once per output), and not even that where this very place was proved in
        # this verifier's tree, which only ever grows (a look-up per output, twice).
        verifier = self.verifier
        place = (located.height, located.position)
        if record is None or self._placed.get(stored.id) != (place, verifier):
            if verifier.check(located, hash_body=record is None) is None:
                return None
            if len(self._placed) >= _DECODE_CACHE:
                self._placed.clear()
            self._placed[stored.id] = (place, verifier)
        if record is None:
            try:
                record = Record.decode(stored.body)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RecordTampered(f"record {stored.id[:16]} is unreadable: {exc}",
                                     height=located.height) from exc
            if len(self._decoded) >= _DECODE_CACHE:
                self._decoded.clear()
            self._decoded[stored.id] = record
        return LedgerRecord(stored.id, record, located.height, located.position)

    def _with_bodies(self, rows: Iterable[Located]) -> list[Located]:
        """Rows a back-end returned without bodies (``find_places``), with the bodies of the
        records not proved before fetched in one call; the others are answered from the
        bytes proved then."""
        rows = list(rows)
        missing = {r.record.id for r in rows if not r.record.body and r.record.id not in self._decoded}
        if not missing:
            return rows
        bodies = self.backend.bodies(sorted(missing))
        filled = []
        for row in rows:
            body = bodies.get(row.record.id) if row.record.id in missing else None
            if body is not None:
                row = type(row)(row.height, row.position, StoredRecord(row.record.id, body))
            filled.append(row)
        return filled

    def _proved_all(self, rows: Iterable[Located]) -> list[LedgerRecord]:
        # The head is brought up to date once (then by tree_head(), which the pre-run checks
        # call each time); a row past it makes Verifier.check look again.
        if not self._head_current:
            self.tree_head()
        return [entry for entry in map(self._proved, rows) if entry is not None]

    def get(self, id_or_prefix: str) -> LedgerRecord:
        prefix = id_or_prefix.strip().lower()
        if len(prefix) < 4:
            raise LedgerError("give at least 4 hex digits of a record id")
        matches = self._proved_all(self.backend.by_id_prefix(prefix, limit=2))
        for entry in matches:
            if not entry.id.startswith(prefix):
                raise IndexTampered(f"the index answers record {entry.id[:16]} for the prefix {prefix!r}")
        if not matches:
            raise LedgerError(f"no record with id {id_or_prefix!r}")
        if len(matches) > 1:
            raise LedgerError(f"id prefix {id_or_prefix!r} is ambiguous; give more digits")
        return matches[0]

    def _find(self, role: Literal["in", "out"], path: str | None, digest: str | None,
              rows: Iterable[Located] | None = None) -> list[LedgerRecord]:
        if rows is not None or path is None:  # one row, a page, or by digest: no list to complete
            return self._matching(role, path, digest, self._proved_all(self._with_bodies(rows if rows is not None
                                  else self.backend.find_places(role, path=None, digest=digest))))
        for final in (False, True):
            rows, bound = None, 0
            batch: LookAhead | None = None if final else getattr(self._batch, "current", None)
            if batch is not None:
                rows, bound = batch.places.get((role, path)), batch.bound
            if rows is None:
                bound = self._bound(refresh=final)
                # The digest is matched against the proved record, not the index: an edited
                # digest column can then change no answer (the audit reports it).
                rows = self.backend.find_places(role, path=path)
            found = self._proved_all(self._with_bodies(rows))
            matching = self._matching(role, path, digest, found)
            try:
                check_listing(self, role, path, found, bound, final=final)
            except StaleNames:
                continue  # names kept past the bound: look again from a head read now
            return matching
        raise AssertionError("unreachable: the final look is never stale")

    def _matching(self, role: Literal["in", "out"], path: str | None, digest: str | None,
                  found: list[LedgerRecord]) -> list[LedgerRecord]:
        """The proved records that name ``path`` (and/or ``digest``) in ``role``; a record the
        index listed that does not raises :class:`IndexTampered`."""
        matching = []
        for entry in found:
            side = entry.record.inputs if role == "in" else entry.record.outputs
            if path is not None:
                named = side.get(path)
                agrees = named is not None
                if named is not None and (digest is None or named["blake3"] == digest):
                    matching.append(entry)
            else:
                agrees = any(e["blake3"] == digest for e in side.values())
                if agrees:
                    matching.append(entry)
            if not agrees:
                verb = "reading" if role == "in" else "writing"
                raise IndexTampered(
                    f"the index lists record {entry.id[:16]} (block {entry.height}) as {verb} "
                    f"{path if path is not None else digest}, but the record does not say so",
                    height=entry.height, path=path,
                )
        return matching

    def _bound(self, *, refresh: bool = False) -> int:
        """The verified tree's size, brought up to date, read before an index query: each
        record below it was stored before the query, so the index must name it where it
        names the path; one verified after (appended meanwhile) need not be in the answer."""
        if refresh or not self._head_current:
            self.tree_head()
        head = self.verifier.store.head
        return head.size if head is not None else 0

    def query_path(self, path: str) -> str:
        """The key the ledger knows ``path`` by, normalised as the CLI does: made absolute
        (relative to the working directory); where symbolic links make its real path
        differ, the spelling some record names (the path as given, else the real one)."""
        batch: LookAhead | None = getattr(self._batch, "current", None)
        if batch is not None and path in batch.keys:
            return batch.keys[path]
        keys = lookup_paths(path)
        key = keys[0]
        if len(keys) > 1:
            for candidate in keys:
                if (named_by_a_verified_record(self, candidate)
                        or self.backend.find_page("out", path=candidate, limit=1)
                        or self.backend.find_page("in", path=candidate, limit=1)):
                    key = candidate
                    break
        if batch is not None:
            batch.keys[path] = batch.keys[key] = key
        return key

    @contextlib.contextmanager
    def looking_ahead(self, paths: Sequence[str]) -> Iterator[None]:
        """Within the block, this thread's look-ups of ``paths`` (the last record to read
        and to write each, and each one's producers) are answered from index rows read for
        all of them at once, a few statements for thousands of files instead of three
        each. Only the index rows are read ahead: every record an answer uses is proved
        as before, and each path's key (symbolic links resolved) is worked out once."""
        batch = LookAhead()
        previous = getattr(self._batch, "current", None)
        self._batch.current = batch
        try:
            keys = list(dict.fromkeys(self.query_path(p) for p in paths))
            batch.bound = self._bound()
            batch.names = self.verifier.store.names_many(keys) or {}
            backend = self.backend
            for role in ("out", "in"):
                found = backend.find_latest_many(role, keys)
                batch.latest.update({(role, k): found.get(k) for k in keys})
            places = backend.find_places_many("out", keys)
            batch.places.update({("out", k): places.get(k, []) for k in keys})
            yield
        finally:
            self._batch.current = previous

    def record_bits(self) -> RecordBits:
        """An empty set of proved records (of this ledger's verified tree), a bit each."""
        return RecordBits(self.verifier.store.block_start)

    @contextlib.contextmanager
    def consumers_ahead(self, keys: Sequence[str]) -> Iterator[None]:
        """Within the block, this thread's :meth:`consumers` of ``keys`` (keys as records
        name them, not resolved again) are answered from their index rows, read for all of
        them in a few statements: what `depends --all` asks of each page's outputs. Every
        record an answer uses is proved as before."""
        batch = LookAhead()
        previous = getattr(self._batch, "current", None)
        self._batch.current = batch
        try:
            unique = list(dict.fromkeys(keys))
            batch.bound = self._bound()
            readers = self.backend.find_places_many("in", unique)
            batch.places.update({("in", k): readers.get(k, []) for k in unique})
            yield
        finally:
            self._batch.current = previous

    def _query(self, path: str | None) -> str | None:
        return None if path is None else self.query_path(path)

    def producers(self, path: str | None = None, digest: str | None = None) -> list[LedgerRecord]:
        """Records that output ``path`` (and/or ``digest``), oldest first."""
        return self._find("out", self._query(path), digest)

    def consumers(self, path: str | None = None, digest: str | None = None, *,
                  offset: int = 0, limit: int | None = None, as_key: bool = False) -> list[LedgerRecord]:
        """Records that read ``path`` (and/or ``digest``), oldest first; a page of them with
        ``offset``/``limit`` (a file every task read has as many consumers as tasks).
        ``as_key``: ``path`` is a key already (as :meth:`query_path` gives it, or as a record
        names it), not to be resolved on disk again."""
        path = path if as_key else self._query(path)
        if offset or limit is not None:
            # A first page shorter than asked is the whole list: counted against the names
            # kept, as a whole list is (a row deleted from it is noticed).
            counted = self.listing("in", path) if not offset and digest is None and path is not None else None
            rows = self.backend.find_page("in", path=path, digest=digest, offset=offset, limit=limit)
            found = self._find("in", path, digest, rows)
            if counted is not None and limit is not None and len(found) < limit:
                counted.add(found)
                counted.finish()
            return found
        return self._find("in", path, digest)

    def listing(self, role: Literal["in", "out", "run"], path: str) -> Listing | None:
        """A count of the records naming ``path`` in ``role`` that a caller then lists page
        by page: :meth:`Listing.add` each page's records, :meth:`Listing.finish` at the end
        raises :class:`IndexTampered` where the index left any out. None where the verified
        tree keeps no names."""
        return listing(self, role, path)

    def has_consumers(self, path: str) -> bool:
        """Whether the index names any record that read ``path`` (one step down its index,
        where counting them all is a scan of a million rows for a file every task read)."""
        return bool(self.backend.find_page("in", path=self._query(path), limit=1))

    def count_consumers(self, path: str | None = None, digest: str | None = None, *,
                        at_most: int | None = None, as_key: bool = False) -> int:
        """How many records the index says read ``path`` (a count, not a verified answer),
        counting no further than ``at_most``."""
        key = path if as_key else self._query(path)
        if at_most is None:
            return self.backend.count_found("in", path=key, digest=digest)
        return self.backend.count_found("in", path=key, digest=digest, at_most=at_most)

    def producer(self, path: str | None = None, digest: str | None = None) -> LedgerRecord | None:
        found = self.producers(path, digest)
        return found[-1] if found else None

    def last_seen(
        self, path: str, roles: tuple[Literal["in", "out"], ...] = ("out", "in")
    ) -> tuple[LedgerRecord, str, Mapping[str, Any]] | None:
        """The latest record that read or wrote ``path``: (record, role, entry).

        "Latest" is by the time the task ended, then by ledger order: a crashed process's
        spool replayed days later lands late in the ledger but must not count as newer.
        """
        path = self.query_path(path)
        best: tuple[Any, ...] | None = None
        for role in roles:
            for entry in self._latest(role, path):
                side = entry.record.outputs if role == "out" else entry.record.inputs
                key = (entry.record.ended, entry.order, role == "out")
                if best is None or key > best[0]:
                    best = (key, entry, role, side[path])
        return None if best is None else (best[1], best[2], best[3])

    def _latest(self, role: Literal["in", "out"], path: str) -> list[LedgerRecord]:
        """The record with ``path`` in ``role`` that ended last: one index step where the
        back-end indexes end times (the record is proved, and must have ended when the
        index says), else every such record."""
        if not self.backend.keeps_end_times:
            return self._find(role, path, None)  # every one, its list checked complete
        for final in (False, True):
            batch: LookAhead | None = None if final else getattr(self._batch, "current", None)
            if batch is not None and (role, path) in batch.latest:
                found, bound = batch.latest[(role, path)], batch.bound
            else:
                bound = self._bound(refresh=final)
                found = self.backend.find_latest(role, path)
            entries: list[LedgerRecord] = []
            if found is not None:
                located, ended = found
                entries = self._find(role, path, None, [located])
                for entry in entries:
                    if format_time(entry.record.ended) != ended:
                        raise IndexTampered(f"the index says record {entry.id[:16]} ended at {ended!r}; it ended "
                                            f"at {format_time(entry.record.ended)}", height=entry.height, path=path)
            try:
                if found is None or entries:
                    check_latest(self, role, path, entries[-1] if entries else None, bound, final=final)
            except StaleNames:
                continue  # names kept past the bound: look again from a head read now
            return entries
        raise AssertionError("unreachable: the final look is never stale")

    def run(self, run_id: str) -> list[LedgerRecord]:
        """Every record of a run, each proved, and counted against the names kept: a record
        row whose run id was edited (or deleted) is noticed, not left out."""
        counted = self.listing("run", run_id)  # the bound and the counts, before the index is asked
        found = self._of_run(run_id, self.backend.by_run(run_id))
        if counted is not None:
            counted.add(found)
            counted.finish()
        return found

    def run_last(self, run_id: str, limit: int) -> tuple[list[LedgerRecord], int]:
        """The last ``limit`` records of a run, each proved, and how many records the index
        says the run has: a run of 100,000 tasks is not proved whole to show its last
        twenty. The count is the index's, but no smaller than the names kept say, and the
        latest record of the run kept must be among those shown where it is newer."""
        counted = self.listing("run", run_id)
        rows, count = self.backend.by_run_last(run_id, limit)
        found = self._of_run(run_id, rows)
        if counted is not None:
            counted.add(found)
            counted.finish_page(count)
        return found, count

    def _of_run(self, run_id: str, rows: list[Located]) -> list[LedgerRecord]:
        found = self._proved_all(rows)
        for entry in found:
            if entry.record.run_id != run_id:
                raise IndexTampered(f"the index lists record {entry.id[:16]} in run {run_id!r}, "
                                    f"but it belongs to run {entry.record.run_id!r}", height=entry.height)
        return found

    def recent(self, limit: int) -> list[LedgerRecord]:
        """The newest ``limit`` records of the verified head, oldest first."""
        from lineage_ledger.backends import Located

        head = self.tree_head()
        entries: list[LedgerRecord] = []
        stop = head.blocks
        while stop > 0 and (not limit or len(entries) < limit):
            start = max(0, stop - 8)
            chunk = [
                self._proved(Located(block.height, position, record))
                for block in self.backend.blocks(start, stop)
                for position, record in enumerate(block.records)
            ]
            entries, stop = [e for e in chunk if e is not None] + entries, start
        return entries[-limit:] if limit else entries

    def inclusion_proof(self, entry: LedgerRecord) -> tuple[TreeHead, int, list[str]]:
        """(tree head, leaf index, RFC 9162 audit path) for a record read from this ledger."""
        from .._log.tree import BLAKE3
        from .._log.tree import inclusion_proof as path_of

        store = self.verifier.store
        head = self.tree_head()
        index = store.block_start(entry.height) + entry.position
        return head, index, [node.hex() for node in path_of(store.node, index, head.size, BLAKE3)]

    def close(self) -> None:
        self.backend.close()
        if self._private_state is not None:
            shutil.rmtree(self._private_state, ignore_errors=True)
            self._private_state = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_ledger(url: str | None = None, *, spool: str | None = None, replay: bool = True,
                read_only: bool = False, state_dir: str | None = None) -> Ledger:
    """Open the ledger at ``url`` (default ``$LINEAGE_LEDGER_URL`` or ``.lineage/ledger.db``).

    Records that a crashed process left in the spool are shipped first; if any lines were
    damaged, :class:`SpoolCorrupt` is raised after the good ones are in the ledger.
    ``read_only`` opens an existing ledger without writing anything to it (no spool replay,
    no schema): a missing or empty one raises :class:`NoLedger`. ``state_dir`` is where the
    verified tree head is kept (default: see :func:`lineage_ledger._log.trust.state_root`).
    """
    from lineage_ledger.backends import open_backend

    if url is None:
        url = os.environ.get("LINEAGE_LEDGER_URL", DEFAULT_URL)
    spool_root = spool or os.environ.get("LINEAGE_SPOOL") or DEFAULT_SPOOL
    backend = open_backend(url, create=False) if read_only else open_backend(url)
    ledger = Ledger(backend, spool_root=spool_root, state_dir=state_dir)
    if replay and not read_only:
        try:
            ledger.replay_spool()
        except BaseException:
            ledger.close()
            raise
    return ledger
