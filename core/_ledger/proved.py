"""The look-ups under every answer of a :class:`~.ledger.Ledger`: index rows, then their proof.

A back-end's index says which records name a path; nothing it says is taken on trust. Each
row is proved before it becomes an answer (:meth:`ProvedLookups._proved`: the record's
bytes hash to its id, and the id is the leaf the verified tree holds at that place), the
record must say what the row says (:meth:`~ProvedLookups._matching`), and a list must be as
long as the names the verified tree keeps (:mod:`.complete`). Rows for many paths can be
read ahead in a few statements (:mod:`.ahead`); they are proved the same way when used.

Why a mixin of its own: the public queries of :class:`~.ledger.Ledger` (``producers``,
``consumers``, ``last_seen``, ``run``...) are short compositions of these few look-ups, and
the proof is the part a change must not weaken; keeping it in one module, apart from the
writing and the tree head's upkeep, keeps it reviewable as a whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, cast

from .._errors import IndexTampered, RecordTampered
from .._files.hashing import lookup_paths
from .._log.trust import TreeHead
from .._log.verified import Verifier
from .._model import Record, StoredRecord
from .ahead import _BODIES_AHEAD, LookAhead, LookingAhead
from .complete import StaleNames, check_latest, check_listing, named_by_a_verified_record
from .lineage import LedgerRecord

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend, Located

    # The checks of .complete take a Ledger; this mixin is only ever part of one, which the
    # casts below say to the type checker (a cast does nothing at run time).
    from .ledger import Ledger

__all__ = ["ProvedLookups"]

_SINCE_PAGE = 8  # rows of a file's latest records read at first by _ended_since (most need one page)
# The most rows _ended_since reads past the latest by end: the answer is then the best of the
# 32 latest by end (all the records of a file that a scatter step's long tasks read at once).
_SINCE_MOST = 32
_DECODE_CACHE = 10_000  # decoded records kept (about 5 KiB each: 50,000 held 250 MiB in `depends --all`)


class ProvedLookups(LookingAhead):
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
        if record is None and not stored.body:
            # A row :meth:`_with_bodies` left without its body, the record decoded then, and the
            # cache cleared since, as it filled partway through the same list: the body is read
            # now (hashed as it was stored; one that is empty there fails as any other would).
            stored = StoredRecord(stored.id, self.backend.bodies([stored.id]).get(stored.id, b""))
            located = type(located)(located.height, located.position, stored)
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
        key = self.query_paths(path)[0]
        if batch is not None:
            batch.keys[path] = batch.keys[key] = key
        return key

    def query_paths(self, path: str) -> list[str]:
        """Every key the ledger may know ``path`` by that some record names, in the order
        :meth:`query_path` prefers them (the first is its answer); the path as given alone
        where no symbolic link makes its real path differ, or where no record names either.
        A task that read a file through a link names both spellings (the link's with
        ``alias_of``); one that read it by its real path, or a record of the Python API or of
        an earlier release, names one: the latest record to see the file may be under either."""
        batch: LookAhead | None = getattr(self._batch, "current", None)
        if batch is not None:
            if path in batch.spellings:
                return batch.spellings[path]
            if path in batch.keys:
                return [batch.keys[path]]  # a key of its own (a walk's listing said so), or worked out
        keys = lookup_paths(path)
        named = keys
        if len(keys) > 1:
            named = [candidate for candidate in keys
                     if (named_by_a_verified_record(cast("Ledger", self), candidate)
                         or self.backend.find_page("out", path=candidate, limit=1)
                         or self.backend.find_page("in", path=candidate, limit=1))] or keys[:1]
            if batch is not None:  # and for the key query_path answers, which callers pass on
                batch.spellings[path] = batch.spellings[named[0]] = named
        return named

    # -- the latest record naming a path; a run's records ----------------------------------
    def _latest(self, role: Literal["in", "out"], path: str) -> tuple[list[LedgerRecord], bool]:
        """The record with ``path`` in ``role`` that ended last: one index step where the
        back-end indexes end times (the record is proved, and must have ended when the
        index says), else every such record; and whether the list is every such record."""
        batch: LookAhead | None = getattr(self._batch, "current", None)
        if not self.backend.keeps_end_times or (batch is not None and (role, path) in batch.places):
            # Every one, its list checked complete: where the rows were read ahead (a window
            # of files), that list is what the producers' look-up of the lineage that follows
            # needs too, so the latest costs no look-up and no check of its own.
            return self._find(role, path, None), True
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
                    if entry.record.order_end_text != ended:
                        raise IndexTampered(f"the index says record {entry.id[:16]} ended at {ended!r}; it ended "
                                            f"at {entry.record.order_end_text}", height=entry.height, path=path)
            try:
                if found is None or entries:
                    check_latest(cast("Ledger", self), role, path, entries[-1] if entries else None, bound, final=final)
            except StaleNames:
                continue  # names kept past the bound: look again from a head read now
            return entries, False
        raise AssertionError("unreachable: the final look is never stale")

    def _ended_since(self, role: Literal["in", "out"], path: str, since: str) -> Iterator[LedgerRecord]:
        """The records with ``path`` in ``role`` that ended at ``since`` or later, latest first
        (end time, then ledger order), a page at a time as the caller reads on: each proved,
        naming the path, and ended when its index row says. Only where the back-end indexes
        end times. (Their list is not checked complete against the names kept, which keep
        each batch's latest by end alone: a row deleted here leaves the answer that the
        latest by end gives, checked complete by :meth:`_latest`; the audit finds the row.)
        At most :data:`_SINCE_MOST` rows: a scatter step of long tasks that all read one source
        at once ended each after every other started, and proving every reader on each pre-run
        check of the source made the checks of a step quadratic (tests/test_attack_s46.py)."""
        offset, page = 0, _SINCE_PAGE
        while offset < _SINCE_MOST:
            rows = self.backend.find_ended_since(role, path, since, offset, page)
            claimed = {(located.height, located.position): ended for located, ended in rows}
            # A row appended after the verified head proves to nothing: it is left out, as by
            # every look-up (it need not be in an answer given from that head).
            for entry in self._find(role, path, None, [located for located, _ in rows]):
                ended = claimed[(entry.height, entry.position)]
                if entry.record.order_end_text != ended or ended < since:
                    raise IndexTampered(f"the index says record {entry.id[:16]} ended at {ended!r}; it ended "
                                        f"at {entry.record.order_end_text}", height=entry.height, path=path)
                yield entry
            if len(rows) < page:
                return
            offset, page = offset + page, _SINCE_MOST - offset - page

    def _of_run(self, run_id: str, rows: list[Located], *, keep: bool = True) -> list[LedgerRecord]:
        found = self._proved_all(rows, keep=keep)
        for entry in found:
            if entry.record.run_id != run_id:
                raise IndexTampered(f"the index lists record {entry.id[:16]} in run {run_id!r}, "
                                    f"but it belongs to run {entry.record.run_id!r}", height=entry.height)
        return found
