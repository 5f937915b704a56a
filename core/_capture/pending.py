"""A write of records straight into the ledger, on its own thread: :class:`PendingWrite`.

A record the spool refuses (its disk full, its directory read-only) has one place left: the
ledger itself. A caller that may not wait for ever (a task process that its engine kills for
overtime) waits a bounded time; the write cannot be called back, so past that wait it goes on
in its thread, and in a process that lives on it lands once the ledger lets go (a lock is
released, a slow server answers). :class:`~lineage_ledger.RecordPending` hands the caller this
handle, so that it can say the truth: *not recorded yet*, then *recorded after all* or *NOT
recorded*, instead of calling the record lost while it may still land.

A process that ends normally while such a write goes on would end it too, and the record with
it (it is in no spool: the spool refused it). So a write the capture said *not recorded yet*
of is settled at exit (:func:`keep_in_spool`): journaled in the spool after all, synced, where
the spool takes it now (its disk has room again), for ``lineage-ledger spool ship`` or the next
opener to ship; else said NOT recorded. One line at exit says which.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._errors import RecordPending
    from .._ledger.deferred import DeferredLedger
    from .._model import StoredRecord

__all__ = ["PendingWrite", "keep_in_spool", "say_not_recorded_yet", "write_in_thread"]

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
        # Where the records go, and what they are: what keep_in_spool needs (write_in_thread sets them).
        self._ledger: DeferredLedger | None = None
        self._stored: Sequence[StoredRecord] = ()

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
    write._ledger, write._stored = ledger, list(stored)

    def append() -> None:
        error: BaseException | None = None
        try:
            ledger.append_records(stored)
        except BaseException as err:  # noqa: BLE001 - handed to whoever holds the handle
            error = err
        write._end(error)

    threading.Thread(target=append, name="lineage-ledger-straight", daemon=True).start()
    return write


def keep_in_spool(write: PendingWrite) -> str:
    """Journal ``write``'s records in its ledger's spool after all, synced, for another process
    (``lineage-ledger spool ship``, the next opener) to ship once this one has ended; the spool
    directory. Its segment stays locked by this process until it ends. A record that lands in
    the ledger meanwhile is not shipped twice (shipping skips the records a ledger has). Raises
    :class:`~lineage_ledger.SpoolError` where the spool still cannot take them."""
    from .._errors import SpoolError
    from .._ledger.spool import SpoolWriter

    if write._ledger is None:
        raise SpoolError("this write names no ledger whose spool could keep it")
    directory = write._ledger.spool_dir
    writer = SpoolWriter(directory)
    try:
        writer.append_stored(list(write._stored))
        writer.current.sync()
    except BaseException as err:
        writer.current.delete()  # an empty segment, or one whose lines may not be on disk
        if isinstance(err, OSError):
            raise SpoolError(f"cannot sync the spool {writer.current.path}: {err.strerror or err}") from err
        raise
    return directory


_unsettled_lock = threading.Lock()
#: Writes said *not recorded yet*, not ended: what each is (``task NAME (ID)``).
_unsettled: dict[PendingWrite, str] = {}
#: Writes settled as the process ends: True where the spool kept the records, False where not.
_settled_at_exit: dict[PendingWrite, bool] = {}


def say_not_recorded_yet(what: str, pending: RecordPending, landed: Callable[[], None]) -> None:
    """Log that ``what`` (``task NAME (ID)``) is not recorded yet, then, once its write ends,
    that it is recorded after all (``landed()`` is called first) or NOT recorded (ERROR); at a
    normal exit before then, that it waits in the spool, or is NOT recorded."""
    log.warning("lineage-ledger: %s is not recorded yet: %s. The record lands if the ledger takes it before this "
                "process ends, and this log then says 'recorded after all'; if the ledger refuses it, this log "
                "says 'NOT recorded'; if this process ends first, this log says where the record waits, or that "
                "it is NOT recorded", what, pending)
    with _unsettled_lock:
        _unsettled[pending.write] = what

    def said(write: PendingWrite) -> None:
        with _unsettled_lock:
            _unsettled.pop(write, None)
            at_exit = _settled_at_exit.get(write)
        if write.error is None:
            landed()
            if at_exit is None:
                log.warning("lineage-ledger: %s is recorded after all: the ledger took it late", what)
            else:
                log.warning("lineage-ledger: %s is recorded after all: the ledger took it as this process ended "
                            "(whatever this log says of it at exit; a copy in the spool is not shipped twice)", what)
        elif at_exit is None:
            log.error("lineage-ledger: %s is NOT recorded: the ledger refused it at last: %s", what, write.error)

    pending.write.add_done_callback(said)


def _settle_at_exit() -> None:
    """The process ends normally: keep in the spool each write said *not recorded yet* that
    has not ended (its thread ends with the process), and say where it waits, or that it is lost."""
    with _unsettled_lock:
        left = [(write, what) for write, what in _unsettled.items() if not write.done()]
        for write, _ in left:
            _settled_at_exit[write] = False
    for write, what in left:
        try:
            directory = keep_in_spool(write)
        except Exception as err:  # noqa: BLE001 - said, and the next write is tried
            if write.done() and write.error is None:
                continue  # it landed meanwhile, and said so
            log.error("lineage-ledger: %s is NOT recorded: this process ends before the ledger took it, and the "
                      "spool cannot take it either (%s); its outputs are vouched for by no record", what, err)
            continue
        with _unsettled_lock:
            _settled_at_exit[write] = True
        log.warning("lineage-ledger: %s waits in the spool %s: this process ends before the ledger took it, so it "
                    "was journaled there after all; `lineage-ledger spool ship` (or the next run) ships it",
                    what, directory)


def _forget_in_child() -> None:
    """A forked child has none of its parent's writes' threads: it settles none of them."""
    global _unsettled_lock
    _unsettled_lock = threading.Lock()  # perhaps held by another thread of the parent at the fork
    _unsettled.clear()
    _settled_at_exit.clear()


atexit.register(_settle_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
