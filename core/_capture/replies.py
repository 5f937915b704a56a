"""The engine's side of a recording process: its replies, and taking its work back when it is lost.

:class:`~.process.ProcessCapture` starts the child, puts reports in its ring and ends it;
this base class holds what the child's answers update (the reports it has not acknowledged,
the replies callers wait for) and the code that runs on the reader thread or when the child
is lost. The split follows the threads: :mod:`.process` is what the engine's threads call,
this module is what the reader thread and the fallback to this process do, and the state
between them (with its locking rules) is declared here, once.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from .._errors import LedgerError
from .channel import MESSAGE, Channel
from .ring import Ring
from .task import TaskCapture, TaskRun, _settle
from .wire import _Pending, decode_report

log = logging.getLogger("lineage_ledger.capture")


class _ChildReplies(TaskCapture):
    """The child's state as this process sees it, and what its replies do to it."""

    # Made by ProcessCapture.__init__ (and remade after a fork), not by _reset_child_state:
    # they outlive the children a capture starts and ends.
    _start_lock: threading.Lock
    _state: threading.Condition  # replies wake it

    def _reset_child_state(self) -> None:
        self._channel: Channel | None = None
        self._ring: Ring | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = False
        self._lost = False  # the child died or could not start: this process records
        self._orphans_recorded = threading.Event()
        self._closing = False
        self._closed_reply: tuple[bool, int] | None = None
        self._seq = 0  # reports put in the ring; guarded by the channel's send lock
        self._unacked: deque[_Pending] = deque()
        self._replies: dict[int, Any] = {}
        self._tokens = itertools.count(1)
        self._failed_in_child = 0

    # -- replies (the reader thread) ----------------------------------------------------------
    def _read(self, channel: Channel) -> None:
        try:
            while (frame := channel.receive()) is not None:
                if frame[0] == MESSAGE:
                    message = Channel.message(frame[1])
                    # A child let go by _end_child (still running when it gave up) speaks to a
                    # state that is no longer its own: only its log lines are still passed on.
                    if self._channel is channel or message[0] == "log":
                        self._handle(message)
        except Exception as err:  # noqa: BLE001 - a garbled reply ends the child's service
            log.error("lineage-ledger: bad reply from the recording process: %s", err)
            if self._process is not None and self._channel is channel:
                self._process.kill()  # so that a writer waiting on a full ring gives up now
        if self._channel is not channel:
            return  # let go: what it had not journaled was taken back then (_end_child)
        with self._state:
            clean = self._closing and not self._unacked and self._closed_reply is not None
        if not clean:
            status = self._process.poll() if self._process is not None else None
            self._child_lost("ended" if status is None else f"ended with status {status}")

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            _, upto, results, failures = message
            self._failed_in_child = failures
            unacked = self._unacked
            # Only this thread takes from the left, and the deque's own operations are
            # atomic: no lock that a writer waiting on a full ring might hold.
            while unacked and unacked[0][0] <= upto:
                seq, _payload, future = unacked.popleft()
                if future is not None:
                    ok, value = results.get(seq, (True, None))
                    if ok:
                        _settle(future, value)
                    else:
                        _settle(future, error=value if isinstance(value, BaseException) else LedgerError(value))
        elif kind == "unreadable":
            _, first, last = message
            taken = []
            for pending in [p for p in list(self._unacked) if first <= p[0] <= last]:
                try:
                    self._unacked.remove(pending)
                except ValueError:  # taken by a concurrent _child_lost, which records it
                    continue
                taken.append(pending)
            super()._record_batch(self._decoded(taken))
        elif kind == "log":
            _, level, name, text = message
            logging.getLogger(name).log(level, "%s", text)
        else:
            with self._state:
                if kind == "ready":
                    self._ready = True
                elif kind == "closed":
                    self._closed_reply = (bool(message[1]), int(message[2]))
                    self._failed_in_child = int(message[2])
                    with self._lock:
                        self._outputs.update(message[3])
                else:  # "flushed" and "digest" answer a token
                    self._replies[message[1]] = message[2]
                self._state.notify_all()

    # -- the child lost: this process records -------------------------------------------------
    def _child_lost(self, how: str) -> None:
        """Take back what the child had not journaled and record it, and what follows, here."""
        orphans = self._take_back()
        if orphans is None:
            return
        log.error("lineage-ledger: the recording process %s; %d task(s) it had not journaled and "
                  "all later ones are recorded in this process", how, len(orphans))
        self._record_taken(orphans)

    def _take_back(self) -> list[_Pending] | None:
        """From now on this process records: the reports the child has not acknowledged, taken
        from it; None if they were taken already (the child was lost before)."""
        channel = self._channel
        lock = channel.send_lock if channel is not None else threading.Lock()
        # A writer holding the lock is in write(2) to a dead child: it fails at once (EPIPE).
        with lock:
            if self._lost:
                return None
            self._lost = True
            taken = list(self._unacked)
            self._unacked.clear()
        with self._state:
            self._state.notify_all()
        return taken

    def _record_taken(self, taken: list[_Pending]) -> None:
        """Record (journal, then ship) reports taken back from the child, here and now."""
        try:
            super()._record_batch(self._decoded(taken))
        finally:
            self._orphans_recorded.set()

    def _decoded(self, pending: list[_Pending]) -> list[tuple[TaskRun, Future[str | None] | None]]:
        """The reports this process takes back to record itself. They were pickled here, so
        they unpickle here; one that does not (a class whose state does not round-trip) is
        logged and counted as not recorded."""
        runs: list[tuple[TaskRun, Future[str | None] | None]] = []
        for _, payload, future in pending:
            try:
                runs.append((decode_report(payload), future))
            except Exception as err:  # noqa: BLE001 - never into the engine unless asked
                with self._lock:
                    self._failed_here += 1
                log.error("lineage-ledger: a task report does not unpickle in this process either; "
                          "it is not recorded: %s", err)
                if future is not None and self.raise_errors:
                    _settle(future, error=err)
                elif future is not None:
                    _settle(future, None)
        return runs

    # -- asking ---------------------------------------------------------------------------------
    def _ask(self, kind: str, argument: Any, deadline: float | None) -> tuple[bool, Any]:
        """Send a request and wait for its answer; (False, None) if none comes in time."""
        token = next(self._tokens)
        channel = self._channel
        try:
            assert channel is not None
            channel.send_message((kind, token, argument))
        except (OSError, AssertionError) as err:
            if self._closing:  # asked while another thread ends the child: no answer, no alarm
                return False, None
            self._child_lost(f"could not be written to ({err})")
            return False, None
        with self._state:
            while token not in self._replies:
                remaining = _left(deadline)
                if self._lost or (remaining is not None and remaining <= 0):
                    return False, None
                self._state.wait(remaining)
            return True, self._replies.pop(token)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
