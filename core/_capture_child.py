"""The recording process behind :class:`ProcessCapture`: ``python -m lineage_ledger._capture_child``.

It reads task reports from its standard input, gathers them for up to ``LINGER`` seconds,
records each batch with an ordinary :class:`TaskCapture` (hashing, records, journal; a
recorder thread ships to the back-end), and answers on its standard output once the batch
is journaled. Its own warnings
and errors go back to the engine's process as ``("log", ...)`` messages, so they appear
where the user looks. The protocol is described in :mod:`._capture_process`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sys
import time
from concurrent.futures import Future
from typing import Any

from ._capture import TaskCapture, TaskRun
from ._capture_process import REPORT, REPORT_WITH_ID, decode_report
from ._channel import NOTHING_YET, Channel

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
#: pipe): each wake-up of this process costs more than recording a dozen reports.
LINGER = 0.05
BATCH = 512


def serve(channel: Channel, replies: _Replies, config: dict[str, Any]) -> None:
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
    replies.send(("ready",))
    batch = _Batch(capture, replies)
    while True:
        wait = batch.patience()
        if wait:
            # Sleep rather than wait on the pipe: a reader waiting on it is woken by every
            # write, and on the machines we measured each wake-up cost both processes tens
            # of microseconds. The reports are safe in the pipe meanwhile.
            time.sleep(wait)
            frame = channel.receive(0)
        else:
            frame = channel.receive(None if wait is None else 0)
        if frame is NOTHING_YET:
            batch.record()
            continue
        if frame is None:
            break
        kind, payload = frame
        if kind in (REPORT, REPORT_WITH_ID):
            batch.add(payload, kind == REPORT_WITH_ID)
            continue
        batch.record()  # a request is answered after every report sent before it
        message = Channel.message(payload)
        if message[0] == "flush":
            replies.send(("flushed", message[1], capture.flush(message[2])))
        elif message[0] == "digest":
            replies.send(("digest", message[1], capture.recorded_digest(message[2])))
        else:
            log.error("lineage-ledger: the recording process got an unknown request %r", message[0])
    batch.record()
    done = capture.close(float(config.get("exit_timeout", 15.0)))
    # What it recorded as outputs: recorded_digest() still answers once this process is gone.
    with capture._lock:
        outputs = dict(capture._outputs)
    replies.send(("closed", done, capture.failures, outputs))


class _Batch:
    """Reports received and not yet recorded, numbered as the parent numbered them."""

    def __init__(self, capture: TaskCapture, replies: _Replies) -> None:
        self.capture = capture
        self.replies = replies
        self.seq = 0
        self.items: list[tuple[int, bytes, bool]] = []
        self.since = 0.0
        self.waited_on = False  # someone holds a future for one of them: do not linger

    def add(self, payload: bytes, wants_id: bool) -> None:
        if not self.items:
            self.since = time.monotonic()
        self.seq += 1
        self.items.append((self.seq, payload, wants_id))
        self.waited_on = self.waited_on or wants_id

    def patience(self) -> float | None:
        """How long to wait for the next frame before recording what is here."""
        if not self.items:
            return None
        if self.waited_on or len(self.items) >= BATCH:
            return 0.0
        return max(0.0, self.since + LINGER - time.monotonic())

    def record(self) -> None:
        if not self.items:
            return
        items, self.items, self.waited_on = self.items, [], False
        runs: list[tuple[TaskRun, Future[str | None] | None]] = []
        numbered: list[tuple[int, Future[str | None] | None]] = []
        for seq, payload, wants_id in items:
            try:
                run = decode_report(payload)
            except Exception:  # noqa: BLE001 - a class only the engine's process can import
                self.replies.send(("unreadable", seq, seq))  # before "done" covers it
                continue
            future: Future[str | None] | None = Future() if wants_id else None
            runs.append((run, future))
            numbered.append((seq, future))
        if runs:
            self.capture._record_batch(runs)
        results = {seq: _outcome(f) for seq, f in numbered if f is not None}
        self.replies.send(("done", self.seq, results, self.capture.failures))


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
    # process slowed plain Parsl by about a tenth), while records can wait in the pipe.
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
    serve(channel, replies, config)


if __name__ == "__main__":
    main()
