"""The recording process behind :class:`ProcessCapture`: ``python -m lineage_ledger._capture.child``.

Every ``LINGER`` seconds (at once when a request or a nudge comes on its standard input)
it takes the task reports published in the shared :class:`~._ring.Ring`, records them as
one batch with an ordinary :class:`TaskCapture` (hashing, records, journal; a recorder
thread ships to the back-end), and answers on its standard output once the batch is
journaled. When its input ends, it takes what is left in the ring, records, ships and
exits. Its own warnings and errors go back to the engine's process as ``("log", ...)``
messages, so they appear where the user looks. The protocol is described in
:mod:`.wire` (the engine's side in :mod:`.process`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pickle
import signal
import sys
import time
from concurrent.futures import Future
from typing import Any

from .channel import NOTHING_YET, Channel
from .ring import Ring
from .task import TaskCapture, TaskRun
from .wire import REPORT_WITH_ID, decode_report

log = logging.getLogger("lineage_ledger.capture")


class _Replies:
    """The reply stream; once the engine's process is gone, replies are dropped and the
    recording goes on: what reached our input is still recorded."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.gone = False

    def send(self, message: tuple[Any, ...]) -> None:
        if self.gone:
            return
        try:
            self.channel.send_message(message)
        except (OSError, ValueError):  # EPIPE: nobody reads any more
            self.gone = True


class _Relay(logging.Handler):
    """Sends log records to the engine's process, which logs them under the same name."""

    def __init__(self, replies: _Replies) -> None:
        super().__init__(logging.WARNING)
        self.replies = replies

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.replies.send(("log", record.levelno, record.name, self.format(record)))
        except Exception:  # noqa: BLE001 - e.g. a message that does not format
            self.handleError(record)


#: How long a report may wait for others to share its batch (it is already safe in the
#: ring): each wake-up of this process costs more than recording a dozen reports.
LINGER = 0.05
#: With nothing coming, the wait between looks at the ring grows to this (a report after a
#: quiet spell waits up to this long; requests are answered at once all the same).
IDLE = 1.0
#: How often, at most, journaled reports are acknowledged while reports keep coming. Each
#: acknowledgement wakes a thread of the engine's process, which then competes with the
#: engine for its GIL; the engine keeps each report until acknowledged, so this bounds its
#: memory (and what it records again if this process dies), not what can be lost.
ACK_EVERY = 0.5
BATCH = 1024


def serve(channel: Channel, ring: Ring, replies: _Replies, config: dict[str, Any]) -> None:
    capture = TaskCapture(
        config.get("url"), engine=config["engine"], run_id=config["run_id"],
        threads=int(config.get("threads", 4)), spool=config.get("spool"),
        raise_errors=bool(config.get("raise_errors")), recorder_options=config.get("recorder_options"),
    )
    capture._environment = config.get("environment")  # where the tasks ran, not this process
    try:
        capture.open()
    except Exception as err:  # noqa: BLE001 - every task will say it too; keep serving
        log.error("lineage-ledger: the recording process cannot open the ledger: %s", err)
    # Everything alive now (modules, the engine, the ledger) lives as long as this process:
    # out of the collector's sight. Records are freed by reference counting; the young
    # generation is collected less often, since nearly every object dies young here.
    # (Measured: 54 -> 46 us of CPU per record, the same as with collection off.)
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    replies.send(("ready",))
    batch = _Batch(capture, replies)
    wait = LINGER
    while True:
        frame = channel.receive(wait)  # a request, a nudge, the end of input, or time to look
        # Reports put in the ring before a request was sent are recorded before it is answered.
        taken, more = batch.record_from(ring, everything=frame is not NOTHING_YET)
        wait = 0.0 if more else LINGER if taken else min(IDLE, max(wait, LINGER) * 2)
        if frame is NOTHING_YET:
            if not taken:
                batch.acknowledge()  # a quiet moment: no more reports to wait for
            continue
        if frame is None:
            break
        batch.acknowledge()  # before any answer: the engine's process may be closing
        message = Channel.message(frame[1])
        if message[0] == "nudge":  # a report someone waits for: recorded and answered above
            continue
        if message[0] == "flush":
            replies.send(("flushed", message[1], capture.flush(message[2])))
        elif message[0] == "digest":
            replies.send(("digest", message[1], capture.recorded_digest(message[2])))
        else:
            log.error("lineage-ledger: the recording process got an unknown request %r", message[0])
    batch.record_from(ring, everything=True)  # the engine's process has ended: take the rest
    batch.acknowledge()
    if ring.left():
        log.error("lineage-ledger: %d bytes of task reports in the shared ring could not be read; "
                  "the engine's process records those it still holds", ring.left())
    done = capture.close(float(config.get("exit_timeout", 15.0)))
    # What it recorded as outputs: recorded_digest() still answers once this process is gone.
    with capture._lock:
        outputs = dict(capture._outputs)
    replies.send(("closed", done, capture.failures, outputs))


