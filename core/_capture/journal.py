"""Where a :class:`~.task.TaskCapture`'s records are kept: the durable spool, else the ledger itself.

A finished task's record and the manifests of its directories are journaled in the spool
with one write. Where the spool refuses them (its disk full, its directory read-only; not a
full spool's backlog, :class:`SpoolFull`, which the back-end would not take now either), the
ledger itself is the one place left: they are appended to it, said once per capture. A caller
that may not wait for ever gives ``straight_wait``; a write that outlives it goes on in its
thread (:mod:`.pending`) and the task is *not recorded yet* until it lands or is refused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._errors import RecordPending, SpoolError, SpoolFull
from .._model import Record
from .files import FoundFiles
from .pending import say_not_recorded_yet, write_in_thread
from .records import TaskRecords
from .report import TaskRun

if TYPE_CHECKING:
    from .._ledger.deferred import DeferredLedger

__all__ = ["TaskJournal"]

log = logging.getLogger("lineage_ledger.capture")


class TaskJournal(TaskRecords):
    """Journals the records of the :class:`~.task.TaskCapture` that derives from it, which
    sets these attributes up and opens the recorder (``_ensure_open``)."""

    url: str | None
    spool: str | None
    _failed_here: int
    _straight: DeferredLedger | None
    _said_straight: bool

    def _commit(self, run: TaskRun, files: FoundFiles | None, straight_wait: float | None = None) -> str:
        """Build ``run``'s record and journal it (after the manifests it needs)."""
        record = self._build(run, files)
        manifests = self._manifest_records(files)
        try:
            return self._journal([*manifests, record], straight_wait)[-1]
        except BaseException:
            self._forget_manifests(manifests)
            raise

    def _journal(self, records: list[Record], straight_wait: float | None = None) -> list[str]:
        """Journal ``records`` with one write; where the spool refuses them, append them to the
        ledger itself (waiting at most ``straight_wait`` seconds); their ids."""
        try:
            return self._ensure_open().record_many(records)
        except SpoolError as err:  # its disk is full, its directory read-only
            if isinstance(err, SpoolFull):  # the back-end is behind: it would not take them now
                raise
            return self._straight_into_the_ledger(records, err, straight_wait)

    def _straight_into_the_ledger(self, records: list[Record], spool_error: SpoolError,
                                  wait: float | None = None) -> list[str]:
        """Append ``records``, which the spool refused, to the ledger itself: the one place
        left to keep them. Said once per capture. Within ``wait`` seconds where one is given;
        past it the append goes on in its thread (that ledger is not used again), and
        :class:`RecordPending` hands it to the caller: it may still land."""
        from .._ledger.deferred import spool_first

        with self._lock:
            if self._straight is None:
                self._straight = spool_first(self.url, spool=self.spool)
            straight, said, self._said_straight = self._straight, self._said_straight, True
        stored = [record.stored() for record in records]
        write = None if wait is None else write_in_thread(straight, stored)
        if write is not None and not write.wait(wait):  # still waiting for a lock or a server
            with self._lock:
                if self._straight is straight:  # leave it that ledger
                    self._straight = None
            raise RecordPending(f"{spool_error}, and the ledger did not take it either: no answer within "
                                f"{wait:g}s (locked or slow?); its write goes on in this process", write)
        try:
            if write is None:
                straight.append_records(stored)
            elif write.error is not None:
                raise write.error
        except Exception as err:
            raise SpoolError(f"{spool_error}, and the ledger did not take it either: {err}") from err
        if not said:
            log.warning("lineage-ledger: %s; records go straight into the ledger %s instead while the spool "
                        "cannot take them", spool_error, straight.url)
        return [entry.id for entry in stored]

    def _not_recorded_yet(self, run: TaskRun, pending: RecordPending) -> None:
        with self._lock:
            self._failed_here += 1  # until it lands
        say_not_recorded_yet(f"task {run.task_name} ({run.task_id})", pending, self._landed_late)

    def _landed_late(self) -> None:
        with self._lock:
            self._failed_here -= 1
