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

Messages (see :mod:`._channel`) go over the child's standard input and output::

    parent -> child   ring: R a report, F a report whose id the caller waits for
                      M: ("nudge",) after an F: record now   M: ("flush", token, timeout)
                      M: ("digest", token, path)
                      end of input: take the rest of the ring, record, flush,
                      answer ("closed", ok, failures, outputs)
    child -> parent   M: ("ready",)   M: ("done", upto, {seq: (ok, id or error)}, failures)
                      M: ("unreadable", first, last)   M: ("flushed", token, ok)
                      M: ("digest", token, entry)   M: ("log", level, logger name, message)

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

import itertools
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Any

from .._environment import current_environment
from .._errors import LedgerError
from .._files.hashing import normalize_path
from .channel import MESSAGE, Channel
from .drain import at_threading_exit
from .ring import Ring
from .task import TaskCapture, TaskRun, _settle

__all__ = ["ProcessCapture", "decode_report"]

log = logging.getLogger("lineage_ledger.capture")
_LIVE: weakref.WeakSet[ProcessCapture] = weakref.WeakSet()
_exiting = False  # past the exit hook: no new recording process
# (sequence number, the encoded report, its future). The report is kept encoded: a bytes
# object is not tracked by the engine's garbage collector, while a TaskRun and its dicts,
# kept until acknowledged, would mostly outlive the young collections and count toward
# the next full one (0.15 to 0.25 s with Parsl's heap).
_Pending = tuple[int, bytes, "Future[str | None] | None"]

REPORT, REPORT_WITH_ID = b"R", b"F"
_RING_SIZE = 4 << 20  # about 16,000 reports
_LARGEST_REPORT = 1 << 20  # larger reports (huge parameters) are recorded in this process
_NUDGE = Channel.frame(MESSAGE, pickle.dumps(("nudge",), protocol=5))
_FIELDS = ("task_id", "task_name", "status", "started", "ended", "inputs", "outputs", "known",
           "code_digest", "parameters", "environment_extra", "attempt", "extra", "run_id", "known_outputs")
_fields_of = attrgetter(*_FIELDS)
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_report(run: TaskRun) -> bytes | None:
    """``run`` as the child decodes it; None if only this process can record it."""
    started, ended = run.started, run.ended
    # A datetime pickles its class (and a UTC one its tzinfo) by reference, at twice the cost
    # of the rest of the report: UTC times go as whole microseconds since the epoch, which
    # come back exactly. Other zones go as they are; a naive time is an error that Record
    # must raise here, where the caller sees it.
    if started.tzinfo is None or ended.tzinfo is None:
        return None
    fields = list(_fields_of(run))
    if started.tzinfo is _UTC:
        fields[3] = (started - _EPOCH) // _MICROSECOND
    if ended.tzinfo is _UTC:
        fields[4] = (ended - _EPOCH) // _MICROSECOND
    try:
        return pickle.dumps(fields, protocol=5)
    except Exception:  # noqa: BLE001 - something in the report does not pickle
        return None


def decode_report(payload: bytes) -> TaskRun:
    fields = pickle.loads(payload)
    for i in (3, 4):
        if isinstance(fields[i], int):
            fields[i] = _EPOCH + timedelta(microseconds=fields[i])
    return TaskRun(*fields)


class ProcessCapture(TaskCapture):
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
        if not self._send(run, future):
            super()._record_or_queue(run, future)
        return future

    def post(self, run: TaskRun) -> None:
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
                [sys.executable, "-m", "lineage_ledger._capture.child", json.dumps(config)],
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

    # -- asking and ending ------------------------------------------------------------------
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


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


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
