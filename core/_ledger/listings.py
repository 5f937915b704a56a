"""Listings of the ledger: a run, the last records, every record from a block on. Each
record is proved as it is read; long listings stream (a few blocks or a page of a run at a
time) and do not keep what they read in the look-ups' cache, so that `log -n 0` of a million
records, or of a run of 100,000 tasks, holds a few blocks, not the listing (6 KB a record).

A mixin of :class:`~.ledger.Ledger`, beside :class:`~.proved.ProvedLookups`, whose proofs it
uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from .._errors import IndexTampered
from .._model import StoredBlock
from .lineage import LedgerRecord

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend, Located

    from .._log.trust import TreeHead
    from .._log.verified import Verifier

__all__ = ["Listings"]


class Listings:
    """Listings, proved as they are read (the state and proofs are the Ledger's)."""

    backend: Backend
    if TYPE_CHECKING:
        @property
        def verifier(self) -> Verifier: ...

        def tree_head(self) -> TreeHead: ...

        def listing(self, role: Any, path: str) -> Any: ...

        def _of_run(self, run_id: str, rows: list[Located], *, keep: bool = True) -> list[LedgerRecord]: ...

        def _proved(self, located: Located, *, keep: bool = True) -> LedgerRecord | None: ...

    def run(self, run_id: str) -> list[LedgerRecord]:
        """Every record of a run, each proved, and counted against the names kept: a record
        row whose run id was edited (or deleted) is noticed, not left out."""
        counted = self.listing("run", run_id)  # the bound and the counts, before the index is asked
        found = self._of_run(run_id, self.backend.by_run(run_id))
        if counted is not None:
            counted.add(found)
            counted.finish()
        return found

    def run_pages(self, run_id: str, size: int = 1_000) -> Iterator[list[LedgerRecord]]:
        """Every record of a run, as :meth:`run` gives them, a page of ``size`` at a time, so
        that a run of 100,000 tasks is never held whole (``log --run RUN -n 0``). Each record
        is proved as its page is read; the counts kept are checked once the last page has
        been read, so a reader that stops early checks nothing, and one that prints as it
        goes may learn of a deleted or edited row only at the end (an error, exit 1)."""
        if not self.backend.pages_runs:  # each page would read the whole run (over the network, for BAASH)
            whole = self.run(run_id)
            for start in range(0, len(whole), size):
                yield whole[start : start + size]
            return
        counted = self.listing("run", run_id)
        offset = 0
        while True:
            rows = self.backend.by_run_page(run_id, offset, size)
            found = self._of_run(run_id, rows, keep=False)  # read once: not kept for later look-ups
            if counted is not None:
                counted.add(found)
            if found:
                yield found
            if len(rows) < size:
                break
            offset += len(rows)
        if counted is not None:
            counted.finish()

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

    def recent(self, limit: int) -> list[LedgerRecord]:
        """The newest ``limit`` records of the verified head (all where ``limit`` is 0),
        oldest first, in a list (:meth:`tail` streams them)."""
        return list(self.tail(limit)[2])

    _TAIL_BLOCKS = 8  # blocks read at once
    _HELD = 10_000  # records a tail keeps from its walk back (about 60 MB); past that, read again

    def records_from(self, height: int = 0, stop: int | None = None) -> Iterator[LedgerRecord]:
        """Every record of the verified tree from block ``height`` on (to block ``stop``, else
        the head as verified when the listing starts), in ledger order, each proved as it is
        read, a few blocks at a time (memory stays bounded: a listing of a million records is
        never held). A block the back-end leaves out, or one holding fewer records than the
        verified tree says, is an error, not a shorter listing."""
        if stop is None:
            stop = self.tree_head().blocks
        while height < stop:
            end = min(stop, height + self._TAIL_BLOCKS)
            yield from self._proved_blocks(height, end)
            height = end

    def tail(self, limit: int, keep: Callable[[LedgerRecord], bool] | None = None
             ) -> tuple[int | None, bool, Iterator[LedgerRecord]]:
        """The last ``limit`` records that ``keep`` accepts (all of them where ``limit`` is 0),
        oldest first, as ``(how many, whether such records come before them, the records)``;
        the count is None for all. Walks back from the head proving what it reads: up to
        :data:`_HELD` records, record by record from the newest (the last 20 of a million
        prove about 20 records, not the blocks around them) and kept; past that, only counted
        a few blocks at a time, and streamed again from where they begin (a listing of a
        million records held them all: 6 KB a record)."""
        def kept(entries: Iterator[LedgerRecord]) -> Iterator[LedgerRecord]:
            return entries if keep is None else filter(keep, entries)

        if not limit:
            return None, False, kept(self.records_from(0))
        if limit <= self._HELD:
            found: list[LedgerRecord] = []  # newest first
            for entry in kept(self._newest_first()):
                if len(found) == limit:
                    return limit, True, reversed(found)
                found.append(entry)
            return len(found), False, reversed(found)
        count, height = 0, self.tree_head().blocks
        head = height  # read again up to the head counted, not past blocks appended since
        while height > 0:
            start = max(0, height - self._TAIL_BLOCKS)
            blocks = [0] * (height - start)
            for entry in kept(self._proved_blocks(start, height)):
                blocks[entry.height - start] += 1
            for at in range(height - 1, start - 1, -1):
                count += blocks[at - start]
                if count >= limit:
                    skip = count - limit
                    return limit, skip > 0 or at > 0, islice(kept(self.records_from(at, head)), skip, None)
            height = start
        return count, False, kept(self.records_from(0, head))

    def _newest_first(self) -> Iterator[LedgerRecord]:
        """The verified records from the newest back, each proved as it is read; blocks are
        read one, then two, then up to :data:`_TAIL_BLOCKS` at a time."""
        height, step = self.tree_head().blocks, 1
        while height > 0:
            start = max(0, height - step)
            for block in reversed(list(self._stored_blocks(start, height))):
                for position in range(len(block.records) - 1, -1, -1):
                    yield self._proved_at(block, position)
            height, step = start, min(2 * step, self._TAIL_BLOCKS)

    def _stored_blocks(self, start: int, stop: int) -> Iterator[StoredBlock]:
        """Blocks ``start`` to ``stop`` as stored, each with as many records as the verified
        tree places in it; a block left out is an error, not a shorter answer."""
        store = self.verifier.store
        expected = start
        for block in self.backend.blocks(start, stop):
            size = store.block_start(expected + 1) - store.block_start(expected)
            if block.height != expected or len(block.records) != size:
                raise IndexTampered(f"the back-end returned block {block.height} with {len(block.records)} records "
                                    f"where the verified tree has block {expected} with {size}", height=expected)
            yield block
            expected += 1
        if expected != stop:
            raise IndexTampered(f"the back-end returned no block {expected} of the verified tree", height=expected)

    def _proved_at(self, block: StoredBlock, position: int) -> LedgerRecord:
        from lineage_ledger.backends import Located

        # Not kept for later look-ups: a listing reads each record once.
        entry = self._proved(Located(block.height, position, block.records[position]), keep=False)
        if entry is None:  # cannot happen below the verified head: a record is proved or raises
            raise IndexTampered(f"record {position} of block {block.height} is not in the verified tree",
                                height=block.height)
        return entry

    def _proved_blocks(self, start: int, stop: int) -> Iterator[LedgerRecord]:
        for block in self._stored_blocks(start, stop):
            for position in range(len(block.records)):
                yield self._proved_at(block, position)
