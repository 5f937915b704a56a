"""Recording in a process of its own: the engine's thread puts one small frame in shared memory.

Every thread of a Python process shares one GIL. Building a record, its canonical bytes, the
journal line and the SQL behind it cost a no-op task about as much as the engine's own
bookkeeping, and on a thread of the engine's process all of it holds the engine's threads
up. :class:`ProcessCapture` is a :class:`TaskCapture` whose :meth:`~TaskCapture.submit` and
:meth:`~TaskCapture.post` encode the report (a tuple of its fields, pickled: about 2 us) and
put it in a :class:`~._ring.Ring` shared with ``python -m lineage_ledger._capture.child``,
which hashes, builds, journals and ships the records with an ordinary :class:`TaskCapture`.

Why a ring rather than a pipe or a worker thread: on the machines we measured, waking a
thread costs hundreds of microseconds of CPU, and a ``write(2)`` per task, which releases
the GIL, made the engine's threads wait to take it back. Putting a frame in the ring is a
copy under the GIL, and the ring lives in a mapping that a ``kill -9`` of the engine's
process right after ``post`` returns does not take away.

The messages and the encoding of a report are in :mod:`.wire`; what the child's replies do,
and taking its work back when it is lost, in :mod:`.replies` (the reader thread's side).

What each side can count on:

* The child acknowledges reports once their records are journaled; until then the parent
  keeps them. If the child dies, the parent records what was not acknowledged, and every
  later task, itself. If the end of recording gives up on a child still running (slow, or
  stopped), the parent journals what was not acknowledged itself before it lets the child
  go: the child may still die before it journals them. A record journaled by both is built
  from the same report, so it has one id, and the ledger keeps it once (``append_records``
  skips the ids it holds).
* If the engine's process dies, even by ``kill -9``, the child's input ends: it takes
  everything published in the ring, records it, flushes and exits. It ignores SIGINT and
  SIGTERM, which reach the whole process group; the parent's end decides when it stops.
* The ring holds 4 MiB of reports (about 16,000). If the child falls that far behind,
  ``post`` waits for it: the queue pushes back instead of growing without bound. If the
  child dies meanwhile, the waiting ``post`` records here.
* A process forked from the engine's records in itself: at the fork it closes its copies of
  the pipes and unmaps the ring, so the child still sees its input end when the engine's
  process ends.
* A report the child cannot unpickle (a parameter whose class only the engine's process can
  import) is sent back and recorded in the engine's process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any

from .._environment import current_environment
from .._files.hashing import normalize_path
from .._launch import module_command
from .channel import Channel
from .drain import at_threading_exit
from .replies import _ChildReplies, _left
from .ring import Ring
from .task import TaskRun
from .wire import _NUDGE, REPORT, REPORT_WITH_ID, _Pending, decode_report, encode_report

# The protocol moved to .wire; decode_report, encode_report and REPORT_WITH_ID are still
# importable from here, where the child and the tests have imported them from.
__all__ = ["ProcessCapture", "decode_report"]

log = logging.getLogger("lineage_ledger.capture")
_LIVE: weakref.WeakSet[ProcessCapture] = weakref.WeakSet()
_exiting = False  # past the exit hook: no new recording process
# Module globals read at each start, so that a test can shrink the ring for one capture.
_RING_SIZE = 4 << 20  # about 16,000 reports
_LARGEST_REPORT = 1 << 20  # larger reports (huge parameters) are recorded in this process


class ProcessCapture(_ChildReplies):
    """A :class:`TaskCapture` that records in a child process; same calls, same guarantees.

    ``start_timeout`` bounds how long :meth:`open` waits for the child to have opened the
    ledger; ``exit_timeout`` how long the end of the engine's process waits for the child
    to ship what it holds (what it has not shipped by then, it still ships on its own).
    """

    def __init__(self, url: str | None = None, *, engine: str, start_timeout: float = 60.0,
                 exit_timeout: float = 15.0, **options: Any) -> None:
        super().__init__(url, engine=engine, **options)
        self.start_timeout = start_timeout
        self.exit_timeout = exit_timeout
        self._start_lock = threading.Lock()
        self._state = threading.Condition()  # replies wake it
        self._reset_child_state()
        _LIVE.add(self)

    @property
    def failures(self) -> int:
        return self._failed_here + self._failed_in_child

    @property
    def unjournaled(self) -> int:
        """Reports handed to the recording process that it has not acknowledged as journaled
        yet: until it does, only this process and memory shared with it hold them."""
        return len(self._unacked)

    @property
    def child_pid(self) -> int | None:
        """The recording process's pid while one runs (for tests and diagnostics)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    # -- the engine-facing calls ----------------------------------------------------------
    def open(self) -> None:
        """Start the recording process and wait (``start_timeout``) until it has the ledger."""
        if not self._child_running():
            return
        deadline = time.monotonic() + self.start_timeout
        with self._state:
            while not (self._ready or self._lost):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("lineage-ledger: the recording process is slow to open the ledger; "
                                "tasks queue for it meanwhile")
                    return
                self._state.wait(remaining)

    def submit(self, run: TaskRun) -> Future[str | None]:
        future: Future[str | None] = Future()
        run = self._stamped(run)  # here, not in the child: the same record whichever builds it
        if not self._send(run, future):
            super()._record_or_queue(run, future)
        return future

    def post(self, run: TaskRun) -> None:
        run = self._stamped(run)
        if not self._send(run, None):
            super()._record_or_queue(run, None)

    def flush(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        if self._channel is not None and not self._lost:
            answered, value = self._ask("flush", _left(deadline), deadline)
            if answered:
                done = bool(value)
            elif not self._lost:
                return False  # no answer in time
        if self._lost and not self._orphans_recorded.wait(_left(deadline)):
            return False
        # Reports recorded in this process: the fallback, and what the child sent back.
        return super().flush(_left(deadline)) and done

    def close(self, timeout: float | None = None) -> bool:
        # One deadline for the whole close: the flush, the child's end and the release each
        # given the full limit made a close with the back-end down wait up to three times it.
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.flush(timeout)
        done = self._end_child(self.exit_timeout if deadline is None else _left(deadline) or 0.0) and done
        self._worker.stop()
        return self._release(_left(deadline)) and done

    def recorded_digest(self, path: str) -> dict[str, Any] | None:
        entry = super().recorded_digest(path)  # recorded here (fallback), if anything
        if self._channel is not None and not self._lost:
            answered, value = self._ask("digest", normalize_path(path), time.monotonic() + 30)
            if answered and value is not None:
                return dict(value)
        return entry

    # -- sending (the engine's threads) -------------------------------------------------------
    def _send(self, run: TaskRun, future: Future[str | None] | None) -> bool:
        """Put ``run`` in the child's ring; False if this process must record it instead."""
        if self._lost or (self._channel is None and not self._child_running()):
            return False  # (a forked copy is marked lost at the fork)
        payload = encode_report(run)
        if payload is None:
            return False
        channel = self._channel
        if channel is None or len(payload) > _LARGEST_REPORT:
            return False
        with channel.send_lock:  # one order for sequence numbers and frames
            ring = self._ring
            if self._lost or ring is None:
                return False
            self._seq += 1
            self._unacked.append((self._seq, payload, future))
            kind = REPORT if future is None else REPORT_WITH_ID
            try:
                if not ring.put(kind, payload):
                    self._wait_for_room(ring, kind, payload)
                if future is not None:  # someone waits: the child must not linger
                    channel.write_locked(_NUDGE)
                return True
            except OSError as err:
                failure = err
        self._child_lost(f"could not be written to ({failure})")  # takes this report back too
        return True

    def _wait_for_room(self, ring: Ring, kind: bytes, payload: bytes) -> None:
        """The ring is full: wait for the child to take some (the pushback), unless it died."""
        pause = 0.0005
        while not ring.put(kind, payload):
            process = self._process
            if process is None or process.poll() is not None:
                raise OSError("the recording process has ended")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def _child_running(self) -> bool:
        """Start the child on first use; False if this process must record instead."""
        if self._channel is not None or self._lost:
            return not self._lost
        if _exiting:
            return False
        with self._start_lock:
            if self._channel is None and not self._lost:
                self._spawn()
        return not self._lost

    def _spawn(self) -> None:
        config = {
            "url": self.url, "engine": self.engine, "run_id": self.run_id, "threads": self.threads,
            "spool": self.spool, "raise_errors": self.raise_errors,
            "recorder_options": self.recorder_options, "exit_timeout": self.exit_timeout,
            # The engine's process is where tasks ran; the child only records them.
            "environment": current_environment(),
        }
        ring = None
        try:
            if not sys.executable:
                raise OSError("no Python interpreter to start (sys.executable is empty)")
            ring = Ring.create(_RING_SIZE)
            config["ring"] = {"fd": ring.fd, "size": ring.size}
            process = subprocess.Popen(
                module_command("lineage_ledger._capture.child", json.dumps(config)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True,
                pass_fds=(ring.fd,),
            )
        except (OSError, TypeError, ValueError) as err:
            if ring is not None:
                ring.close()
            log.error("lineage-ledger: cannot start the recording process (%s); recording in this process", err)
            self._lost = True
            self._orphans_recorded.set()
            return
        assert process.stdin is not None and process.stdout is not None
        self._ring = ring
        self._process = process
        channel = Channel(process.stdout.fileno(), process.stdin.fileno())
        self._reader = threading.Thread(target=self._read, args=(channel,),
                                        name="lineage-capture-replies", daemon=True)
        self._channel = channel
        self._reader.start()

    # -- ending -------------------------------------------------------------------------------
    def _end_child(self, timeout: float) -> bool:
        """Close the child's input, wait for its last answer, and forget it."""
        process, channel, reader = self._process, self._channel, self._reader
        if process is None or channel is None:
            with self._start_lock:
                self._reset_child_state()  # a child that could not start may start next time
            return True
        deadline = time.monotonic() + timeout
        with self._state:
            self._closing = True
        with channel.send_lock:  # after any report being put
            channel.output_closing()
            _close(process.stdin)
            ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()  # the child's own mapping stays: it takes what is left
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        taken: list[_Pending] | None = None  # what this process took back when it gave up
        try:
            process.wait(_left(deadline) or 0.1)
        except subprocess.TimeoutExpired:
            # Slow or stopped, it may still die before it journals what it has not acknowledged,
            # and once let go nobody would record those: journal them here first. If it lives,
            # it records them too, from the same reports: the ledger keeps each record once.
            taken = self._take_back()
            log.warning("lineage-ledger: the recording process (pid %d) still ships records; it finishes "
                        "on its own%s", process.pid,
                        f" (the {len(taken)} task(s) it had not journaled are journaled here as well)"
                        if taken else "")
            if taken:
                self._record_taken(taken)
            elif taken is not None:
                self._orphans_recorded.set()
        with self._state:
            reply, lost = self._closed_reply, self._lost and taken is None  # (lost: it died)
        if lost:
            self._orphans_recorded.wait(_left(deadline))
        if reader is None or not reader.is_alive():  # never under a thread still reading it
            _close(process.stdout)
        with self._start_lock:
            self._failed_here += self._failed_in_child  # keep the count once the child is gone
            self._reset_child_state()
        return lost or (reply is not None and reply[0])

    def _after_fork(self) -> None:
        # The pipes belong to the parent: a forked copy holding them open would keep the
        # child from ever seeing its input end. Close our copies; record in this process.
        process = self._process
        if process is not None:
            _close(process.stdin)
            _close(process.stdout)
        if self._ring is not None:
            self._ring.close()  # this copy's mapping only; the parent's stays
        self._channel, self._ring, self._process, self._reader = None, None, None, None
        self._state = threading.Condition()
        self._start_lock = threading.Lock()
        self._lost = True
        self._orphans_recorded.set()
        self._unacked = deque()


def _close(stream: Any) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass


def _end_children_at_exit() -> None:
    global _exiting
    _exiting = True
    for capture in list(_LIVE):
        if capture._channel is not None:  # (a forked copy dropped its channel at the fork)
            capture._end_child(capture.exit_timeout)


def _after_fork_in_child() -> None:
    for capture in list(_LIVE):
        capture._after_fork()


# Registered after the capture workers' drain, so it runs before it: a report sent after
# this falls back to a worker of this process, which the drain then empties.
at_threading_exit(_end_children_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
