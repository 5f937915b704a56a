"""The ledger: the chain logic on top of any back-end, and the lineage queries.

:func:`open_ledger` picks the back-end by URL, and replays records a crashed process
left in the spool. Appends build blocks on the current head and retry on
:class:`AppendConflict`, which is how concurrent writers interleave without a lock
server. Every answer is proved before it is given: the index row names a record, the
record's bytes hash to its id, and the id is the leaf the verified tree holds at that
place; a row that disagrees with its record raises :class:`IndexTampered`. Those look-ups
and their proof are in :mod:`.proved` (:class:`~.proved.ProvedLookups`), the lineage walks
built on them in :mod:`.lineage` and :mod:`.derived`, the proofs users ask for in
:mod:`.proofs`; this module keeps writing, the tree head and the queries.
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
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._errors import AppendConflict, ConfigError, IndexTampered, LedgerError, NoLedger
from .._files.hashing import lookup_paths
from .._files.manifest import Manifest
from .._log.chain import ChainSummary, ChainTip, block_spans, build_block
from .._log.merkle import leaf_hash
from .._log.trust import TreeHead, TrustStore, trust_identity
from .._log.verified import AuditResult, Verifier
from .._model import Record, StoredBlock, StoredRecord
from .._order import after_of, seen_of
from .ahead import LookAhead as LookAhead  # defined here before the look-ups moved out
from .complete import _REMEDY, Listing, listing
from .derived import DerivedQueries, RecordBits
from .lineage import LedgerRecord, LineageNode, LineageQueries
from .listings import Listings
from .proofs import Proofs
from .proved import ProvedLookups
from .spool import describe_quarantine, each_orphan, earlier_names, spool_directory, spool_path

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend

__all__ = ["DEFAULT_URL", "Ledger", "LedgerRecord", "LineageNode", "gone_if_remembered", "open_ledger"]

DEFAULT_URL = ".lineage/ledger.db"
DEFAULT_SPOOL = ".lineage/spool"
log = logging.getLogger("lineage_ledger")


def _by_end(entry: LedgerRecord) -> tuple[str, tuple[int, int]]:
    """What the index orders a path's records by: the order end, then ledger order."""
    return entry.record.order_end_text, entry.order


