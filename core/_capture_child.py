"""The recording process behind :class:`ProcessCapture`: ``python -m lineage_ledger._capture_child``.

It reads batches of task reports from its standard input, records each batch with an
ordinary :class:`TaskCapture` (hashing, records, journal; a recorder thread ships to the
back-end), and answers on its standard output once the batch is journaled. Its own warnings
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
from concurrent.futures import Future
from typing import Any

from ._capture import TaskCapture, TaskRun
from ._channel import Channel

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
            self.channel.send(message)
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
    seq = 0
    while (message := channel.receive()) is not None:
        kind = message[0]
        if kind == "runs":
            _, count, blob = message
            first, seq = seq + 1, seq + count
            try:
                items: list[tuple[TaskRun, bool]] = pickle.loads(blob)
            except Exception:  # noqa: BLE001 - a class only the engine's process can import
                replies.send(("unreadable", first, seq))
                continue
            futures: list[Future[str | None] | None] = [Future() if wants else None for _, wants in items]
            capture._record_batch([(run, future) for (run, _), future in zip(items, futures, strict=True)])
            results = {first + i: _outcome(f) for i, f in enumerate(futures) if f is not None}
            replies.send(("done", seq, results, capture.failures))
        elif kind == "flush":
            replies.send(("flushed", message[1], capture.flush(message[2])))
        elif kind == "digest":
            replies.send(("digest", message[1], capture.recorded_digest(message[2])))
        else:
            log.error("lineage-ledger: the recording process got an unknown request %r", kind)
    done = capture.close(float(config.get("exit_timeout", 15.0)))
    # What it recorded as outputs: recorded_digest() still answers once this process is gone.
    with capture._lock:
        outputs = dict(capture._outputs)
    replies.send(("closed", done, capture.failures, outputs))


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
    channel = Channel(os.fdopen(0, "rb", buffering=0), os.fdopen(1, "wb", buffering=0))
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
