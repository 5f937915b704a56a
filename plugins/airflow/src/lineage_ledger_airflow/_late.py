"""A try's record that the ledger had not taken when the plugin stopped waiting for it.

Where the spool refuses a record (its disk full or read-only), :meth:`TaskCapture.record_now`
appends it to the ledger itself, waiting at most ``straight_wait`` seconds: a task process
that waited out a locked SQLite ledger would be killed for overtime. The append goes on in a
thread after that wait, and in a process that lives on (the scheduler's sweep and failure
handling, the API server, ``dag.test()``) it lands once the ledger lets go. So the plugin
says which it is: a record the ledger refused is NOT recorded; one whose write outlived the
wait is *not recorded yet*, and the same log says later whether it landed (``recorded after
all``) or not (``NOT recorded``: refused at last, or the process ended first). Its try stays
claimed meanwhile, so no other report of it writes a second record while it may still land.

:class:`TryCapture` is the core's capture with one change: the thread of a straight write
that outlives its wait is handed to the caller as a :class:`LateWrite` (the core leaves it
anonymous: it cannot tell whether it landed).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from lineage_ledger import TaskCapture

log = logging.getLogger("lineage_ledger.airflow")


class LateWrite:
    """One straight write that outlived its wait: its outcome, once it has one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended = False
        self.error: BaseException | None = None
        self._then: Callable[[LateWrite], None] | None = None

    def end(self, error: BaseException | None) -> None:
        with self._lock:
            self._ended, self.error = True, error
            then = self._then
        if then is not None:
            then(self)

    def ended(self) -> bool:
        with self._lock:
            return self._ended

    def then(self, callback: Callable[[LateWrite], None]) -> None:
        """Call ``callback(self)`` when the write ends (now, if it has)."""
        with self._lock:
            self._then = callback
            ended = self._ended
        if ended:
            callback(self)


class TryCapture(TaskCapture):
    """:class:`TaskCapture` whose straight writes that outlive their wait are kept track of."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._late_here = threading.local()

    def take_late(self) -> LateWrite | None:
        """The write of this thread's last ``record_now`` that outlived its wait, if any."""
        late, self._late_here.write = getattr(self._late_here, "write", None), None
        return late

    def _append_within(self, straight: Any, stored: list[Any], wait: float) -> None:
        # As the core's, with the thread's outcome kept (the core's own lock and ledger
        # attribute: the stuck ledger is not used again).
        write = LateWrite()
        finished = threading.Event()

        def append() -> None:
            error: BaseException | None = None
            try:
                straight.append_records(stored)
            except BaseException as err:  # noqa: BLE001 - given to the caller
                error = err
            finished.set()
            write.end(error)

        thread = threading.Thread(target=append, name="lineage-ledger-straight", daemon=True)
        thread.start()
        if not finished.wait(wait):  # still waiting for a lock or a server: leave it that ledger
            with self._lock:
                if self._straight is straight:  # type: ignore[has-type]  # the core's attribute
                    self._straight = None
            self._late_here.write = write
            raise TimeoutError(f"no answer within {wait:g}s (locked or slow?)")
        thread.join()
        if write.error is not None:
            raise write.error


_pending_lock = threading.Lock()
#: Tries whose record's write outlived its wait: what to say and do when its outcome is known.
_pending: dict[tuple[str, int], tuple[str, LateWrite, Callable[[], None]]] = {}


def await_outcome(key: tuple[str, int], task_id: str, write: LateWrite, wait: float,
                  unclaim: Callable[[], None]) -> None:
    """Say that try ``key`` is not recorded yet, and say its outcome once there is one
    (``unclaim`` lets a later report of the try record it, if the write failed)."""
    with _pending_lock:
        _pending[key] = (task_id, write, unclaim)
    log.error("lineage-ledger: try %d of %s is not recorded yet: the ledger has not taken it within %gs (the "
              "error above says why). Its write goes on in this process: the record lands if the ledger takes "
              "it before this process ends, and this log then says 'recorded after all'; if it does not, this "
              "log says so at ERROR", key[1], task_id, wait)
    write.then(lambda ended: _say_outcome(key, ended))


def _say_outcome(key: tuple[str, int], write: LateWrite) -> None:
    with _pending_lock:
        entry = _pending.get(key)
        if entry is None or entry[1] is not write:
            return  # another write of the try
        del _pending[key]
        given_up = key in _given_up
        _given_up.discard(key)
    task_id, _, unclaim = entry
    if write.error is None:
        if given_up:  # the thread got there in the moment between give_up() and the exit
            log.error("lineage-ledger: try %d of %s is recorded after all, after this log said it was not: the "
                      "ledger took it as this process ended", key[1], task_id)
        else:
            log.warning("lineage-ledger: try %d of %s is recorded after all: the ledger took it late", key[1], task_id)
        return
    if not given_up:
        unclaim()
        log.error("lineage-ledger: try %d of %s is NOT recorded: the ledger refused it at last (%s); its outputs "
                  "are vouched for by no record", key[1], task_id, write.error)


#: Tries said NOT recorded as the process ends, whose write had not ended by then.
_given_up: set[tuple[str, int]] = set()


def _forget_in_child() -> None:
    """A forked child (a LocalExecutor worker, its task processes) has none of its parent's
    writes: its last hook must not say the parent's tries are lost, nor unclaim them."""
    global _pending_lock
    _pending_lock = threading.Lock()  # perhaps held by another thread of the parent at the fork
    _pending.clear()
    _given_up.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def give_up() -> None:
    """The process is ending: say each try whose write has not ended as NOT recorded (the
    write's thread ends with the process), and let a later report record it."""
    with _pending_lock:
        left = [(key, entry) for key, entry in _pending.items()
                if key not in _given_up and not entry[1].ended()]
        for key, _ in left:
            _given_up.add(key)
    for key, (task_id, _, unclaim) in left:
        unclaim()
        log.error("lineage-ledger: try %d of %s is NOT recorded: this process ends before the ledger took it; its "
                  "outputs are vouched for by no record", key[1], task_id)
