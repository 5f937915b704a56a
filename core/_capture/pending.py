"""A write of records straight into the ledger, on its own thread: :class:`PendingWrite`.

A record the spool refuses (its disk full, its directory read-only) has one place left: the
ledger itself. A caller that may not wait for ever (a task process that its engine kills for
overtime) waits a bounded time; the write cannot be called back, so past that wait it goes on
in its thread, and in a process that lives on it lands once the ledger lets go (a lock is
released, a slow server answers). :class:`~lineage_ledger.RecordPending` hands the caller this
handle, so that it can say the truth: *not recorded yet*, then *recorded after all* or *NOT
recorded*, instead of calling the record lost while it may still land.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._errors import RecordPending
    from .._ledger.deferred import DeferredLedger
    from .._model import StoredRecord

__all__ = ["PendingWrite", "say_not_recorded_yet", "write_in_thread"]

log = logging.getLogger("lineage_ledger.capture")


class PendingWrite:
    """One write of ``record_ids`` into the ledger, going on in a thread of this process.

    ``done()`` says whether it has ended; then ``error`` is None where the ledger took the
    records, else why it refused them. ``add_done_callback(fn)`` calls ``fn(write)`` once it
    ends (at once if it has), on the writing thread: keep it short. A process that ends
    before the write does ends it too, without a callback: nothing then says it; the caller
    that holds the handle says it, if it must (Airflow's last hook does).
    """

    def __init__(self, record_ids: Sequence[str]) -> None:
        #: The ids of the records written, in order; the last is the task's own record (the
        #: ones before it are manifests of its directories).
        self.record_ids = tuple(record_ids)
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[PendingWrite], None]] = []

    @property
    def record_id(self) -> str:
        """The id of the task's own record (the last one written)."""
        return self.record_ids[-1]

    @property
    def error(self) -> BaseException | None:
        """Why the ledger refused the records; None while the write goes on, and once it landed."""
        with self._lock:
            return self._error

    def done(self) -> bool:
        """Whether the write has ended (landed or refused)."""
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` seconds (None: until it ends); whether it has ended."""
        return self._ended.wait(timeout)

    def add_done_callback(self, callback: Callable[[PendingWrite], None]) -> None:
        """Call ``callback(self)`` when the write ends: on the writing thread, or here and now
        if it has ended. An error it raises is logged, never raised."""
        with self._lock:
            if not self._ended.is_set():
                self._callbacks.append(callback)
                return
        _call(callback, self)

    def _end(self, error: BaseException | None) -> None:
        with self._lock:
            self._error = error
            self._ended.set()  # under the lock: a callback added now is called by its adder
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback, self)

    def __repr__(self) -> str:
        state = "in flight" if not self.done() else "landed" if self.error is None else f"refused ({self.error})"
        return f"<PendingWrite of {len(self.record_ids)} record(s), {self.record_id[:12]}: {state}>"


def _call(callback: Callable[[PendingWrite], None], write: PendingWrite) -> None:
    try:
        callback(write)
    except Exception as err:  # noqa: BLE001 - the writing thread must end cleanly
        log.error("lineage-ledger: a callback on the end of a straight write failed: %s", err, exc_info=err)


def write_in_thread(ledger: DeferredLedger, stored: list[StoredRecord]) -> PendingWrite:
    """Start appending ``stored`` to ``ledger`` on a daemon thread; its handle."""
    write = PendingWrite([entry.id for entry in stored])

    def append() -> None:
        error: BaseException | None = None
        try:
            ledger.append_records(stored)
        except BaseException as err:  # noqa: BLE001 - handed to whoever holds the handle
            error = err
        write._end(error)

    threading.Thread(target=append, name="lineage-ledger-straight", daemon=True).start()
    return write


def say_not_recorded_yet(what: str, pending: RecordPending, landed: Callable[[], None]) -> None:
    """Log that ``what`` (``task NAME (ID)``) is not recorded yet, then, once its write ends,
    that it is recorded after all (``landed()`` is called first) or NOT recorded (ERROR)."""
    log.warning("lineage-ledger: %s is not recorded yet: %s. The record lands if the ledger takes it before this "
                "process ends, and this log then says 'recorded after all'; if the ledger refuses it, this log "
                "says 'NOT recorded'", what, pending)

    def said(write: PendingWrite) -> None:
        if write.error is None:
            landed()
            log.warning("lineage-ledger: %s is recorded after all: the ledger took it late", what)
        else:
            log.error("lineage-ledger: %s is NOT recorded: the ledger refused it at last: %s", what, write.error)

    pending.write.add_done_callback(said)
