"""The look-ups under every answer of a :class:`~.ledger.Ledger`: index rows, then their proof.

A back-end's index says which records name a path; nothing it says is taken on trust. Each
row is proved before it becomes an answer (:meth:`ProvedLookups._proved`: the record's
bytes hash to its id, and the id is the leaf the verified tree holds at that place), the
record must say what the row says (:meth:`~ProvedLookups._matching`), and a list must be as
long as the names the verified tree keeps (:mod:`.complete`). Rows for many paths can be
read ahead in a few statements (:meth:`~ProvedLookups.looking_ahead`); they are proved the
same way when used.

Why a mixin of its own: the public queries of :class:`~.ledger.Ledger` (``producers``,
``consumers``, ``last_seen``, ``run``...) are short compositions of these few look-ups, and
the proof is the part a change must not weaken; keeping it in one module, apart from the
writing and the tree head's upkeep, keeps it reviewable as a whole.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from .._errors import ArtifactError, IndexTampered, RecordTampered
from .._files.hashing import lookup_paths, normalize_path, resolving_keeps
from .._log.names import OUTPUT
from .._log.trust import TreeHead
from .._log.verified import Verifier
from .._model import Record, StoredRecord
from .complete import StaleNames, check_latest, check_listing, named_by_a_verified_record
from .lineage import LedgerRecord

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend, Located

    # The checks of .complete take a Ledger; this mixin is only ever part of one, which the
    # casts below say to the type checker (a cast does nothing at run time).
    from .ledger import Ledger

__all__ = ["LookAhead", "ProvedLookups"]

_DECODE_CACHE = 10_000  # decoded records kept (about 5 KiB each: 50,000 held 250 MiB in `depends --all`)
# Bodies read in one statement ahead of a look-up that needs one, within looking_ahead: the
# next records its paths name. A statement per record was a tenth of a full audit's checks
# of outputs on disk; more at once would hold more unproved bytes (a wide record's are large).
_BODIES_AHEAD = 64


@dataclass
class LookAhead:
    """Index rows read ahead for many paths (:meth:`Ledger.looking_ahead`): by (role, path),
    the latest record (None: none) and the producers; and each path's key."""

    latest: dict[tuple[str, str], tuple[Located, str] | None] = field(default_factory=dict)
    places: dict[tuple[str, str], list[Located]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    bound: int = 0  # the verified tree's size before the rows were read (see Ledger._bound)
    names: dict[str, list] = field(default_factory=dict)  # each key's names (complete.py), read with the rows
    # By (role, path): every record naming it there, proved and its list checked complete,
    # worked out once from ``places`` for the look-ups that ask (the latest, the producers).
    found: dict[tuple[str, str], list] = field(default_factory=dict)
    # The records those rows name, in the order the paths come, each once (see _bodies), and
    # the bodies last read ahead of them, by id: unproved bytes until a look-up proves them.
    ids: list[str] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)  # each id's index in ids
    bodies: dict[str, bytes] = field(default_factory=dict)
    wanted: list[str] = field(default_factory=list)  # the keys read ahead, in the order given
    # The last record to see each key, where the rows read ahead settle it (see
    # ProvedLookups._settle_ahead), worked out for every key at the first look-up; None until then.
    settled: dict[str, tuple[LedgerRecord, str, Mapping[str, Any]]] | None = None