class Ledger(ProvedLookups, LineageQueries, DerivedQueries, Listings, Proofs):
    def __init__(self, backend: Backend, *, spool_root: str = DEFAULT_SPOOL, state_dir: str | None = None) -> None:
        self.backend = backend
        self.url: str = backend.url
        self._spool_root = spool_root
        # Decoded records by id. An entry exists only for bytes that hashed to the id and
        # were proved in the tree, so a hit is as good as a fresh check. Bounded.
        self._decoded: dict[str, Record] = {}
        self._placed: dict[str, tuple[LedgerRecord, Verifier]] = {}  # id -> the row proved (its place), by whom
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
        """Append records not yet in the ledger as blocks of at most ``block_size`` records
        and :data:`~.._log.chain.BLOCK_BYTES` of bodies; returns how many were new."""
        unique = list({r.id: r for r in records}.values())
        for attempt in range(200):
            known = self.backend.known(r.id for r in unique)
            fresh = [r for r in unique if r.id not in known]
            if not fresh:
                return 0
            prev: ChainTip | None = self.backend.head()
            blocks: list[StoredBlock] = []
            for span in block_spans([len(r.body) for r in fresh], block_size):
                block = build_block(fresh[span], prev)
                blocks.append(block.stored())
                prev = block.header
            try:
                self.backend.append(blocks)
            except AppendConflict:
                # Another writer took the head; rebuild on theirs after a short random pause.
                time.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))
                continue
            # No count: the records through ours are in the ledger now, but this process's later
            # tasks start after other processes appended more; a count that old orders a reader
            # by its own start, before a writer from a fast clock that it saw, where the time
            # alone moved it past (tests/test_attack_s47.py). Counts come from verifying.
            self._saw(max(r.ended for r in fresh))
            self._remember_appended()
            return len(fresh)
        raise AppendConflict(f"{self.url}: gave up after 200 conflicting appends")

    _REMEMBER_BLOCKS = 64  # blocks past the remembered head that a writer verifies after appending

    def _remember_appended(self) -> None:
        """After an append, where this account remembers a head for the ledger a few blocks
        behind the tip: extend it over them (this process's blocks, and any appended just
        before), as a reader would. A copy of the ledger taken before them and put back, or
        a rewrite of them, then fails as "shrank" or "rewritten" at the next check, as for
        blocks a reader verified; before, a writer's own blocks stayed unverified until a
        reader came, and a rollback past them passed the next pre-run check. Nothing
        remembered: nothing done (never an audit on the write path); far behind: left to the
        next reader (the cost grows with the gap; about 10 ms for a block or two). The
        append is done whatever happens here: a failure is only logged."""
        if not self.backend.shared_between_processes:
            return
        from .._log.names import FORMAT as NAMES_FORMAT
        from .._log.names import kept as names_kept
        from ._extends import remembered_store

        try:
            store = remembered_store(self)
            head = store.reload() if store is not None else None
            if head is None or (head.names != NAMES_FORMAT and names_kept()):
                return
            tip = self.backend.head()
            if tip is None or tip.height - (head.blocks - 1) > self._REMEMBER_BLOCKS:
                return
            head = self.verifier.refresh(endorsed=False)
        except (LedgerError, OSError) as err:
            log.warning("lineage-ledger: the blocks just appended to %s were not verified here: %s",
                        self.backend.display_url, err)
            return
        self._saw(head.latest, head.size)

    def record(self, record: Record) -> str:
        """Append one record synchronously (no spool); for scripts and tests."""
        stored = record.stored()
        self.append_records([stored])
        return stored.id

    def recorder(self, **options: Any):
        from .recorder import Recorder

        return Recorder(self, **options)

    def replay_spool(self) -> int:
        """Ship what crashed processes left in the spool; raise if damaged lines were set aside,
        or (:class:`HistoryRewritten`, nothing shipped) where the ledger no longer extends the
        tree head this account verified."""
        if not os.path.isdir(spool_path(self._spool_root, self.backend.identity)):
            return 0  # nothing was ever spooled here; do not create directories to find out
        quarantined: list[str] = []
        shipped = 0
        checked = False
        # One segment at a time, each shipped and deleted before the next is read: a long
        # outage leaves a great many, and holding them all took 352 MB at 100,000 records.
        orphans = each_orphan(self.spool_dir, quarantined)
        with contextlib.closing(orphans):  # its quarantine closed, whatever the shipping raises
            for segment in orphans:
                try:
                    if len(segment) and not checked:
                        from ._extends import check_extends

                        # Nothing is replayed into a history this account saw shrink or fork: the
                        # segments stay where they are (unlocked below) until `reset-trust`.
                        check_extends(self)
                        checked = True
                    if len(segment):
                        shipped += self.append_records(segment.stored())
                    segment.delete()
                finally:
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
        verifier = self._verifier
        if verifier is not None:  # made once: read a few times for each row proved, no lock needed
            return verifier
        with self._verified_lock:
            if self._verifier is None:
                self._verifier = Verifier(self.backend, self._trust_store())
            return self._verifier

    def _trust_store(self) -> TrustStore:
        identity = trust_identity(self.backend)
        origin = getattr(self.backend, "origin", identity)
        if self.backend.shared_between_processes:
            # The names this ledger had before (a PostgreSQL URL with its tuning keys): the
            # state kept under one of them is taken over, not audited afresh.
            return TrustStore(identity, origin, self._state_dir, earlier=earlier_names(identity))
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
        self._saw(head.latest, head.size)
        return head

    def _saw(self, latest: str, size: int = 0) -> None:
        """Every record that ended by ``latest`` (in the ledger's order), and the first
        ``size`` records (0: not known), are in the ledger now: a reading for the records this
        process's tasks, and this account's later ones, make (:mod:`.seen`). The hint is left
        only where this account spools for the ledger."""
        from .seen import note_seen, write_hint

        identity = self.backend.identity
        note_seen(identity, latest, size=size)
        if latest and self.backend.shared_between_processes:
            directory = spool_path(self._spool_root, identity)
            if os.path.isdir(directory):
                write_hint(directory, latest, size)

    def audit(self, *, files: bool = False) -> AuditResult:
        """Read and verify the whole ledger, index included, in bounded memory."""
        verifier = self.verifier
        with self._verified_lock:
            result = verifier.audit(files=files)
        self._saw(result.head.latest, result.head.size)
        return result

    def verify_chain(self) -> ChainSummary:
        return self.audit().summary

    # -- reading (every answer proved against the verified tree; the look-ups: .proved) -----
    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        """Stored blocks as the back-end returns them, unverified (see :meth:`audit`)."""
        return self.backend.blocks(start, stop)

    def get(self, id_or_prefix: str) -> LedgerRecord:
        prefix = id_or_prefix.strip().lower()
        if len(prefix) < 4:
            raise LedgerError("give at least 4 hex digits of a record id")
        matches = self._proved_all(self.backend.by_id_prefix(prefix, limit=2))
        for entry in matches:
            if not entry.id.startswith(prefix):
                raise IndexTampered(f"the index answers record {entry.id[:16]} for the prefix {prefix!r}")
        if not matches:
            self._no_record(prefix, id_or_prefix)
        if len(matches) > 1:
            raise LedgerError(f"id prefix {id_or_prefix!r} is ambiguous; give more digits")
        return matches[0]

    def _no_record(self, prefix: str, given: str) -> None:
        """Raise for an id the store has no row for: IndexTampered where the verified tree
        holds that record (a full id's leaf is among its leaves) or the store holds fewer
        record rows than the tree (rows deleted), else "no record" (a negative answer from
        the id column: a row whose id was edited is found by the full audit, or by the full
        id, not by a prefix; no verified index of ids is kept)."""
        head = self.tree_head()
        if len(prefix) == 64 and all(c in "0123456789abcdef" for c in prefix):
            index = self.verifier.store.find_leaf(leaf_hash(prefix))
            if index is not None:
                raise IndexTampered(f"record {prefix[:16]} is record {index} of the verified tree, but the store "
                                    "has no row with its id (deleted, or its id column edited)")
        stored = self.backend.record_count()
        if stored < head.size:
            raise IndexTampered(f"the store holds {stored} record rows, and {head.size} records were verified: "
                                "verified records were deleted from it (the one asked for may be among them)")
        if len(prefix) == 64:
            raise LedgerError(f"no record with id {given!r} (none in the verified tree of {head.size} records)")
        raise LedgerError(f"no record with id {given!r} among the stored ids (a prefix is not checked against the "
                          "verified tree: give the full id, or audit the ledger with verify-lineage)")

    def record_bits(self) -> RecordBits:
        """An empty set of proved records (of this ledger's verified tree), a bit each."""
        return RecordBits(self.verifier.store.block_start)

    def _query(self, path: str | None) -> str | None:
        return None if path is None else self.query_path(path)

    def producers(self, path: str | None = None, digest: str | None = None) -> list[LedgerRecord]:
        """Records that output ``path`` (and/or ``digest``), oldest first: under every
        spelling some record names it by (:meth:`query_paths`), each record once."""
        if path is None:
            return self._find("out", None, digest)
        keys = self.query_paths(path)
        if len(keys) == 1:
            return self._find("out", keys[0], digest)
        found = {entry.id: entry for key in keys for entry in self._find("out", key, digest)}
        return sorted(found.values(), key=lambda entry: entry.order)

    def consumers(self, path: str | None = None, digest: str | None = None, *,
                  offset: int = 0, limit: int | None = None, as_key: bool = False) -> list[LedgerRecord]:
        """Records that read ``path`` (and/or ``digest``), oldest first; a page of them with
        ``offset``/``limit`` (a file every task read has as many consumers as tasks).
        ``as_key``: ``path`` is a key already (as :meth:`query_path` gives it, or as a record
        names it), not to be resolved on disk again."""
        path = path if as_key else self._query(path)
        if digest is not None and path is not None and not offset and limit is not None:
            whole = self._every_version_read(path, digest, limit)
            if whole is not None:
                return whole
            page = self._find("in", path, digest,
                              self.backend.find_page("in", path=path, digest=digest, offset=0, limit=limit))
            self._check_version_page(path, digest, limit, page)
            return page
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

    def _every_version_read(self, path: str, digest: str, limit: int) -> list[LedgerRecord] | None:
        """The first page of the readers of version ``digest`` of ``path`` where every reader
        of the path, whatever version, fits in that page: read whole by path, counted against
        the names kept (which count readers by path, not by version: a page by version was
        never checked, and a deleted row hid a subtree below the top of `depends`), then
        matched by digest. None where they do not fit (a page by version, as before)."""
        counted = self.listing("in", path)
        if counted is None or self.count_consumers(path, at_most=limit, as_key=True) >= limit:
            return None
        found = self._find("in", path, None, self.backend.find_page("in", path=path, offset=0, limit=limit))
        if len(found) >= limit:
            return None
        counted.add(found)
        counted.finish()
        return self._matching("in", path, digest, found)

    def _check_version_page(self, path: str, digest: str, limit: int, page: list[LedgerRecord]) -> None:
        """The first page of the readers of version ``digest`` of ``path``, where the path has
        more readers than fit in a page: the names keep readers by path, not by version, so
        the path's own first page is read too and counted against them, and its readers of
        this version must open the version's page, in the same order. An index row of one of
        them deleted, moved, or with its digest or path edited hid that task from `depends`
        (helper-153, s48). Readers of the version past the path's first page are checked by
        the full audit (docs/verification.md, "What stays for the full audit")."""
        from .derived import MORE_COUNTED

        counted = self.listing("in", path)
        if counted is None:
            return
        first = self._find("in", path, None, self.backend.find_page("in", path=path, offset=0, limit=limit))
        counted.add(first)
        total = self.count_consumers(path, at_most=limit + MORE_COUNTED + 1, as_key=True, below=counted.bound)
        counted.finish_first_page(total, exact=total <= limit + MORE_COUNTED)
        ours = [entry.id for entry in first if entry.record.inputs[path]["blake3"] == digest]
        listed = [entry.id for entry in page[:len(ours)]]
        if listed != ours:
            hidden = next(i for at, i in enumerate(ours) if at >= len(listed) or listed[at] != i)
            raise IndexTampered(
                f"the index's page of the tasks that read version {digest[:16]} of {path} leaves out record "
                f"{hidden[:16]}, one of the path's oldest readers, which read that version. {_REMEDY}", path=path)

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
                        at_most: int | None = None, as_key: bool = False, below: int | None = None) -> int:
        """How many records the index says read ``path`` (a count, not a verified answer),
        counting no further than ``at_most``, and with ``below``, among the first ``below``
        records only (a listing's bound: what its names count)."""
        key = path if as_key else self._query(path)
        options: dict[str, int] = {}
        if at_most is not None:
            options["at_most"] = at_most
        if below is not None:
            options["below"] = below
        return self.backend.count_found("in", path=key, digest=digest, **options)

    def producer(self, path: str | None = None, digest: str | None = None) -> LedgerRecord | None:
        found = self.producers(path, digest)
        return found[-1] if found else None

    def last_seen(
        self, path: str, roles: tuple[Literal["in", "out"], ...] = ("out", "in")
    ) -> tuple[LedgerRecord, str, Mapping[str, Any]] | None:
        """The latest record that read or wrote ``path``: (record, role, entry).

        "Latest" is by time, then by ledger order: a crashed process's spool replayed days
        later lands late in the ledger but must not count as newer. The times are the
        records' times in the ledger's order (:mod:`.._order`): a record whose recorder had
        seen another in the ledger when its task started is later than it, whatever the
        hosts' clocks said (tests/test_time_order_skew.py); between a writer and a reader,
        the one whose recorder had verified the other's place in the ledger is later
        (:meth:`_later_of`). Within a role, the
        latest is the record whose task ended last (what the index answers). Between the
        latest reader and the latest writer, each counts from when it saw the file: a writer
        when it ended (its outputs are hashed then), a reader when it started (inputs are
        hashed before the task runs, or, hashed later, hold what a writer that ended
        meanwhile left). A long task that read the file, and ended after a short task
        rewrote it, did not see it last (tests/test_time_order_overlap.py). At the same
        time the writer is the later (a reader hashed before it started), then ledger order.
        """
        keys = self.query_paths(path)
        if roles == ("out", "in") and len(keys) == 1:
            settled = self._last_seen_ahead(keys[0])
            # (A record that named the path through a link then, alias_of, saw another file: the
            # look-up below decides whether it counts.)
            if settled is not None and "alias_of" not in settled[2]:
                return settled
        # Behind a symbolic link, each spelling some record names (query_paths): a task that
        # read the file by its real path names that one alone, and saw it after one that
        # named the link (tests/test_outside_review_s46.py).
        found: dict[Literal["out", "in"], tuple[LedgerRecord, str]] = {}
        real = keys[-1]
        lineage: dict[str, bool] = {}  # the real path's own records, by role: asked only where one is stale
        for role in roles:
            lasts = {key: self._last_in_role(role, key) for key in keys}
            for key, last in lasts.items():
                if last is not None and not self._through_target(role, key, real, last) \
                        and self._has_own_lineage(role, real, lasts[real] if role == "out" else None, lineage):
                    last = self._last_through_target(role, key, real, last)
                if last is not None and (role not in found or self._later_in_role(role, last, found[role][0])):
                    found[role] = (last, key)
        if not found:
            return None
        role = self._later_of(found["out"][0], found["in"][0]) if len(found) == 2 else next(iter(found))
        entry, key = found[role]
        return entry, role, (entry.record.outputs if role == "out" else entry.record.inputs)[key]

    def _last_through_target(self, role: Literal["in", "out"], key: str, real: str,
                             last: LedgerRecord | None = None) -> LedgerRecord | None:
        """The latest record under ``key`` that saw the file at ``real`` (:meth:`_through_target`):
        the latest, or where it saw another target, for a link's spelling none (a record made
        through the link while it pointed at ``real`` names ``real`` too, and is found under it;
        one of the Python API that names the link alone is passed over then), and for ``real``
        itself the latest of the whole list of those that did not (a folder put back where a
        link was: the records through the link are among its own)."""
        last = self._last_in_role(role, key) if last is None else last
        if last is None or self._through_target(role, key, real, last):
            return last
        if key != real:  # not the whole list of its readers proved at each look-up (10,000: 2 s)
            return None
        return self._last_in_role(role, key, [entry for entry in self._find(role, key, None)
                                              if self._through_target(role, key, real, entry)])

    def _has_own_lineage(self, role: Literal["in", "out"], real: str, last_writer: LedgerRecord | None,
                         known: dict[str, bool]) -> bool:
        """Whether a record wrote ``real`` as the file there (not through a link to another
        target), or for a reader's role, read it so: then records that saw another target
        through a link do not count for it (:meth:`_through_target`). ``known`` keeps the
        answers of one look-up."""
        if "real" not in known:
            # The last key the look-up names is the link's own spelling where no record names
            # the path it resolves to (data moved with its link following it): no record there
            # has a lineage of its own, and none of the link's records is set aside (nor is the
            # whole list of its readers proved at each look-up).
            known["real"] = lookup_paths(real)[-1] == real
        if not known["real"]:
            return False
        if "out" not in known:
            known["out"] = self._last_through_target("out", real, real, last_writer) is not None
        if role == "out" or known["out"]:
            return known["out"]
        if "in" not in known:
            known["in"] = self._last_through_target("in", real, real) is not None
        return known["in"]

    @staticmethod
    def _through_target(role: Literal["in", "out"], key: str, real: str, entry: LedgerRecord) -> bool:
        """Whether ``entry``, a record under ``key`` (a link's spelling of ``real``, or ``real``
        itself), saw the file at ``real``. A record made through a link names the target it
        resolved to then (``alias_of``); one that names another target saw the file there (a
        link pointed elsewhere since, or removed and a real folder put in its place). A record
        naming a link with no target (the Python API's, an earlier release's) counts.

        Whether a record that saw another target counts (:meth:`last_seen`) the path alone cannot
        tell: the link was pointed at another folder since (that record saw another file,
        tests/test_attack_s46.py), or the data moved with its link following it (the same file,
        tests/test_paths.py). A record that *wrote* the real path tells: the file there has a
        lineage of its own, and the records through the old target do not count (for a reader,
        a record that read the real path tells as well). Where none did, every record under the
        link's spelling counts: a producer through the old target still answers for data moved
        with its link, and an edit read there since is compared with it
        (tests/test_attack_s47.py). The latest is asked first; the whole list only where it is
        stale."""
        named = (entry.record.outputs if role == "out" else entry.record.inputs).get(key)
        if named is None:
            return True
        # A record naming the path with no target named it as a real path then: where that
        # spelling is a link now, it saw the file at the spelling's own place, not at ``real``
        # (a real folder replaced by a link to another folder).
        return named.get("alias_of", key) == real

    def _last_in_role(self, role: Literal["in", "out"], path: str,
                      among: list[LedgerRecord] | None = None) -> LedgerRecord | None:
        """The record that saw ``path`` last among those that read it (``in``) or wrote it
        (``out``): a reader when it started, a writer when it ended (:meth:`_saw_at`), and one
        whose recorder had verified the other's place in the ledger later than it, whatever
        the times (:meth:`_saw_place`). The index answers the one that ended last; a record
        that saw the file later ended at or after the time that one saw it, so only those are
        read, latest end first, until their ends fall below the time the best so far saw the
        file: a long task's reader, and the short one that started after it and read the file
        a user edited meanwhile (tests/test_time_order_attack_readers.py), or a writer moved
        on by a record from a fast clock and the writer that really ended after it
        (tests/test_time_order_attack.py). ``among``: every record to choose from (a whole list)."""
        entries, whole = self._latest(role, path) if among is None else (among, True)
        if not entries:
            return None
        best = max(entries, key=_by_end)
        later = iter(sorted(entries, key=_by_end, reverse=True)) if whole else \
            self._ended_since(role, path, self._saw_at(role, best))
        for entry in later:
            # Ended before the best so far saw the file (or then, and before it in the ledger):
            # neither it nor any below it in this order can have seen the file later.
            if (entry.record.order_end_text, entry.order) < (self._saw_at(role, best), best.order):
                break
            if entry.id != best.id and self._later_in_role(role, entry, best):
                best = entry
        return best

    def _leaf_of(self, entry: LedgerRecord) -> int:
        return self.verifier.store.block_start(entry.height) + entry.position

    def _saw_at(self, role: Literal["in", "out"], entry: LedgerRecord) -> str:
        """When ``entry`` saw the file (:mod:`.._order`): a reader at its start, a writer at its
        end; its own time where it carries a count of records seen, else the time moved past
        the records it had seen; never past its order end (a record whose clock said it ended
        before it started)."""
        record = entry.record
        counted = seen_of(record.extra, self._leaf_of(entry)) is not None
        if role == "in":
            at = record.started_text if counted else record.order_start_text
        else:
            at = record.ended_text if counted else record.order_end_text
        return min(at, record.order_end_text)

    def _saw_place(self, entry: LedgerRecord, other: LedgerRecord) -> bool:
        """Whether ``entry``'s recorder had verified ``other``'s place in the ledger before its
        task started: its count covers it, and ``other`` ended by the time ``entry`` says it
        started after. A count is of the history its recorder verified: every record below
        it was in a head whose latest is at or past its order end, and the record's
        ``after`` is at least that latest; a count that covers a record whose order end is
        past the ``after`` counted another history (a ledger restored since:
        tests/test_time_order_attack_counts.py)."""
        seen = seen_of(entry.record.extra, self._leaf_of(entry))
        return seen is not None and self._leaf_of(other) < seen and \
            other.record.order_end_text <= (after_of(entry.record.extra) or "")

    def _later_in_role(self, role: Literal["in", "out"], entry: LedgerRecord, best: LedgerRecord) -> bool:
        """Whether ``entry`` saw the file after ``best`` did, both in ``role``: by place first,
        then by the times each saw it, then by ledger order."""
        if self._saw_place(entry, best):
            return True
        if self._saw_place(best, entry):
            return False
        return (self._saw_at(role, entry), entry.order) > (self._saw_at(role, best), best.order)

    def _later_of(self, writer: LedgerRecord, reader: LedgerRecord) -> Literal["out", "in"]:
        """Which of a file's latest writer and latest reader saw it last (:mod:`.._order`): the
        one whose recorder had seen the other's place in the ledger; else the writer's end
        against the reader's start (its own where it carries a count, else moved)."""
        if self._saw_place(reader, writer):
            return "in"
        if self._saw_place(writer, reader):
            return "out"
        start = self._saw_at("in", reader)
        return "out" if (writer.record.order_end_text, True, writer.order) > (start, False, reader.order) else "in"

    def close(self) -> None:
        self.backend.close()
        if self._private_state is not None:
            shutil.rmtree(self._private_state, ignore_errors=True)
            self._private_state = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gone_if_remembered(url: str, state_dir: str | None = None) -> None:
    """Raise :class:`HistoryRewritten` where this account remembers a verified head for the
    ledger at ``url``, which is missing or empty now: deleted, emptied or moved away since,
    the end of a shrink, not "nothing recorded yet" (a pre-run check took it for that).
    :func:`open_ledger` ``read_only`` makes this check; the plugins make it too where they
    see no ledger file without opening one."""
    from .._environment import state_root
    from .._errors import HistoryRewritten
    from .identity import trust_identity_of

    try:
        identity = trust_identity_of(url)
        directory = TrustStore.directory_for(identity, state_dir or state_root())
    except ConfigError:
        return  # no state kept (a relative LINEAGE_STATE_DIR): the missing ledger says the rest
    if os.path.lexists(os.path.join(directory, "head.json")) or os.path.lexists(directory + ".old"):
        raise HistoryRewritten(
            f"{identity}: no ledger there, or an empty file, but this account verified one there before "
            f"(its head is kept in {directory}): it was deleted, emptied or moved away. If that was "
            "deliberate, run `lineage-ledger reset-trust` to forget it")


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
    try:
        backend = open_backend(url, create=False) if read_only else open_backend(url)
    except NoLedger:
        gone_if_remembered(url, state_dir)
        raise
    ledger = Ledger(backend, spool_root=spool_root, state_dir=state_dir)
    if replay and not read_only:
        try:
            ledger.replay_spool()
        except BaseException:
            ledger.close()
            raise
    return ledger
