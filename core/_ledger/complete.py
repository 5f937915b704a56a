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
  candidate naming it must be in the answer. Only the latest writer and reader of each
  batch of records are kept, so a full list is checked for those; pages of a list are not
  checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from .._canonical import format_time
from .._errors import IndexTampered
from .._log.names import Candidate

if TYPE_CHECKING:
    from .ledger import Ledger, LedgerRecord

__all__ = ["StaleNames", "check_latest", "check_listing", "named_by_a_verified_record"]


class StaleNames(Exception):  # noqa: N818 - a signal to look again, not an error
    """Names are kept for records past the bound: another process verified them (and may
    have dropped older entries this answer needs, see ``Verifier._compact_names``) since the
    bound was read. The caller reads the head again and asks again."""


def _candidates(ledger: Ledger, role: Literal["in", "out"], path: str, bound: int,
                final: bool) -> list[Candidate]:
    """Those below ``bound``: records verified after the index was asked need not be in its
    answer. Any past it (unless ``final``) raise :class:`StaleNames`."""
    # Read with the index rows where many files are looked up at once (a final look reads
    # them again); else now: another process may append or compact between two look-ups.
    batch = None if final else getattr(ledger._batch, "current", None)
    found = batch.names.get(path) if batch is not None else None
    if found is None:
        found = ledger.verifier.store.names(path) or []
    output = role == "out"
    mine = [c for c in found if c.output is output]
    if not final and any(c.leaf >= bound for c in mine):
        raise StaleNames
    return [c for c in mine if c.leaf < bound]


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
    """Every verified record below ``bound`` kept as naming ``path`` in ``role`` must be in ``listed``."""
    candidates = _candidates(ledger, role, path, bound, final)
    if not candidates:
        return
    have = {_leaf(ledger, entry) for entry in listed}
    missing = [c.leaf for c in candidates if c.leaf not in have]
    if not missing:
        return
    for _leaf_index, entry in _fetch(ledger, missing):
        side = entry.record.outputs if role == "out" else entry.record.inputs
        if path in side:
            raise _hidden(entry, role, path, "the index's list of them does not hold it")


def named_by_a_verified_record(ledger: Ledger, path: str) -> bool:
    """Whether a verified record names ``path`` (either role), from the names kept and the
    records proved, not from the index: which spelling of a path behind a symbolic link the
    ledger knows must not be the index's to say (with a spelling's rows deleted, the look-up
    fell back to another spelling, for which nothing was ever kept)."""
    bound = ledger._bound()
    leaves = [c.leaf for c in ledger.verifier.store.names(path) or () if c.leaf < bound]
    return any(path in entry.record.outputs or path in entry.record.inputs
               for _leaf, entry in _fetch(ledger, leaves))

