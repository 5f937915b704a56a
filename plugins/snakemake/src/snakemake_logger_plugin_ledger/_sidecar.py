"""Recording in a process of its own, beside Snakemake.

Snakemake's scheduler runs on one Python thread, and every thread of its process shares one
GIL: hashing, building records, importing SQLAlchemy and writing the ledger on the plugin's
threads all hold that thread up, however idle the machine's other cores are. So the plugin
starts this module as a child process (``python -m snakemake_logger_plugin_ledger._sidecar``)
and sends it each finished job as one JSON line on its standard input, the same line it
journals. Here a :class:`RecordingQueue` hashes and records through
:class:`lineage_ledger.TaskCapture`; the parent only parses events.

The child inherits the pending-jobs journal's descriptor, and with it the ``flock`` on the
journal: the journal counts as live while either process lives. The child appends a
``{"done": key}`` line once a job's record is in the durable spool. At end of input it
flushes, prints one JSON line with what it could not record, and exits. If Snakemake is
killed alone, the child still records what it was sent, since its input then ends; it
ignores SIGINT and SIGTERM for the same reason (Ctrl-C reaches the whole process group).

:class:`RecordingQueue` is also what the plugin uses in Snakemake's own process when the
child cannot be started.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from queue import SimpleQueue
from typing import Any

from ._started import StartedInputs, name_thread

log = logging.getLogger("lineage_ledger.snakemake")


#: Seconds the end of a run waits for the ledger to take the records already in the spool.
SHIP_WAIT = 5.0


class RecordingQueue:
    """Submits runs to a capture; a run whose inputs another queued run produces waits for it.

    A ``temp()`` input may be deleted as soon as its consumer ends: its digest must come from
    its producer's record, so that record has to be taken first.
    """

    def __init__(self, capture: Any, on_done: Callable[[str, str | None], None]) -> None:
        self.capture = capture
        self.on_done = on_done  # (key, record id or None), on a capture thread
        self._producers: dict[str, Future[str | None]] = {}  # output path -> its job's record
        self._futures: set[Future[str | None]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.failed: list[str] = []  # keys of the runs that could not be recorded (each one logged)
        self._unmarked: list[tuple[str, str | None]] = []  # recorded, but the journal could not say so

    def add(self, key: str, run: Any) -> Future[str | None]:
        done: Future[str | None] = Future()
        with self._lock:
            self._futures.add(done)
            waits = [self._producers[p] for p in run.inputs if p in self._producers]
            if run.status == "succeeded":
                for path in run.outputs:
                    self._producers[path] = done
        after(waits, lambda: self._submit(key, run, done))
        return done

    def _submit(self, key: str, run: Any, done: Future[str | None]) -> None:
        if self._closed:  # closed after its wait timed out: the journal keeps the job
            done.set_result(None)
            return
        future = self.capture.submit(run)

        def taken(f: Future[str | None]) -> None:
            record_id = None
            try:
                record_id = f.result()
                self.on_done(key, record_id)
            except OSError as err:  # a full disk under the journal: the job is recorded all the same
                log.warning("lineage-ledger: job %s is recorded, but the pending-jobs journal cannot say so yet: %s",
                            key, err)
                with self._lock:  # said again at the end: else a kept journal would have it recorded twice
                    self._unmarked.append((key, record_id))
            except Exception:  # noqa: BLE001
                log.exception("lineage-ledger: could not mark job %s recorded", key)
            finally:
                # Always resolved: jobs waiting on this one, and the exit, must not hang.
                done.set_result(record_id)
                with self._lock:
                    self._futures.discard(done)
                    if record_id is None:
                        self.failed.append(key)

        future.add_done_callback(taken)

    def close(self, timeout: float) -> dict[str, Any]:
        """Wait for every run, then for the ledger; what is left stays spooled or journaled."""
        with self._lock:
            futures = list(self._futures)
        # Runs chained behind their temp inputs' producers are submitted while we wait.
        _, not_done = wait(futures, timeout=timeout)
        self._closed = True
        with self._lock:
            unmarked, self._unmarked = self._unmarked, []
        for key, record_id in unmarked:
            try:
                self.on_done(key, record_id)
            except OSError as err:  # a later run may record this job again (a second record of it)
                log.warning("lineage-ledger: the pending-jobs journal still cannot say job %s is recorded: %s",
                            key, err)
        with self._lock:
            # A run that failed long ago has left the futures: its key says it (an orphan's
            # journal is not this run's: it is kept, or removed, on its own).
            failed_here = any(not key.startswith("orphan:") for key in self.failed)
        recorded = not failed_here and all(f.done() and f.result() is not None for f in futures)
        if recorded and not not_done:
            try:
                self.capture.sync()  # the spool has every record, on disk: the journal may go
            except Exception as err:  # noqa: BLE001 - then the journal keeps the jobs
                log.error("lineage-ledger: cannot sync the spool: %s", err)
                recorded = False
        # Spool first: a locked or unreachable ledger gets a short wait, not the whole timeout;
        # what it has not taken by then waits in the spool (`lineage-ledger spool ship`).
        flushed = self.capture.close(timeout=min(timeout, SHIP_WAIT))
        with self._lock:
            failed = list(self.failed)
        return {"not_done": len(not_done), "flushed": bool(flushed), "failures": self.capture.failures,
                "all_recorded": bool(recorded and not not_done), "failed_jobs": failed}


def after(futures: list[Future[Any]], action: Callable[[], None]) -> None:
    """Run ``action`` once every future is done (at once if they are)."""
    pending = [f for f in futures if not f.done()]
    if not pending:
        action()
        return
    remaining = [len(pending)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            go = remaining[0] == 0
        if go:
            action()

    for future in pending:
        future.add_done_callback(one_done)


class Orphans:
    """Journals of interrupted runs: each is removed once all the jobs it was sent for are recorded."""

    def __init__(self) -> None:
        self._futures: dict[str, list[Future[str | None]]] = {}

    def add(self, path: str, future: Future[str | None]) -> None:
        self._futures.setdefault(path, []).append(future)

    def retire(self) -> None:
        for path, futures in self._futures.items():
            if all(f.done() and f.result() is not None for f in futures):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


#: How far below Snakemake's priority (nice) the recording's threads run: the records can wait
#: a moment; the scheduler thread and the jobs are the run. Not the start digests (:func:`serve`).
NICE = 5


def lower_priority(name: str) -> None:
    """Name the calling thread and, on Linux, lower its priority alone: there a thread's nice
    value is its own (``setpriority`` of its thread id), and the threads it starts inherit it."""
    name_thread(name)
    if not sys.platform.startswith("linux"):
        return  # elsewhere a nice value is the whole process's: the start digests must not wait
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICE)
    except OSError:
        pass


def serve(config: dict[str, Any], lines: Any, out: Any) -> dict[str, Any]:
    """Record every job line of ``lines``; print the summary to ``out``.

    Two priorities. This (the reading) thread and the threads that take the start digests run
    at Snakemake's: a digest taken after the job's input was rewritten is no digest of what the
    job read (``extra.not_verified``), and a busy head node came to them too late when the whole
    process ran niced. Job lines go to a recording thread that lowers its own priority, and
    with it that of the capture's threads it starts (hashing outputs, building and shipping
    records)."""
    from lineage_ledger import TaskCapture  # and what the start digests hash with

    journal_fd = config.get("journal_fd")
    write_lock = threading.Lock()

    def mark_done(key: str, record_id: str | None) -> None:
        if record_id is None or journal_fd is None or key.startswith("orphan:"):
            return
        with write_lock:  # O_APPEND: one write(2) per line, whole
            os.write(journal_fd, (json.dumps({"done": key}) + "\n").encode())

    started = StartedInputs()
    threading.Thread(target=_warm_up, args=(config.get("url"), started), name="lineage-warm-up", daemon=True).start()
    recording = _Recording(lambda: TaskCapture(config.get("url"), engine="snakemake", run_id=config["run_id"],
                                               threads=int(config.get("threads", 4)), stamp_seen=False),
                           mark_done, started)
    job_lines: SimpleQueue[str | None] = SimpleQueue()
    recorder = threading.Thread(target=recording.run, args=(job_lines,), name="lineage-record", daemon=True)
    recorder.start()
    for line in lines:
        if line.startswith('{"start":'):  # a job starts: its inputs are hashed now, here
            try:
                started.start(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                log.error("lineage-ledger: recording process got a bad line (%s): %.200s", err, line)
            continue
        job_lines.put(line)
    job_lines.put(None)
    started.first_hashed.set()  # the warm-up need not wait any more
    recorder.join()
    queue = recording.queue
    if queue is None:  # "Nothing to be done", or a refused run: no ledger opened (or no capture: logged)
        summary: dict[str, Any] = {"not_done": 0, "flushed": True, "failures": recording.errors,
                                   "all_recorded": not recording.errors}
        out.write(json.dumps(summary) + "\n")
        out.flush()
        return summary
    started.close()
    summary = queue.close(float(config.get("flush_timeout", 300.0)))
    if recording.errors:  # a job line that could not be taken: the journal keeps its job
        summary["all_recorded"] = False
    recording.orphans.retire()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary["cpu"] = usage.ru_utime + usage.ru_stime
    out.write(json.dumps(summary) + "\n")
    out.flush()
    return summary


class _Recording:
    """The recording thread's side of :func:`serve`: job lines in, records queued, in order."""

    def __init__(self, make_capture: Callable[[], Any], mark_done: Callable[[str, str | None], None],
                 started: Any) -> None:
        self.make_capture = make_capture
        self.mark_done = mark_done
        self.started = started
        self.queue: RecordingQueue | None = None
        self.orphans = Orphans()
        self.errors = 0  # job lines that could not be taken (each one logged)

    def run(self, job_lines: SimpleQueue[str | None]) -> None:
        from ._journal import decode_run
        from ._unverified import fill_digests

        lower_priority("ledger-record")
        while (line := job_lines.get()) is not None:
            try:
                message = json.loads(line)
                if "start" in message:  # spelled otherwise than the plugin does: still a start
                    self.started.start(message)
                    continue
                self.started.first_hashed.set()  # a job ended: its record needs the back-end now
                if self.queue is None:
                    self.queue = RecordingQueue(self.make_capture(), self.mark_done)
                self.started.apply(message["run"])
                fill_digests(message["run"])
                future = self.queue.add(message["job"], decode_run(message["run"]))
                if message.get("orphan"):
                    self.orphans.add(message["orphan"], future)
            except (ValueError, KeyError, TypeError) as err:
                log.error("lineage-ledger: recording process got a bad line (%s): %.200s", err, line)
            except Exception:  # noqa: BLE001 - the other jobs are still recorded; the journal keeps this one
                self.errors += 1
                log.exception("lineage-ledger: recording process could not take a job line: %.200s", line)


def _warm_up(url: str | None, started: Any) -> None:
    """Import the ledger back-end (SQLAlchemy for SQLite) once the first job's start digests are
    taken (or a job has ended), at the recording's lower priority: an import holds the GIL, and
    a niced thread that holds it stalls the start digests' threads too."""
    lower_priority("ledger-warm-up")
    started.first_hashed.wait()
    try:
        from lineage_ledger import DEFAULT_URL
        from lineage_ledger.backends import backend_class, split_url

        target = url or os.environ.get("LINEAGE_LEDGER_URL") or DEFAULT_URL
        backend_class(split_url(target)[0] if "://" in target else "sqlite")
    except Exception:  # noqa: BLE001 - opening the ledger later says what is wrong
        pass


def main() -> None:
    # Ctrl-C and a polite kill reach the whole process group. Snakemake then stops and
    # closes its handlers, which ends our input: finish recording what was sent, then exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = json.loads(sys.argv[1])
    summary = serve(config, sys.stdin, sys.stdout)
    if summary.get("all_recorded") and not summary.get("failures"):
        os._exit(0)  # without waiting for the warm-up import, which nothing needs any more


if __name__ == "__main__":
    main()