class ProvedLookups:
    """Index look-ups of a ledger, each row proved against its verified tree (a mixin of
    :class:`~.ledger.Ledger`, which makes the state below in its ``__init__``)."""

    backend: Backend
    _decoded: dict[str, Record]  # by id: only bytes that hashed to the id and were proved
    _placed: dict[str, tuple[LedgerRecord, Verifier]]  # id -> the row proved (its place), by whom
    _head_current: bool
    _batch: threading.local  # index rows read ahead, for one thread (LookAhead)
    if TYPE_CHECKING:  # what Ledger gives (the verified tree head)
        @property
        def verifier(self) -> Verifier: ...

        def tree_head(self) -> TreeHead: ...

    # -- a row proved ------------------------------------------------------------------------
    def _proved(self, located: Located, *, keep: bool = True) -> LedgerRecord | None:
        """The record an index row names, once its bytes and place are proved; None for a
        row appended after the verified head. ``keep``: remember the decoded record for
        later look-ups; a listing that streams the ledger or a run reads each record once,
        and kept them only to fill the cache (10,000 records, 60-75 MB) for nothing."""
        stored = located.record
        verifier = self.verifier
        # This very row proved before in this verifier's tree, which only ever grows: the
        # answer is the one given then (a record naming 10,000 outputs is looked up once per
        # output, twice each).
        hit = self._placed.get(stored.id)
        if hit is not None and hit[1] is verifier and hit[0].position == located.position \
                and hit[0].height == located.height:
            return hit[0]
        record = self._decoded.get(stored.id)
        # A record decoded before was proved from its bytes then: the answer comes from those,
        # so only the row's place is proved again (not hashed once per output).
        if verifier.check(located, hash_body=record is None) is None:
            return None
        if record is None:
            try:
                record = Record.decode(stored.body)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RecordTampered(f"record {stored.id[:16]} is unreadable: {exc}",
                                     height=located.height) from exc
        entry = LedgerRecord(stored.id, record, located.height, located.position)
        if keep:
            if len(self._decoded) >= _DECODE_CACHE or len(self._placed) >= _DECODE_CACHE:
                # Together: an entry proved holds its record, which the bound counts once.
                self._decoded.clear()
                self._placed.clear()
            self._decoded[stored.id] = record
            self._placed[stored.id] = (entry, verifier)
        return entry

    def _with_bodies(self, rows: Iterable[Located]) -> list[Located]:
        """Rows a back-end returned without bodies (``find_places``), with the bodies of the
        records not proved before fetched in one call; the others are answered from the
        bytes proved then."""
        rows = rows if type(rows) is list else list(rows)
        decoded = self._decoded
        missing = {r.record.id for r in rows if not r.record.body and r.record.id not in decoded}
        if not missing:
            return rows
        bodies = self._bodies(missing)
        filled = []
        for row in rows:
            body = bodies.get(row.record.id) if row.record.id in missing else None
            if body is not None:
                row = type(row)(row.height, row.position, StoredRecord(row.record.id, body))
            filled.append(row)
        return filled

    def _bodies(self, missing: set[str]) -> dict[str, bytes]:
        """The stored bodies of ``missing`` (ids): from those read ahead where this thread is
        :meth:`looking_ahead`, else read now, with the next bodies the look-ahead's rows name
        (up to :data:`_BODIES_AHEAD`, those not decoded already) in the same statement. Only
        the last read are kept: what one holds, the look-ups of the next few paths use."""
        batch: LookAhead | None = getattr(self._batch, "current", None)
        if batch is None or not batch.order:
            return self.backend.bodies(sorted(missing))
        found = {i: batch.bodies[i] for i in missing if i in batch.bodies}
        if len(found) == len(missing):
            return found
        wanted = sorted(missing - found.keys())
        at = min((batch.order[i] for i in wanted if i in batch.order), default=None)
        if at is not None:
            decoded = self._decoded
            ahead = [i for i in batch.ids[at : at + 4 * _BODIES_AHEAD] if i not in decoded and i not in missing]
            wanted += ahead[: max(0, _BODIES_AHEAD - len(wanted))]
        batch.bodies = self.backend.bodies(wanted)
        found.update((i, batch.bodies[i]) for i in missing if i in batch.bodies)
        return found

    def _proved_all(self, rows: Iterable[Located], *, keep: bool = True) -> list[LedgerRecord]:
        # The head is brought up to date once (then by tree_head(), which the pre-run checks
        # call each time); a row past it makes Verifier.check look again.
        if not self._head_current:
            self.tree_head()
        found = []
        for row in rows:
            entry = self._proved(row, keep=keep)
            if entry is not None:
                found.append(entry)
        return found

    # -- the rows naming a path: proved, matched, checked complete -------------------------
    def _find(self, role: Literal["in", "out"], path: str | None, digest: str | None,
              rows: Iterable[Located] | None = None) -> list[LedgerRecord]:
        if rows is not None or path is None:  # one row, a page, or by digest: no list to complete
            return self._matching(role, path, digest, self._proved_all(self._with_bodies(rows if rows is not None
                                  else self.backend.find_places(role, path=None, digest=digest))))
        for final in (False, True):
            rows, bound = None, 0
            batch: LookAhead | None = None if final else getattr(self._batch, "current", None)
            if batch is not None:
                known = batch.found.get((role, path))
                if known is not None:
                    return self._matching(role, path, digest, known)
                rows, bound = batch.places.get((role, path)), batch.bound
                if rows is None:
                    batch = None  # not read ahead: nothing to keep for the next look-up
            if rows is None:
                bound = self._bound(refresh=final)
                # The digest is matched against the proved record, not the index: an edited
                # digest column can then change no answer (the audit reports it).
                rows = self.backend.find_places(role, path=path)
            found = self._proved_all(self._with_bodies(rows))
            matching = self._matching(role, path, digest, found)
            try:
                check_listing(cast("Ledger", self), role, path, found, bound, final=final)
            except StaleNames:
                continue  # names kept past the bound: look again from a head read now
            if batch is not None:
                batch.found[(role, path)] = found
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

    # -- a path's key, and rows read ahead for many paths ----------------------------------
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
                if (named_by_a_verified_record(cast("Ledger", self), candidate)
                        or self.backend.find_page("out", path=candidate, limit=1)
                        or self.backend.find_page("in", path=candidate, limit=1)):
                    key = candidate
                    break
        if batch is not None:
            batch.keys[path] = batch.keys[key] = key
        return key

    @contextlib.contextmanager
    def looking_ahead(self, paths: Sequence[str], *, plain: Collection[str] = ()) -> Iterator[None]:
        """Within the block, this thread's look-ups of ``paths`` (the last record to read
        each, and each one's producers, among which the last to write it) are answered from
        index rows read for all of them at once, a few statements for thousands of files
        instead of three each. Only the index rows are read ahead: every record an answer
        uses is proved as before, and each path's key (symbolic links resolved) is worked
        out once. ``plain``: paths known to be regular files, not symbolic links (a walk's
        listing said so), whose own key they are where their directory's is its own."""
        batch = LookAhead()
        previous = getattr(self._batch, "current", None)
        self._batch.current = batch
        try:
            # A path whose real path is itself (most are) is its own key: found a directory
            # at a time (resolving_keeps), not by resolving each path.
            given: dict[str, str] = {}
            for p in paths:
                try:
                    given[p] = normalize_path(p)
                except (ArtifactError, ValueError):
                    pass  # query_path says why, when the path's own look-up comes to it
            own = resolving_keeps(given.values(), plain)
            for p, key in given.items():
                if key in own:
                    batch.keys[p] = batch.keys[key] = key
            keys = list(dict.fromkeys(filter(None, map(self._key_ahead, given))))
            batch.wanted = keys
            batch.bound = self._bound()
            batch.names = self.verifier.store.names_many(keys) or {}
            backend = self.backend
            # The last writer is found among the producers (see _latest): only the last
            # reader needs an index row of its own.
            readers = backend.find_latest_many("in", keys)
            batch.latest.update({("in", k): readers.get(k) for k in keys})
            places = backend.find_places_many("out", keys)
            batch.places.update({("out", k): places.get(k, []) for k in keys})
            # The records the look-ups will prove, in the order they will come to them.
            order = batch.order
            for key in keys:
                reader = batch.latest[("in", key)]
                for located in [*batch.places[("out", key)], *((reader[0],) if reader is not None else ())]:
                    order.setdefault(located.record.id, len(order))
            batch.ids = list(order)
            yield
        finally:
            self._batch.current = previous

    def _key_ahead(self, path: str) -> str | None:
        """:meth:`query_path`, or None for a path whose key cannot be worked out (a name
        that is not UTF-8, a NUL byte): it is read when its own look-up comes to it, which
        then answers (or raises) as it would have without reading ahead."""
        try:
            return self.query_path(path)
        except (ArtifactError, ValueError):
            return None

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

    # -- the latest record naming a path; a run's records ----------------------------------
    def _latest(self, role: Literal["in", "out"], path: str) -> list[LedgerRecord]:
        """The record with ``path`` in ``role`` that ended last: one index step where the
        back-end indexes end times (the record is proved, and must have ended when the
        index says), else every such record."""
        batch: LookAhead | None = getattr(self._batch, "current", None)
        if not self.backend.keeps_end_times or (batch is not None and (role, path) in batch.places):
            # Every one, its list checked complete: where the rows were read ahead (a window
            # of files), that list is what the producers' look-up of the lineage that follows
            # needs too, so the latest costs no look-up and no check of its own.
            return self._find(role, path, None)
        for final in (False, True):
            batch = None if final else getattr(self._batch, "current", None)
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
                    if entry.record.ended_text != ended:
                        raise IndexTampered(f"the index says record {entry.id[:16]} ended at {ended!r}; it ended "
                                            f"at {entry.record.ended_text}", height=entry.height, path=path)
            try:
                if found is None or entries:
                    check_latest(cast("Ledger", self), role, path, entries[-1] if entries else None, bound, final=final)
            except StaleNames:
                continue  # names kept past the bound: look again from a head read now
            return entries
        raise AssertionError("unreachable: the final look is never stale")

    def _last_seen_ahead(self, path: str) -> tuple[LedgerRecord, str, Mapping[str, Any]] | None:
        """:meth:`~.ledger.Ledger.last_seen` of ``path`` (a key) in the common case of a
        window of files read ahead, settled from what the look-ahead read, without the
        general look-ups: one index row says a record wrote the path, none says one read it,
        and the names kept list that record's leaf alone (one record, in the output role,
        below the bound). The row is proved as ever, and the record must name the path.
        That is the answer the general path gives there, with every check it makes passed:
        the list of producers is complete (check_listing), no verified record read the
        path (check_latest), and no name is past the bound (no stale names). None where any
        of that does not hold: the general path then answers, or raises. The first look-up
        settles every key of the window at once (:meth:`_settle_ahead`)."""
        batch: LookAhead | None = getattr(self._batch, "current", None)
        if batch is None or not self.backend.keeps_end_times:
            return None
        if batch.settled is None:
            batch.settled = self._settle_ahead(batch)
        return batch.settled.get(path)

    def _settled_row(self, batch: LookAhead, key: str) -> tuple[Located, int] | None:
        """The one index row that settles ``key`` (see :meth:`_last_seen_ahead`), and the
        leaf the names kept give its record; None where the rows read ahead do not settle it."""
        rows = batch.places.get(("out", key))
        if rows is None or len(rows) != 1:
            return None  # no writer, or more than one: the general path
        if ("in", key) not in batch.latest or batch.latest[("in", key)] is not None:
            return None  # its readers were not read ahead, or the index names one
        names = batch.names.get(key)
        if names is None or len(names) != 1:
            return None
        only = names[0]
        if only.role != OUTPUT or only.records != 1 or only.leaf >= batch.bound:
            return None
        return rows[0], only.leaf

    def _settle_ahead(self, batch: LookAhead) -> dict[str, tuple[LedgerRecord, str, Mapping[str, Any]]]:
        """:meth:`_last_seen_ahead`'s answer for every key of the window it settles, worked
        out in one loop: the records' bodies read :data:`_BODIES_AHEAD` to a statement, each
        proved and decoded as :meth:`_proved` does. Per key, the look-ups through
        ``_proved_all`` were a tenth of checking the outputs of 10,000 tasks. A row whose
        record does not prove is left to the general path, which raises for it when (and
        only when) its own path is looked up, as before."""
        settled: dict[str, tuple[LedgerRecord, str, Mapping[str, Any]]] = {}
        wanted = [(key, found) for key in batch.wanted if (found := self._settled_row(batch, key)) is not None]
        if not wanted:
            return settled
        if not self._head_current:
            self.tree_head()
        start_of = self.verifier.store.block_start
        for at in range(0, len(wanted), _BODIES_AHEAD):
            part = wanted[at : at + _BODIES_AHEAD]
            rows = self._with_bodies([row for _key, (row, _leaf) in part])
            for (key, (_row, leaf)), row in zip(part, rows, strict=True):
                try:
                    entry = self._proved(row)
                except (IndexTampered, RecordTampered):
                    continue  # raised again by the general path, for this path alone
                if entry is None:
                    continue
                named = entry.record.outputs.get(key)
                if named is None or start_of(entry.height) + entry.position != leaf:
                    continue
                batch.found[("out", key)] = [entry]  # the producers' look-up of the lineage that follows
                settled[key] = (entry, "out", named)
        return settled

    def _of_run(self, run_id: str, rows: list[Located], *, keep: bool = True) -> list[LedgerRecord]:
        found = self._proved_all(rows, keep=keep)
        for entry in found:
            if entry.record.run_id != run_id:
                raise IndexTampered(f"the index lists record {entry.id[:16]} in run {run_id!r}, "
                                    f"but it belongs to run {entry.record.run_id!r}", height=entry.height)
        return found
