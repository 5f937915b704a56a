"""Completeness of a targeted answer: no record the verified tree holds was left out of it.

Every row a back-end's index returns is proved (:meth:`Ledger._proved`), but a row that was
*deleted*, or edited to point elsewhere, returns nothing to prove. The names kept beside the
verified tree (:mod:`lineage_ledger._log.names`) list, for each path and each run, the
verified records that may name it, with how many records each entry stands for. After the
index answered, the candidates it did not return are fetched by their place in the ledger,
proved like any row, and read: one that does name the path, and should have been in the
answer, means the index hid it, and the read fails with :class:`~lineage_ledger.IndexTampered`.
(A candidate that does not name the path is a hash collision, and is passed over.)

Three questions are checked this way:

* the latest record to read or write a path (pre-run checks, ``verify-lineage``): a
  candidate that ended later than the answer, or at the same time and later in the ledger,
  must not name the path;
* the records that wrote or read a path, or belong to a run (``producers`` for ``why``,
  ``consumers`` for ``depends``, ``run`` for ``log --run``): each candidate naming it must be
  in the answer, and the answer must hold as many records as the candidates' counts add up
  to (:class:`Listing`), so a row deleted anywhere in the list is noticed; a list read page
  by page is counted as its pages come;
* the last page of a run (``log --run -n N``) and the first page of a file's readers
  (``depends``, the oldest fifty): the candidates between the page's ends must be on it, and
  the index's count of the whole list may not fall short of the counts.

Pages in the middle of a list (``depends --all`` counts them all at its end) are not
checked on their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from .._errors import IndexTampered, VerificationError
from .._log.names import INPUT, OUTPUT, RUN, Candidate, path_key

if TYPE_CHECKING:
    from .ledger import Ledger, LedgerRecord

__all__ = ["Listing", "StaleNames", "check_latest", "check_listing", "listing", "named_by_a_verified_record"]


Role = Literal["in", "out", "run"]
_ROLES = {"in": INPUT, "out": OUTPUT, "run": RUN}


class StaleNames(Exception):  # noqa: N818 - a signal to look again, not an error
    """Names are kept for records past the bound: another process verified them (and may
    have dropped older entries this answer needs, see ``Verifier._compact_names``) since the
    bound was read. The caller reads the head again and asks again."""


def _candidates(ledger: Ledger, role: Role, path: str, bound: int,
                final: bool) -> list[Candidate]:
    """Those below ``bound``: records verified after the index was asked need not be in its
    answer. Any past it (unless ``final``) raise :class:`StaleNames`."""
    mine = _kept(ledger, role, path, final) or []
    if not final and any(c.leaf >= bound for c in mine):
        raise StaleNames
    return [c for c in mine if c.leaf < bound]


def _kept(ledger: Ledger, role: Role, path: str, final: bool) -> list[Candidate] | None:
    """Every entry kept for ``path`` in ``role``, past any bound too; None where the tree keeps
    no names (one verified under ``LINEAGE_AUDIT_NAMES=0``)."""
    # Read with the index rows where many files are looked up at once (a final look reads
    # them again); else now: another process may append or compact between two look-ups.
    batch = None if final else getattr(ledger._batch, "current", None)
    found = batch.names.get(path) if batch is not None else None
    if found is None:
        found = ledger.verifier.store.names(path)
        if found is None:
            return None
    code = _ROLES[role]
    return [c for c in found if c.role == code]


def _leaf(ledger: Ledger, entry: LedgerRecord) -> int:
    return ledger.verifier.store.block_start(entry.height) + entry.position


def _fetch(ledger: Ledger, leaves: Sequence[int]) -> list[tuple[int, LedgerRecord]]:
    """The records at ``leaves`` of the verified tree, each proved."""
    if not leaves:
        return []  # the common case: the index listed every candidate
    proved = []
    for leaf, located in sorted(ledger.verifier.located_at(list(leaves)).items()):
        entry = ledger._proved(located)
        if entry is not None:
            proved.append((leaf, entry))
    return proved


def _side(entry: LedgerRecord, role: Role) -> Mapping[str, object]:
    """What ``entry`` names in ``role``: its outputs, its inputs, or its run id."""
    record = entry.record
    return record.outputs if role == "out" else record.inputs if role == "in" else {record.run_id: None}


_REMEDY = ("Index rows were deleted or edited; run verify-lineage for a full audit, then `lineage-ledger "
           "repair-index` to rebuild the index from the verified records")
_HIDDEN_VERBS = {"out": "wrote", "in": "read", "run": "belongs to run"}
_VERBS = {"out": "wrote", "in": "read", "run": "belong to run"}


def _hidden(entry: LedgerRecord, role: Role, path: str, answered: str) -> IndexTampered:
    return IndexTampered(
        f"the index left out record {entry.id[:16]} (block {entry.height}, position {entry.position}), "
        f"which {_HIDDEN_VERBS[role]} {path}: {answered}. {_REMEDY}", height=entry.height,
        path=None if role == "run" else path)


def check_latest(ledger: Ledger, role: Role, path: str, answer: LedgerRecord | None,
                 bound: int, *, final: bool = False) -> None:
    """``answer`` (None: no record) must be the latest record with ``path`` in ``role``
    among the first ``bound`` records (those stored before the index was asked)."""
    candidates = _candidates(ledger, role, path, bound, final)
    if not candidates:
        return
    if answer is not None:
        at = _leaf(ledger, answer)
        candidates = [c for c in candidates if c.leaf != at]
        if not candidates:
            return
        ended = answer.record.order_end_text
    for leaf, entry in _fetch(ledger, [c.leaf for c in candidates]):
        side = _side(entry, role)
        if path not in side:
            continue  # another path with the same key
        if answer is None:
            raise _hidden(entry, role, path, "the index answered that no record did")
        if (entry.record.order_end_text, leaf) > (ended, at):
            raise _hidden(entry, role, path, f"it ended after record {answer.id[:16]}, which the index "
                                             "answered as the latest")


def check_listing(ledger: Ledger, role: Role, path: str, listed: Sequence[LedgerRecord],
                  bound: int, *, final: bool = False) -> None:
    """``listed`` (proved records, each naming ``path`` in ``role``) must hold every verified
    record below ``bound`` that names it: each kept candidate that names it, and as many
    records as the kept counts add up to."""
    kept = _kept(ledger, role, path, final)
    if kept is None:
        return
    if not final and any(c.leaf >= bound for c in kept):
        raise StaleNames
    if len(kept) == len(listed) and all(c.records == 1 for c in kept):
        # The common case, settled without a Listing: every entry kept stands for one
        # record, and the list holds exactly the records at those places (each below the
        # bound). What Listing.finish would count then agrees whatever the keys.
        places = {_leaf(ledger, entry) for entry in listed}
        if len(places) == len(listed) and all(c.leaf < bound and c.leaf in places for c in kept):
            return
    listing = Listing(ledger, role, path, kept, bound)
    listing.add(listed)
    listing.finish()


def listing(ledger: Ledger, role: Role, path: str) -> Listing | None:
    """A :class:`Listing` for a list read page by page after this call (``depends --all``);
    None where the tree keeps no names. The bound is the verified head read now, brought
    past every entry kept (another process may be verifying: a few looks)."""
    for attempt in range(5):
        bound = ledger._bound(refresh=attempt > 0)
        kept = _kept(ledger, role, path, final=True)
        if kept is None:
            return None
        if all(c.leaf < bound for c in kept) or attempt == 4:
            return Listing(ledger, role, path, kept, bound)
        time.sleep(0.05 * attempt)  # names written, their head not yet: a writer commits
    raise AssertionError("unreachable")


class Listing:
    """Counts a list of proved records naming ``path`` in ``role`` (given whole or a page at
    a time, in any order, each record once) against the names kept, as of ``bound``."""

    def __init__(self, ledger: Ledger, role: Role, path: str, kept: list[Candidate], bound: int) -> None:
        self.ledger, self.role, self.path, self.bound = ledger, role, path, bound
        self.candidates = [c for c in kept if c.leaf < bound]
        # Entries past the bound (a final look, or a writer still at work): an upkeep may have
        # added older records' counts to one of them, so the counts below cannot be summed.
        self.summable = len(self.candidates) == len(kept)
        self._wanted = {c.leaf for c in self.candidates}
        self.named: dict[int, LedgerRecord] = {}  # the candidates' records, as listed
        self.found = 0  # records listed below the bound
        self.lowest: int | None = None  # the oldest record listed
        self.highest: int | None = None  # and the newest

    def add(self, entries: Sequence[LedgerRecord]) -> None:
        for entry in entries:
            leaf = _leaf(self.ledger, entry)
            self.lowest = leaf if self.lowest is None else min(self.lowest, leaf)
            self.highest = leaf if self.highest is None else max(self.highest, leaf)
            if leaf < self.bound:
                self.found += 1
                if leaf in self._wanted:
                    self.named[leaf] = entry

    def finish(self) -> None:
        """The whole list was added: raise :class:`IndexTampered` where it left out a record
        the names keep, or holds fewer records than their counts add up to."""
        expected = self._expected(self._ours(lambda _leaf: True))
        if expected is None or self.found == expected:
            return
        if self.found < expected:
            raise self._short(self.found, expected)
        raise VerificationError(
            f"the index lists {self.found} verified records that {_VERBS[self.role]} {self.path}, but the names "
            f"kept beside the verified tree ({self.ledger.verifier.store.directory}) count {expected}: that "
            "directory was changed. Run `lineage-ledger reset-trust`, then verify-lineage")

    def finish_page(self, total: int) -> None:
        """The last page of a list was added (``log --run`` shows the last twenty), and the
        index counted ``total`` for the whole: no candidate newer than the page's oldest
        record may be missing from it, and ``total`` may not fall short of the counts kept
        (records appended after the bound may add to it)."""
        lowest = self.lowest
        expected = self._expected(self._ours(lambda leaf: lowest is None or leaf > lowest))
        if expected is not None and total < expected:
            raise self._short(total, expected)

    def finish_first_page(self, total: int, *, exact: bool) -> None:
        """The first page of a list was added (``depends`` shows the oldest fifty readers of
        each file), and the index counted ``total`` for the whole (``exact``: not stopped
        short): no candidate older than the page's newest record may be missing from it,
        and an exact ``total`` may not fall short of the counts kept."""
        highest = self.highest
        expected = self._expected(self._ours(lambda leaf: highest is not None and leaf < highest))
        if exact and expected is not None and total < expected:
            raise self._short(total, expected)

    def _ours(self, must_list: Callable[[int], bool]) -> dict[int, LedgerRecord]:
        """The candidates' records that name the path, by leaf: those listed, and the others
        fetched and proved; one of those that ``must_list`` says belonged in the list raises."""
        ours = dict(self.named)
        missing = [c.leaf for c in self.candidates if c.leaf not in self.named]
        for leaf, entry in _fetch(self.ledger, missing):
            if self.path in _side(entry, self.role):
                if must_list(leaf):
                    raise _hidden(entry, self.role, self.path,
                                  "the index's list of them does not hold it" if self.lowest is not None
                                  else "the index answered that no record did")
                ours[leaf] = entry
        return ours

    def _expected(self, ours: dict[int, LedgerRecord]) -> int | None:
        """How many records below the bound name the path, by the counts kept; None where
        that cannot be summed."""
        if not self.summable:
            return None
        key = path_key(self.path)
        expected = 0
        for candidate in self.candidates:
            entry = ours.get(candidate.leaf)
            if entry is None:
                continue  # another path's entry under the same key (its record was read)
            if _names_another_with_key(entry, self.role, self.path, key):
                return None  # the record names another path with the same key: whose count it is is unknown
            expected += candidate.records
        return expected

    def _short(self, found: int, expected: int) -> IndexTampered:
        return IndexTampered(
            f"the index lists {found} of the {expected} verified records that {_VERBS[self.role]} {self.path}: "
            f"it left out {expected - found}. {_REMEDY}", path=None if self.role == "run" else self.path)


# By (record id, role): the keys under which the record names two paths or more. A record's
# paths were scanned once per path asked about; the 10,000 outputs of one task, each checked
# by `verify-lineage DIR`, made that 10^8 keys (74 s against 1.4 s of hashing). The id is the
# hash of the proved bytes, so what is kept here holds for any ledger that proved it.
_CLASHES: dict[tuple[str, Role], frozenset[int]] = {}
_CLASHES_KEPT = 10_000
_NONE: frozenset[int] = frozenset()


def _clashing_keys(entry: LedgerRecord, role: Role) -> frozenset[int]:
    side = _side(entry, role)
    if len(side) < 2:
        return _NONE
    cached = _CLASHES.get((entry.id, role))
    if cached is None:
        seen: set[int] = set()
        twice: set[int] = set()
        for key in map(path_key, side):
            (twice if key in seen else seen).add(key)
        cached = frozenset(twice)
        if len(_CLASHES) >= _CLASHES_KEPT:
            _CLASHES.clear()
        _CLASHES[(entry.id, role)] = cached
    return cached


def _names_another_with_key(entry: LedgerRecord, role: Role, path: str, key: int) -> bool:
    """Whether ``entry`` names, in ``role``, a path other than ``path`` whose key is ``key``."""
    side = _side(entry, role)
    if path in side:  # always so for the records a listing counts: each names the path
        return key in _clashing_keys(entry, role)
    return any(path_key(other) == key for other in side)


def named_by_a_verified_record(ledger: Ledger, path: str) -> bool:
    """Whether a verified record names ``path`` (either role), from the names kept and the
    records proved, not from the index: which spelling of a path behind a symbolic link the
    ledger knows must not be the index's to say (with a spelling's rows deleted, the look-up
    fell back to another spelling, for which nothing was ever kept). A run's or a directory's
    entry under the same key (a collision) names no file: not fetched."""
    bound = ledger._bound()
    leaves = [c.leaf for c in ledger.verifier.store.names(path) or () if c.leaf < bound and c.role in (INPUT, OUTPUT)]
    return any(path in entry.record.outputs or path in entry.record.inputs
               for _leaf, entry in _fetch(ledger, leaves))