class _Batch:
    """Records what the ring holds, numbering reports as the parent numbered them, and
    acknowledges them."""

    def __init__(self, capture: TaskCapture, replies: _Replies) -> None:
        self.capture = capture
        self.replies = replies
        self.seq = 0  # reports taken from the ring
        self.acknowledged = 0
        self.last_acknowledged = time.monotonic()

    def record_from(self, ring: Ring, everything: bool) -> tuple[int, bool]:
        """Record the reports published in ``ring``, in batches of up to ``BATCH``: one
        batch, or all of them. (How many were recorded, whether more may be waiting.)"""
        taken = 0
        while True:
            frames = ring.take(BATCH)
            self.record(frames)
            taken += len(frames)
            if len(frames) < BATCH:
                return taken, False
            if not everything:
                return taken, True

    def record(self, frames: list[tuple[bytes, bytes]]) -> None:
        if not frames:
            return
        runs: list[tuple[TaskRun, Future[str | None] | None]] = []
        numbered: list[tuple[int, Future[str | None] | None]] = []
        for kind, payload in frames:
            self.seq += 1
            seq = self.seq
            try:
                run = decode_report(payload)
            except Exception:  # noqa: BLE001 - a class only the engine's process can import
                self.replies.send(("unreadable", seq, seq))  # before "done" covers it
                continue
            future: Future[str | None] | None = Future() if kind == REPORT_WITH_ID else None
            runs.append((run, future))
            numbered.append((seq, future))
        if runs:
            self.capture._record_batch(runs)
        results = {seq: _outcome(f) for seq, f in numbered if f is not None}
        if results or time.monotonic() - self.last_acknowledged >= ACK_EVERY:
            self.acknowledge(results)

    def acknowledge(self, results: dict[int, tuple[bool, Any]] | None = None) -> None:
        """Tell the engine's process that every report up to ``self.seq`` is journaled."""
        if self.seq == self.acknowledged and not results:
            return
        self.replies.send(("done", self.seq, results or {}, self.capture.failures))
        self.acknowledged, self.last_acknowledged = self.seq, time.monotonic()


def _outcome(future: Future[str | None]) -> tuple[bool, Any]:
    """(True, record id) or (False, the exception, or its text if it does not pickle)."""
    error = future.exception(timeout=0)
    if error is None:
        return True, future.result(timeout=0)
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 - the text still says what went wrong
        return False, f"{type(error).__name__}: {error}"
    return False, error


def main() -> None:
    # Ctrl-C and a polite kill reach the whole process group; the engine's process decides
    # when recording ends, by closing our input, and we finish what it sent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Well below the engine and its tasks in the CPU scheduler's eyes: on a busy machine
    # every cycle taken here slows the workflow (measured: 15% of one core taken by any
    # process slowed plain Parsl by about a tenth), while records can wait in the ring.
    try:
        os.nice(10)
    except OSError:
        pass
    config = json.loads(sys.argv[1])
    channel = Channel(0, 1)
    sys.stdout = sys.stderr  # nothing else may write into the reply stream
    replies = _Replies(channel)
    relay = _Relay(replies)
    root = logging.getLogger("lineage_ledger")
    root.addHandler(relay)
    root.setLevel(logging.WARNING)
    root.propagate = False
    ring = Ring(int(config["ring"]["fd"]), int(config["ring"]["size"]))
    serve(channel, ring, replies, config)


if __name__ == "__main__":
    main()
