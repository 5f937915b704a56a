"""One background thread that takes queued items in batches: the capture's worker.

A pool of threads, each woken for one item, spends more on waking threads and passing the
GIL between them than a no-op task's record costs to build; the engine's own threads pay
for that too. So one thread drains the queue, and when it wakes for a few items it waits
a moment (``linger``) for more, so that a burst of reports costs one wake-up, not one each.

Guarantees kept from the thread pool it replaces:

* a normal interpreter exit loses nothing queued: like ``concurrent.futures``, the worker
  is drained from ``threading``'s exit hook, before non-daemon threads are joined and before
  ``atexit`` handlers (the recorder's, which ship the journal) run; after that hook,
  :meth:`BatchWorker.put` reports that no worker will take the item, and the caller does
  the work itself;
* a forked child starts afresh: it drops its copy of the parent's queue (the parent
  records those items) and starts its own worker on its first item.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BatchWorker", "at_threading_exit"]

Item = TypeVar("Item")

_LIVE: weakref.WeakSet[BatchWorker] = weakref.WeakSet()
_exiting = False


class BatchWorker(Generic[Item]):
    """Calls ``process(batch)`` on its own thread for items given to :meth:`put`, in order.

    ``process`` must not raise (it owns the items' error handling); if it does, the
    exception is passed to ``on_error`` and the worker carries on with the next batch.
    """

    def __init__(
        self,
        process: Callable[[list[Item]], None],
        *,
        name: str,
        on_error: Callable[[BaseException], None],
        linger: float = 0.002,
        batch: int = 256,
    ) -> None:
        self._process = process
        self._on_error = on_error
        self.name = name
        self.linger = linger
        self.batch = batch
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        lock = threading.Lock()
        self._wake = threading.Condition(lock)  # the worker waits here
        self._settled = threading.Condition(lock)  # wait() callers wait here
        self._queue: deque[Item] = deque()
        self._thread: threading.Thread | None = None
        self._idle = False
        self._stopping = False
        self._hurry = 0  # wait() callers: no lingering while someone waits
        self._queued = 0
        self._done = 0

    # -- the caller's side ------------------------------------------------------------
    def put(self, item: Item) -> bool:
        """Queue ``item``; False if the interpreter is exiting and no worker will take it."""
        with self._wake:
            if _exiting:
                return False
            self._queue.append(item)
            self._queued += 1
            if self._thread is None:
                self._start()
            elif self._idle or len(self._queue) == self.batch:
                self._wake.notify()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every item queued before this call is processed; True if in time."""
        if threading.current_thread() is self._thread:
            return False  # called from ``process`` itself: it cannot wait for its own batch
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            target = self._queued
            if self._done >= target:
                return True
            self._hurry += 1
            self._wake.notify()
            try:
                while self._done < target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._settled.wait(remaining)
                return True
            finally:
                self._hurry -= 1

    def stop(self, timeout: float | None = None) -> bool:
        """Process what is queued, then end the thread; a later :meth:`put` starts a new one."""
        with self._wake:
            thread = self._thread
            if thread is None:
                return True
            self._stopping = True
            self._wake.notify()
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def pending(self) -> int:
        with self._wake:
            return self._queued - self._done

    # -- the worker's side ------------------------------------------------------------
    def _start(self) -> None:
        self._stopping = False
        # A daemon thread: the exit hook below drains it before the interpreter ends,
        # and no other thread has to remember to stop it.
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _take(self) -> list[Item] | None:
        with self._wake:
            while not self._queue:
                if self._stopping:
                    self._thread = None
                    self._settled.notify_all()
                    return None
                self._idle = True
                self._wake.wait()
                self._idle = False
            if len(self._queue) < self.batch and not (self._hurry or self._stopping):
                self._wake.wait(self.linger)  # put() notifies again once a batch is full
            items = list(self._queue)
            self._queue.clear()
            return items

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            try:
                self._process(items)
            except BaseException as err:  # noqa: BLE001 - the worker must outlive any failure
                self._on_error(err)
            with self._wake:
                self._done += len(items)
                if self._hurry:
                    self._settled.notify_all()


def _drain_all_at_exit() -> None:
    global _exiting
    workers = list(_LIVE)
    for worker in workers:
        worker.stop()
    _exiting = True
    for worker in workers:  # items put while the others were draining
        worker.stop()


def _after_fork_in_child() -> None:
    # The parent's worker thread did not come along, and its lock may have been held
    # at the fork; the parent processes the items that were queued.
    for worker in list(_LIVE):
        worker._reset()


def at_threading_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the main thread ends, before threads are joined and before
    ``atexit`` handlers (the recorder's flush) run: the hook ``concurrent.futures`` uses for
    its pools. Hooks run in reverse order of registration."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(hook)
    else:  # pragma: no cover - every CPython this project supports has it
        import atexit

        atexit.register(hook)


at_threading_exit(_drain_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
