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

The core hands such a write to the plugin as :class:`lineage_ledger.RecordPending` (its
``write``: ``done()``, ``error``, ``add_done_callback``); this module keeps what is Airflow's:
the messages, the try's claim while the write may land, and the last hook's give-up: a
write still going on as the task process ends is journaled in the spool after all where the
spool takes it now (the core's :func:`keep_in_spool`, which its ``atexit`` does for other
engines; a task process ends with ``os._exit``, which runs no ``atexit``), and shipped later;
only where the spool still refuses it is it said NOT recorded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from lineage_ledger._capture.pending import keep_in_spool

if TYPE_CHECKING:
    from lineage_ledger import PendingWrite

log = logging.getLogger("lineage_ledger.airflow")


_pending_lock = threading.Lock()
#: Tries whose record's write outlived its wait: what to say and do when its outcome is known.
_pending: dict[tuple[str, int], tuple[str, PendingWrite, Callable[[], None]]] = {}


def await_outcome(key: tuple[str, int], task_id: str, write: PendingWrite, wait: float,
                  unclaim: Callable[[], None], why: str = "") -> None:
    """Say that try ``key`` is not recorded yet (``why``: the core's reason), and say its
    outcome once there is one (``unclaim`` lets a later report of the try record it, if the
    write failed)."""
    with _pending_lock:
        _pending[key] = (task_id, write, unclaim)
    log.error("lineage-ledger: try %d of %s is not recorded yet: the ledger has not taken it within %gs (%s). The "
              "record lands if the ledger takes it before this process ends, and this log then says 'recorded after all'; if it does not, this log says so at ERROR",
              key[1], task_id, wait, why or "locked or slow?")
    write.add_done_callback(lambda ended: _say_outcome(key, ended))


def _say_outcome(key: tuple[str, int], write: PendingWrite) -> None:
    with _pending_lock:
        entry = _pending.get(key)
        if entry is None or entry[1] is not write:
            return  # another write of the try
        del _pending[key]
        given_up = key in _given_up
        kept = key in _kept
        _given_up.discard(key)
        _kept.discard(key)
    task_id, _, unclaim = entry
    if write.error is None:
        if given_up:  # the thread got there in the moment between give_up() and the exit
            if kept:
                log.warning("lineage-ledger: try %d of %s is recorded after all: the ledger took it as this process "
                            "ended (its copy in the spool is not shipped twice)", key[1], task_id)
            else:
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
#: Of those, the ones journaled in the spool after all (shipped from there).
_kept: set[tuple[str, int]] = set()


def _forget_in_child() -> None:
    """A forked child (a LocalExecutor worker, its task processes) has none of its parent's
    writes: its last hook must not say the parent's tries are lost, nor unclaim them."""
    global _pending_lock
    _pending_lock = threading.Lock()  # perhaps held by another thread of the parent at the fork
    _pending.clear()
    _given_up.clear()
    _kept.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def give_up() -> None:
    """The process is ending (its write's thread ends with it): keep each try whose write has
    not ended in the spool after all, where it takes it now (its disk has room again), for the
    machine's shipper to ship; else say it NOT recorded, and let a later report record it."""
    with _pending_lock:
        left = [(key, entry) for key, entry in _pending.items()
                if key not in _given_up and not entry[1].done()]
        for key, _ in left:
            _given_up.add(key)
    for key, (task_id, write, unclaim) in left:
        try:
            directory = keep_in_spool(write)
        except Exception as err:  # noqa: BLE001 - said below; a plugin never fails the task
            if write.done() and write.error is None:
                continue  # it landed meanwhile, and said so
            unclaim()
            log.error("lineage-ledger: try %d of %s is NOT recorded: this process ends before the ledger took it, and "
                      "the spool cannot take it either (%s); its outputs are vouched for by no record unless the "
                      "scheduler's sweep records the try (it does once this process has ended, where it runs on "
                      "this machine)",
                      key[1], task_id, err)
            continue
        # Kept claimed: the record ships from the spool, so no other report writes a second one.
        with _pending_lock:
            _kept.add(key)
        log.warning("lineage-ledger: try %d of %s waits in the spool %s: this process ends before the ledger took "
                    "it, so it was journaled there after all; the machine's shipper (or `lineage-ledger spool ship`) "
                    "ships it", key[1], task_id, directory)
