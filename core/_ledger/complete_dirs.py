"""Completeness of a directory's listing: ``verify-lineage DIR`` names every file below DIR
that verified records name and that is gone from disk, whatever the index lost.

The back-end's index lists the paths below a directory (``paths_under``); a path whose every
row was deleted, or moved out of the directory, drops out of that listing, and nothing was
left to prove. The names kept beside the verified tree (:mod:`lineage_ledger._log.names`)
count, for each directory, the (record, path, role) below it that verified records name (its
``DIRECTORY`` entries), and for each path the records that name it in each role. So:

* what the directory's entries count (each entry's record fetched, proved and read: it must
  name a path below the directory, else the entry is another directory's with the same key)
  is how many rows the index should hold below it;
* what the entries of the paths the index listed count (each entry's record proved and read
  in the same way: it must name that path in that role) is how many of those it listed.

Fewer listed than counted means the index hid a path that a verified record names below
the directory: :class:`~lineage_ledger.IndexTampered`, exit 1, never an answer without it.
More means the names themselves were changed. Where a record names two paths (two
directories) with the same key, whose count an entry is cannot be told: the directory is not
checked this way (a CRC-32 collision in one record). Records verified after the bound read
first (appended meanwhile) count on neither side; an entry past it (another process verified
and compacted meanwhile) makes the counts unsummable, and the caller reads again.

Cost: one names file for the directory, the names of each path listed (read with the
listing, a file each), and one record proved per distinct record behind those entries: what
verifying those files reads anyway; nothing that grows with the ledger beyond the directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from .._errors import IndexTampered, VerificationError
from .._log.names import DIRECTORY, INPUT, OUTPUT, Candidate, directories_of, path_key
from .complete import _REMEDY, StaleNames, _fetch, _names_another_with_key

if TYPE_CHECKING:
    from .ledger import Ledger, LedgerRecord

__all__ = ["DirectoryCount", "directory_count"]

_Asked = TypeVar("_Asked")
_ROLE_NAMES: dict[int, Literal["in", "out"]] = {INPUT: "in", OUTPUT: "out"}
_FETCHED_AT_ONCE = 2_000  # paths, then records, taken together: bounded memory for a directory of a million files


def directory_count(ledger: Ledger, directory: str, *, refresh: bool, final: bool) -> DirectoryCount | None:
    """A count of the paths the index lists below ``directory`` (a normal, absolute path) to be
    fed page by page; None where the tree keeps no names (verified under
    ``LINEAGE_AUDIT_NAMES=0``). ``refresh``: the verified head brought up to date first (a
    look again). Raises :class:`StaleNames` where an entry lies past the bound just read
    (unless ``final``: then the count checks nothing)."""
    base = directory.rstrip("/")
    bound = ledger._bound(refresh=refresh)
    kept = ledger.verifier.store.names(base)
    if kept is None:
        return None
    mine = [c for c in kept if c.role == DIRECTORY]
    count = DirectoryCount(ledger, base, bound)
    if any(c.leaf >= bound for c in mine):
        if not final:
            raise StaleNames
        count.summable = False
        return count
    key = path_key(base)
    for _leaf, entry, candidate in _proved_entries(ledger, [(c.leaf, c) for c in mine]):
        below = directories_of([*entry.record.outputs, *entry.record.inputs])
        if base not in below:
            continue  # another directory's entry under the same key
        if any(other != base and path_key(other) == key for other in below):
            count.summable = False  # the record names below two directories of this key
            return count
        count.expected += candidate.records
    return count


class DirectoryCount:
    """The rows the index's listing of one directory accounts for, against those the names
    kept say verified records put below it (:func:`directory_count`)."""

    def __init__(self, ledger: Ledger, base: str, bound: int) -> None:
        self.ledger, self.base, self.bound = ledger, base, bound
        self.expected = 0  # (record, path, role) below the directory, by its entries
        self.found = 0  # of those, the ones of the paths listed, by their entries
        self.summable = True

    def add(self, paths: Sequence[str], *, final: bool) -> None:
        """A page of the listing: each path's entries, proved, added up."""
        for start in range(0, len(paths), _FETCHED_AT_ONCE):
            self._add(paths[start : start + _FETCHED_AT_ONCE], final=final)

    def _add(self, paths: Sequence[str], *, final: bool) -> None:
        if not self.summable or not paths:
            return
        names = self.ledger.verifier.store.names_many(paths)
        if names is None:
            self.summable = False
            return
        wanted: list[tuple[int, tuple[str, Candidate]]] = []
        for path in paths:
            for candidate in names[path]:
                if candidate.role not in _ROLE_NAMES:
                    continue
                if candidate.leaf >= self.bound:
                    if not final:
                        raise StaleNames  # compacted meanwhile: counts may have moved past the bound
                    self.summable = False
                    return
                wanted.append((candidate.leaf, (path, candidate)))
        for start in range(0, len(wanted), _FETCHED_AT_ONCE):
            for _leaf, entry, (path, candidate) in _proved_entries(self.ledger, wanted[start : start + _FETCHED_AT_ONCE]):
                role = _ROLE_NAMES[candidate.role]
                side = entry.record.outputs if role == "out" else entry.record.inputs
                if path not in side:
                    continue  # another path's entry under the same key
                if _names_another_with_key(entry, role, path, path_key(path)):
                    self.summable = False
                    return
                self.found += candidate.records

    def finish(self) -> None:
        """The whole listing was added: raise :class:`IndexTampered` where it left out rows
        below the directory that verified records name."""
        if not self.summable or self.found == self.expected:
            return
        shown = self.base or "/"
        if self.found < self.expected:
            raise IndexTampered(
                f"the index lists the paths below {shown} that verified records name in "
                f"{self.found} of their {self.expected} places (a record naming a path, as input or output): "
                f"it left out {self.expected - self.found}, and the files they name, if gone, would go unnamed. "
                f"{_REMEDY}", path=shown)
        raise VerificationError(
            f"the paths the index lists below {shown} are named {self.found} times by verified records, but the "
            f"names kept beside the verified tree ({self.ledger.verifier.store.directory}) count {self.expected}: "
            "that directory was changed. Run `lineage-ledger reset-trust`, then verify-lineage")


def _proved_entries(ledger: Ledger, wanted: Sequence[tuple[int, _Asked]]) -> list[tuple[int, LedgerRecord, _Asked]]:
    """(leaf, its record proved, what was asked with it) for each of ``wanted``; each distinct
    record fetched once."""
    if not wanted:
        return []
    records = dict(_fetch(ledger, sorted({leaf for leaf, _what in wanted})))
    return [(leaf, records[leaf], what) for leaf, what in wanted if leaf in records]
