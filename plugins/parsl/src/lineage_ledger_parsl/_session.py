"""One ledger connection shared by the executor wrappers and the memoizer of a Parsl config."""

from __future__ import annotations

import logging
import os
import shlex
import threading
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lineage_ledger import ConfigError, ProcessCapture, TaskCapture, TaskRun, spool_first, utcnow

from . import _shared
from ._code_check import MADE_BY
from ._tasks import file_digest, function_digest, task_files, task_parameters
from ._unrecordable import SAID, shown, unnamed, why_nothing_is_recorded, working_directory_note

if TYPE_CHECKING:
    from parsl.dataflow.memoization import BasicMemoizer
    from parsl.executors.base import ParslExecutor

    from ._memoizer import LedgerMemoizer

__all__ = ["ParslLedger"]

log = logging.getLogger("lineage_ledger.parsl")

#: How long the end of a run (``dfk.cleanup()``) waits for the back-end to take the run's
#: records; a try's end never waits (its report goes into memory shared with the recording
#: process). Once journaled in the durable local spool (the recording process journals what
#: Parsl's process posted before it answers a flush), a back-end that is down or hangs only
#: delays shipping: it must not hold every run up. (Each flush waited 60 s, the memoizer's
#: and each executor's: 120 s per run.) What is left ships later. The wait is not cut to
#: "journaled": that would end the promise that the ledger has the run's tries when
#: cleanup returns (verify-lineage right after a run) whenever the back-end takes a moment.
#: Nor is it skipped while the recording process is slow: its tries are not in the spool
#: yet, and until Parsl's process ends the recording process, it takes back and records
#: whatever that process had not journaled if it dies; when it ends one that is still
#: running, it journals those itself first (tests/test_parsl_slow_recorder.py).
SHIP_WAIT = 5.0

POLICIES = ("warn", "strict", "rerun")
FILE_KEYS = ("path", "content")
RECORD_IN = ("process", "thread")


