"""Completeness of a targeted answer: no record the verified tree holds was left out of it.

Every row a back-end's index returns is proved (:meth:`Ledger._proved`), but a row that was
*deleted* returns nothing to prove. The names kept beside the verified tree
(:mod:`lineage_ledger._log.names`) list, for each path, the verified records that may name
it. After the index answered, the candidates it did not return are fetched by their place
in the ledger, proved like any row, and read: one that does name the path, and should have
been in the answer, means the index hid it, and the read fails with
:class:`~lineage_ledger.IndexTampered`. (A candidate that does not name the path is a hash
collision, and is passed over.)

Two questions are checked this way:

* the latest record to read or write a path (pre-run checks, ``verify-lineage``): a
  candidate that ended later than the answer, or at the same time and later in the ledger,
  must not name the path;
* the records that wrote or read a path (``producers`` for ``why``, ``consumers``): each
  candidate naming it must be in the answer, and the answer must hold as many records as
  the counts kept with the candidates add up to, so a row deleted anywhere in the list is
  noticed. Pages of a list are not checked (``depends`` without ``--all``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from .._canonical import format_time
from .._errors import IndexTampered, VerificationError
from .._log.names import Candidate, path_key

if TYPE_CHECKING:
    from .ledger import Ledger, LedgerRecord

__all__ = ["Listing", "StaleNames", "check_latest", "check_listing", "listing", "named_by_a_verified_record"]


class StaleNames(Exception):  # noqa: N818 - a signal to look again, not an error
    """Names are kept for records past the bound: another process verified them (and may
    have dropped older entries this answer needs, see ``Verifier._compact_names``) since the
    bound was read. The caller reads the head again and asks again."""


def _candidates(ledger: Ledger, role: Literal["in", "out"], path: str, bound: int,
                final: bool) -> list[Candidate]:
    """Those below ``bound``: records verified after the index was asked need not be in its
    answer. Any past it (unless ``final``) raise :class:`StaleNames`."""
    mine = _kept(ledger, role, path, final) or []
    if not final and any(c.leaf >= bound for c in mine):
        raise StaleNames
    return [c for c in mine if c.leaf < bound]


def _kept(ledger: Ledger, role: Literal["in", "out"], path: str, final: bool) -> list[Candidate] | None:
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
    output = role == "out"
    return [c for c in found if c.output is output]


def _leaf(ledger: Ledger, entry: LedgerRecord) -> int:
    return ledger.verifier.store.block_start(entry.height) + entry.position


def _fetch(ledger: Ledger, leaves: Sequence[int]) -> list[tuple[int, LedgerRecord]]:
    """The records at ``leaves`` of the verified tree, each proved."""
    proved = []
    for leaf, located in sorted(ledger.verifier.located_at(list(leaves)).items()):
        entry = ledger._proved(located)
        if entry is not None:
            proved.append((leaf, entry))
    return proved


def _hidden(entry: LedgerRecord, role: str, path: str, answered: str) -> IndexTampered:
    verb = "wrote" if role == "out" else "read"
    return IndexTampered(
        f"the index left out record {entry.id[:16]} (block {entry.height}, position {entry.position}), "
        f"which {verb} {path}: {answered}. Index rows were deleted or edited; run verify-lineage "
        "for a full audit", height=entry.height, path=path)


def check_latest(ledger: Ledger, role: Literal["in", "out"], path: str, answer: LedgerRecord | None,
                 bound: int, *, final: bool = False) -> None:
    """``answer`` (None: no record) must be the latest record with ``path`` in ``role``
    among the first ``bound`` records (those stored before the index was asked)."""
    candidates = _candidates(ledger, role, path, bound, final)
    if not candidates:
        return
    if answer is not None:
        ended = format_time(answer.record.ended)
        at = _leaf(ledger, answer)
        candidates = [c for c in candidates if c.leaf != at]
        if not candidates:
            return
    for leaf, entry in _fetch(ledger, [c.leaf for c in candidates]):
        side = entry.record.outputs if role == "out" else entry.record.inputs
        if path not in side:
            continue  # another path with the same key
        if answer is None:
            raise _hidden(entry, role, path, "the index answered that no record did")
        if (format_time(entry.record.ended), leaf) > (ended, at):
            raise _hidden(entry, role, path, f"it ended after record {answer.id[:16]}, which the index "
                                             "answered as the latest")


def check_listing(ledger: Ledger, role: Literal["in", "out"], path: str, listed: Sequence[LedgerRecord],
                  bound: int, *, final: bool = False) -> None:
    """``listed`` (proved records, each naming ``path`` in ``role``) must hold every verified
    record below ``bound`` that names it: each kept candidate that names it, and as many
    records as the kept counts add up to."""
    kept = _kept(ledger, role, path, final)
    if kept is None:
        return
    if not final and any(c.leaf >= bound for c in kept):
        raise StaleNames
    listing = Listing(ledger, role, path, kept, bound)
    listing.add(listed)
    listing.finish()


def listing(ledger: Ledger, role: Literal["in", "out"], path: str) -> Listing | None:
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

    def __init__(self, ledger: Ledger, role: Literal["in", "out"], path: str, kept: list[Candidate],
                 bound: int) -> None:
        self.ledger, self.role, self.path, self.bound = ledger, role, path, bound
        self.candidates = [c for c in kept if c.leaf < bound]
        # Entries past the bound (a final look, or a writer still at work): an upkeep may have
        # added older records' counts to one of them, so the counts below cannot be summed.
        self.summable = len(self.candidates) == len(kept)
        self._wanted = {c.leaf for c in self.candidates}
        self.named: dict[int, LedgerRecord] = {}  # the candidates' records, as listed
        self.found = 0  # records listed below the bound

    def add(self, entries: Sequence[LedgerRecord]) -> None:
        for entry in entries:
            leaf = _leaf(self.ledger, entry)
            if leaf < self.bound:
                self.found += 1
                if leaf in self._wanted:
                    self.named[leaf] = entry

    def finish(self) -> None:
        """Raise :class:`IndexTampered` where the list left out a record the names keep."""
        role, path = self.role, self.path
        missing = [c.leaf for c in self.candidates if c.leaf not in self.named]
        for _leaf_index, entry in _fetch(self.ledger, missing):
            side = entry.record.outputs if role == "out" else entry.record.inputs
            if path in side:
                raise _hidden(entry, role, path, "the index's list of them does not hold it")
        if not self.summable:
            return
        key = path_key(path)
        expected = 0
        for candidate in self.candidates:
            entry = self.named.get(candidate.leaf)
            if entry is None:
                continue  # another path's entry under the same key (its record was read above)
            side = entry.record.outputs if role == "out" else entry.record.inputs
            if any(other != path and path_key(other) == key for other in side):
                return  # that record names another path with the same key: whose count it is is unknown
            expected += candidate.count
        if self.found == expected:
            return
        verb = "wrote" if role == "out" else "read"
        if self.found < expected:
            raise IndexTampered(
                f"the index lists {self.found} records that {verb} {path}, but {expected} verified records "
                f"did: it left out {expected - self.found}. Index rows were deleted or edited; run "
                "verify-lineage for a full audit", path=path)
        raise VerificationError(
            f"the index lists {self.found} verified records that {verb} {path}, but the names kept beside "
            f"the verified tree ({self.ledger.verifier.store.directory}) count {expected}: that directory was "
            "changed. Run `lineage-ledger reset-trust`, then verify-lineage")


def named_by_a_verified_record(ledger: Ledger, path: str) -> bool:
    """Whether a verified record names ``path`` (either role), from the names kept and the
    records proved, not from the index: which spelling of a path behind a symbolic link the
    ledger knows must not be the index's to say (with a spelling's rows deleted, the look-up
    fell back to another spelling, for which nothing was ever kept)."""
    bound = ledger._bound()
    leaves = [c.leaf for c in ledger.verifier.store.names(path) or () if c.leaf < bound]
    return any(path in entry.record.outputs or path in entry.record.inputs
               for _leaf, entry in _fetch(ledger, leaves))