class ParslLedger:
    """Records a Parsl run in a ledger and checks files before launch or reuse.

    >>> ledger = ParslLedger("sqlite:///lab.db", policy="strict")
    >>> config = Config(executors=[ledger.wrap(HighThroughputExecutor(...))],
    ...                 memoizer=ledger.memoizer(checkpoint_mode="task_exit"))

    ``policy`` applies when a ``File`` a task will read or keep differs from the ledger's
    last record of it: ``warn`` logs it, ``strict`` fails the task naming the file,
    ``rerun`` ignores a cached result and runs the task again. ``file_key`` is how the
    memoizer keys ``File`` arguments: by ``content`` (the default: inputs by their BLAKE3
    digest, so a changed input is a cache miss) or by ``path`` (their URL only).

    ``record_in`` is where records are built: in a ``process`` of their own (the default;
    Parsl's process only pickles each finished try into memory shared with it, so recording
    does not take the GIL from Parsl's threads) or on a ``thread`` of Parsl's process (no extra process;
    costs Parsl about a fifth more time per no-op task).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        policy: str = "warn",
        file_key: str = "content",
        capture: TaskCapture | None = None,
        threads: int = 2,
        spool: str | None = None,
        record_in: str = "process",
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r}; choose warn, strict or rerun")
        if file_key not in FILE_KEYS:
            raise ConfigError(f"unknown file_key {file_key!r}; choose path or content")
        if record_in not in RECORD_IN:
            raise ConfigError(f"unknown record_in {record_in!r}; choose process or thread")
        self.policy = policy
        self.file_key = file_key
        #: Why no try can be recorded (a ledger whose path is not UTF-8: see _unrecordable), or
        #: None. Said once, here; no recording process is started, nothing checked or recorded.
        self.unrecordable = why_nothing_is_recorded(url) if capture is None else None
        if self.unrecordable is not None:
            if policy == "strict":
                raise ConfigError(f"lineage-ledger: refusing to run (policy strict): {SAID}: {self.unrecordable}")
            log.warning("lineage-ledger: %s: %s; its tasks run unrecorded", SAID, self.unrecordable)
        else:
            note = working_directory_note()
            if note is not None:
                log.warning("lineage-ledger: %s", note)
        #: Tries not recorded because the ledger cannot name their files (or itself), said at
        #: the end of each run; ``_unrecorded_said``: how many of them were said so far.
        self.unrecorded = 0
        self._unrecorded_said = 0
        self._unrecorded_example: str | None = None
        # threads: the pool that hashes and journals; spool: None -> $LINEAGE_SPOOL or .lineage/spool
        # One recording process for every ParslLedger of this process that records to the
        # same place (see _shared): a DataFlowKernel per test module must not start one each.
        self._shared = capture is None and record_in == "process" and self.unrecordable is None
        self._where = (url, threads, spool)
        self._borrowed: tuple | None = None  # the shared capture's key while this ledger uses it
        self.capture: TaskCapture
        if capture is not None:
            self.capture = capture
        elif self._shared:
            self.capture = _shared.acquire(url, threads, spool, use=False)[1]  # started early
        else:
            self.capture = TaskCapture(url, engine="parsl", threads=threads, spool=spool)
        self._lock = threading.Lock()
        # Paths written by a successful try in this process: the ledger may not have their
        # records yet (write-behind), so the pre-launch check must not call them modified.
        self._produced: set[str] = set()
        self._produced_real: set[str] = set()  # their real paths (symbolic links resolved)
        self._unresolved: list[str] = []  # produced paths whose real path is not worked out yet
        self._resolving = threading.Lock()
        self._posted = self._flushed = 0  # tries handed to the capture; of those, known flushed
        # _posted when a bounded wait at the end of a run gave up: the run's next waits
        # (the memoizer's, then each executor's) do not wait for the same back-end again.
        self._gave_up_at = -1

    # -- building a config ----------------------------------------------------------
    def wrap(self, executor: ParslExecutor) -> ParslExecutor:
        """``executor`` made into one that records every try (see :func:`wrap_executor`)."""
        from ._executor import wrap_executor

        return wrap_executor(executor, self)

    def memoizer(self, inner: BasicMemoizer | None = None, **basic_memoizer_options: Any) -> LedgerMemoizer:
        """A memoizer for ``Config(memoizer=...)``; options go to Parsl's ``BasicMemoizer``."""
        from ._memoizer import LedgerMemoizer

        return LedgerMemoizer(self, inner=inner, **basic_memoizer_options)

    def flush(self, timeout: float | None = 30) -> bool:
        """Wait until every try recorded so far has reached the ledger.

        A flush with nothing posted since the last one returns at once: a DataFlowKernel's
        cleanup flushes twice (memoizer, then each executor), and each flush is a round trip
        to the recording process, which runs below Parsl's priority."""
        with self._lock:
            posted = self._posted
        if posted == self._flushed or self.unrecordable is not None:
            return True
        done = self.capture.flush(timeout)
        if done:
            with self._lock:
                self._flushed = max(self._flushed, posted)
        return done

    def open(self) -> None:
        """An executor starts: record (again) through the shared process, and open the ledger.

        A shared recording process is not waited for here: it starts with the first try
        (the ring keeps reports until it is ready), while the DataFlowKernel gets going."""
        if self.unrecordable is not None:
            return  # said when made: nothing to open
        self._borrow()
        if not self._shared:
            self.capture.open()

    def close(self, timeout: float | None = SHIP_WAIT) -> bool:
        """Flush. A recording process of its own ends here; a shared one when no ParslLedger
        has used it for a moment (``_shared.IDLE_SECONDS``), at the latest when this process
        exits. Each wrapped executor's shutdown calls this: the later calls only flush."""
        self._say_unrecorded()
        if self.unrecordable is not None:
            return True  # nothing was opened
        if not self._shared:
            told = self._gave_up()  # the memoizer's close waited already, and said so
            flushed = self.capture.close(0 if told else timeout)
            if not flushed and not told:
                self._tell_waiting()
            return flushed
        flushed = self.finish(timeout)
        key, self._borrowed = self._borrowed, None
        if key is not None:
            assert isinstance(self.capture, ProcessCapture)  # a borrowed capture is the shared process
            _shared.release(key, self.capture)
        return flushed

    def finish(self, timeout: float | None = SHIP_WAIT) -> bool:
        """The end of a run (the memoizer's close, each executor's shutdown): wait at most
        ``timeout`` for the back-end to take what was recorded; True if it has it all.

        The records are in the spool already; if the back-end does not take them in time,
        say once where they wait and how they ship, and do not wait for it again unless
        more tries come."""
        self._say_unrecorded()
        if self._gave_up():
            return False
        with self._lock:
            posted = self._posted
        if self.flush(timeout):
            return True
        with self._lock:
            self._gave_up_at = posted
        self._tell_waiting()
        return False

    def not_recorded(self, path: str | None) -> None:
        """Count a try not recorded because the ledger cannot name ``path`` (None: itself)."""
        with self._lock:
            self.unrecorded += 1
            if path is not None and self._unrecorded_example is None:
                self._unrecorded_example = shown(path)

    def _say_unrecorded(self) -> None:
        """At the end of a run, once: how many of its tries were not recorded (see :meth:`submit`)."""
        with self._lock:
            count = self.unrecorded - self._unrecorded_said
            self._unrecorded_said = self.unrecorded
            example = self._unrecorded_example
        if count <= 0:
            return
        tries = "1 try" if count == 1 else f"{count} tries"
        if self.unrecordable is not None:
            log.warning("lineage-ledger: %s of this run not recorded (the ledger's own path is not UTF-8 text: see "
                        "the start of the run)", tries)
        else:
            log.warning("lineage-ledger: %s of this run not recorded: their Files are at paths that are not valid "
                        "UTF-8 text (%s, ...), and the ledger names a file by its path, as text: rename them to "
                        "record them", tries, example)

    def _gave_up(self) -> bool:
        with self._lock:
            return self._posted == self._gave_up_at

    def _tell_waiting(self) -> None:
        try:  # names the ledger (password hidden) and its spool; does not touch the back-end
            place = spool_first(self.capture.url, spool=self.capture.spool)
            ledger, root, where = place.url, place.spool_root, place.spool_dir
            place.close()
        except Exception as err:  # noqa: BLE001 - the message must not fail the cleanup
            ledger, root, where = "URL", "DIR", f"(unknown: {err})"
        # A recording process that is slow (or stopped) has not even journaled them: they are
        # in memory shared with it, and shipping the spool now would ship none of them.
        capture = self.capture
        if isinstance(capture, ProcessCapture) and capture.unjournaled and capture.child_pid is not None:
            log.warning(
                "lineage-ledger: the ledger did not take this run's records in time: the recording "
                "process (pid %d) has not journaled %d tries yet (it is slow, or stopped). "
                "They are in memory shared with it, not yet in the spool %s; it journals and ships them "
                "on its own. If it still has not when this process ends it (once no run uses it, or at "
                "exit), this process journals them there itself. What the ledger does not take waits in "
                "that spool for the next open of the ledger, or for: lineage-ledger spool ship --ledger %s "
                "--spool %s",
                capture.child_pid, capture.unjournaled, where, shlex.quote(ledger), shlex.quote(root),
            )
            return
        log.warning(
            "lineage-ledger: the ledger did not take this run's records in time; they wait in the "
            "spool %s and ship at the next open of the ledger (the next run), or now with: "
            "lineage-ledger spool ship --ledger %s --spool %s",
            where, shlex.quote(ledger), shlex.quote(root),
        )

    def _borrow(self) -> None:
        if self._shared and self._borrowed is None:
            self._borrowed, self.capture = _shared.acquire(*self._where, use=True)

    # -- what the executor and the memoizer report ------------------------------------
    def produced(self, paths: list[str]) -> None:
        with self._lock:
            self._produced.update(paths)
            self._unresolved.extend(paths)

    def new_run(self) -> None:
        """A new DataFlowKernel starts: what the last one wrote is in the ledger by now."""
        with self._lock:
            self._produced.clear()
            self._produced_real.clear()
            self._unresolved.clear()

    def produced_here(self, path: str) -> bool:
        """Whether a try of this run wrote ``path``, by this name or another (through a symbolic
        link): its record may still be on its way. Real paths are worked out on the launch
        thread, never on the one that ends a try, each once."""
        with self._lock:
            if path in self._produced:
                return True
            if not self._produced:
                return False
        real = os.path.realpath(path)
        with self._resolving:  # one launch thread resolves; another waits for what it resolves
            with self._lock:
                pending, self._unresolved = self._unresolved, []
            resolved = {os.path.realpath(p) for p in pending}
            with self._lock:
                self._produced_real.update(resolved)
                return real in self._produced_real

    def task_run(
        self,
        task: Mapping[str, Any] | None,
        func: Any,
        args: tuple,
        kwargs: Mapping[str, Any],
        *,
        status: str,
        started: datetime,
        ended: datetime | None = None,
        run_id: str | None = None,
        known: Mapping[str, Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
        leave_out: Collection[str] | Mapping[str, Collection[str]] = (),
        left_out_as: str = "modified_outside_workflow",
    ) -> TaskRun:
        """A :class:`TaskRun` for one try of ``task`` (its DataFlowKernel record, if known).

        ``leave_out``: files changed outside the workflow (or that the ledger could not
        check) that this try did not write; listing them would make the ledger vouch for
        their current bytes. They are named in ``extra[left_out_as]`` instead (or, given as
        ``{name: paths}``, each group under its own name: a cache hit may have both). A try that
        ran on inputs the ledger could not vouch for (the memoizer's mark on ``task``)
        lists neither them nor its outputs (see :func:`_leave_out_unverified`).
        """
        # A task with no arguments (common: many small apps) skips the argument walks.
        inputs, outputs = task_files(args, kwargs) if args or kwargs else ([], [])
        details: dict[str, Any] = dict(extra) if extra else {}
        groups = leave_out if isinstance(leave_out, Mapping) else {left_out_as: leave_out}
        dropped = {p for paths in groups.values() for p in paths}
        if dropped:
            inputs = [p for p in inputs if p not in dropped]
            outputs = [p for p in outputs if p not in dropped]
            details.update({name: sorted(set(paths)) for name, paths in groups.items() if paths})
        if task is not None:
            task_id, name, attempt = str(task["id"]), str(task["func_name"]), int(task["try_id"]) + 1
            details["parsl_try_id"] = task["try_id"]
            details["executor"] = task.get("executor")
            if task.get("hashsum"):
                details["memo_hash"] = task["hashsum"]
            rerun = task.get("lineage_ledger_rerun")
            if rerun:
                details["rerun_because_modified"] = list(rerun)
            unverified = task.get("lineage_ledger_unverified")
            if unverified:  # the try ran although the ledger failed its own check of its files
                details["check_failed"] = unverified["check_failed"]
                if unverified.get("reran"):  # a cached result was ignored for it (rerun)
                    details["rerun_because_not_verified"] = list(unverified["not_verified"])
                inputs, outputs = _leave_out_unverified(unverified["read"], inputs, outputs, known, details)
        else:
            task_id, name, attempt = "unknown", getattr(func, "__name__", "app"), 1
        left: dict[str, dict[str, Any]] | None = None  # a failed try's outputs, hashed as it ends
        if status == "failed" and outputs and "refused_by" not in details:
            outputs, left = _written_by_the_try(outputs, started, details)
        # The inputs as the memoizer handed them to the try (see read_digests); outputs hashed as it ends.
        read = task.get("lineage_ledger_read") if task is not None and not known else None
        return TaskRun(
            task_id=task_id,
            task_name=name,
            status=status,
            started=started,
            ended=ended or utcnow(),
            inputs=inputs,
            outputs=outputs,
            known=dict(read or known or {}),
            known_outputs=left if left is not None else {} if read else None,
            # A cache hit: the code that made the value (see _code_check), else the app's own.
            code_digest=(task.get(MADE_BY) if task is not None and status == "cached" else None)
            or function_digest(task["func"] if task is not None else func),
            parameters=task_parameters(args, kwargs) if args or kwargs else {},
            attempt=attempt,
            extra=details,
            run_id=run_id,
        )

    def submit(self, run: TaskRun) -> None:
        """Hand a finished try to the capture; the outputs of a try that ran count as produced
        (see :func:`_ran`). A try
        the ledger cannot name (a file, or the ledger, at a path that is not UTF-8) is only
        counted: the capture would refuse it, task by task; the end of the run says how many."""
        if self.unrecordable is not None or (
            (run.inputs or run.outputs) and (left := unnamed([*run.inputs, *run.outputs]))
        ):
            self.not_recorded(None if self.unrecordable is not None else left[0])
            return
        if run.outputs and _ran(run):
            self.produced(list(run.outputs))
        with self._lock:
            self._posted += 1
        self.capture.post(run)


def _written_by_the_try(
    outputs: list[str], started: datetime, details: dict[str, Any],
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The outputs a failed try wrote, judged as it ends (a stat each): those changed since it
    started (a second's slack for coarse file-system clocks), and their digests, taken here.

    A failed try vouches only for what it wrote: an older file at an output's path is not its
    product (named in ``extra["outputs_not_written"]``). And what it wrote is hashed now, on the
    thread that ends the try, before Parsl hears of the failure and launches the retry: the
    recording process hashes a try's files once it gets to its record, by when the retry may
    have rewritten them, and the failed try was recorded with its retry's bytes (a worker
    killed before writing, with its retry's output: tests/test_parsl_faults.py). A directory
    (no manifest at hand for the capture) or a file that cannot be read is left out, named in
    ``extra["outputs_not_hashed"]``: hashed later it could be the retry's. Failed tries are
    rare; only their outputs are hashed on Parsl's thread."""
    since = started.timestamp() - 1.0
    written, unwritten, unhashed = [], [], []
    digests: dict[str, dict[str, Any]] = {}
    for path in dict.fromkeys(outputs):
        try:
            if os.stat(path).st_mtime < since:
                unwritten.append(path)
                continue
        except OSError:
            continue  # not there: nothing written (the capture would call it missing)
        digest = None if os.path.isdir(path) else file_digest(path)
        if digest is None:
            unhashed.append(path)
            continue
        written.append(path)
        digests[path] = digest
    if unwritten:
        details["outputs_not_written"] = sorted({*details.get("outputs_not_written", ()), *unwritten})
    if unhashed:
        details["outputs_not_hashed"] = sorted(unhashed)
    return written, digests


def _ran(run: TaskRun) -> bool:
    """Whether ``run`` is a try that an executor ran, and so may have written its outputs: a
    success, or a failure other than a refusal of the memoizer. A failed try's partial output
    is the workflow's doing, and its record names it; until that record reaches the ledger
    (write-behind), the retry's check would call the file changed outside the workflow, and
    ``strict`` refused every retry (tests/test_parsl_deployed_retries.py)."""
    return run.status == "succeeded" or (run.status == "failed" and "refused_by" not in run.extra)


def _leave_out_unverified(
    read: Mapping[str, Any], inputs: list[str], outputs: list[str],
    known: Mapping[str, Mapping[str, Any]] | None, details: dict[str, Any],
) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of a try that ran on ``read``: inputs a tampered ledger could not
    vouch for, with their digests when the check handed them over.

    Listed as read with their current digests, they would give a hidden edit the record the
    next check compares with (for a source file nobody produced, the next ``strict`` run
    passed the edit), and the outputs were made from that edit. So neither is listed: both
    are named in ``details["not_verified"]`` and their digests kept apart, in
    ``details["not_verified_digests"] = {"inputs": {path: digest}, "outputs": {...}}``. The
    outputs are hashed here, on the thread that completes the try, unless the worker did.
    """
    read = {p: d for p, d in read.items() if p in inputs}
    if not read:  # only the outputs went unverified: this try rewrote them from verified inputs
        return inputs, outputs
    made = {p: dict(known[p]) if known and p in known else file_digest(p) for p in dict.fromkeys(outputs)}
    details["not_verified"] = sorted({*read, *made, *details.get("not_verified", ())})
    details["not_verified_digests"] = {"inputs": dict(read), "outputs": made}
    return [p for p in inputs if p not in read], []
