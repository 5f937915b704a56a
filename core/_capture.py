"""The engine plugins' side of recording: hash a finished task's files off the engine's thread.

Every plugin meets the same problems, so they are solved once here:

* Engines report tasks on threads they need back quickly (Snakemake's logging thread,
  Parsl's result thread). :meth:`TaskCapture.submit` returns at once; hashing and
  :meth:`Recorder.record` run on the capture's own small pool.
* Some engines end the task process with ``os._exit`` (Airflow), so no background thread
  is joined. :meth:`TaskCapture.record_now` hashes and journals in the durable spool
  before it returns; the next open of the ledger ships what the process could not.
* Inputs may be gone by the time a task is reported (Snakemake's ``temp()`` files and
  pipes). Their digests come from what the caller already knows, else from the last
  output this capture recorded at that path, else from the ledger's own last record of it;
  ``extra["recalled_inputs"]`` names those inputs and where each digest came from.
* Engine values are not always JSON (tuples, sets, paths, objects in Snakemake params):
  :func:`jsonable` gives them one stable spelling instead of failing the record.
* A plugin must never break the host workflow by accident: errors are logged on the
  ``lineage_ledger.capture`` logger, unless ``raise_errors`` asks for them.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from ._environment import current_environment
from ._errors import ArtifactError
from ._hashing import hash_file, normalize_path
from ._model import Record

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._recorder import Recorder
    from ._verify import ArtifactCheck, Policy

__all__ = ["TaskCapture", "TaskRun", "code_digest", "jsonable", "verify_before_run"]

log = logging.getLogger("lineage_ledger.capture")


def code_digest(code: str | bytes) -> str:
    """BLAKE3 of a task's code (a shell command, a script's source, a function's source)."""
    return blake3(code.encode("utf-8") if isinstance(code, str) else code).hexdigest()


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON value with one spelling for ``value``: what engines hand over is not always JSON.

    Tuples become lists, sets sorted lists, non-finite floats and unknown objects their
    ``str``; mapping keys become strings. Deep structures are cut at 32 levels.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth >= 32:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [jsonable(v, _depth + 1) for v in value]
        return sorted(items, key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


@dataclass
class TaskRun:
    """One finished task try as an engine saw it; paths are hashed by the capture."""

    task_id: str
    task_name: str
    status: str  # succeeded, failed or cached
    started: datetime
    ended: datetime
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    #: Digests the caller already has ({path: {"blake3": hex, "size": n}}); they win over disk.
    known: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    code_digest: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    environment_extra: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    #: Digests of the outputs, when the caller has them. Given (not None), ``known`` serves the
    #: inputs only: a file a task updates in place was read with one digest and written with another.
    known_outputs: Mapping[str, Mapping[str, Any]] | None = None


class TaskCapture:
    """Turns :class:`TaskRun` reports into ledger records without holding the engine up."""

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: str,
        run_id: str | None = None,
        threads: int = 4,
        spool: str | None = None,
        raise_errors: bool = False,
        recorder_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.engine = engine
        self.run_id = run_id or os.environ.get("LINEAGE_RUN_ID") or uuid.uuid4().hex
        self.threads = max(1, threads)
        self.spool = spool
        self.raise_errors = raise_errors
        self.recorder_options = dict(recorder_options or {})
        self.failures = 0  # tasks that could not be recorded (each one logged)
        self._lock = threading.Lock()
        self._ledger: Ledger | None = None
        self._recorder: Recorder | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1
        self._pending: set[Future[str | None]] = set()
        # The last digest this capture recorded for each output path: a temp() file
        # deleted before its consumer is reported may not have reached the ledger yet.
        self._outputs: dict[str, dict[str, Any]] = {}

    # -- the engine-facing calls --------------------------------------------------------
    def submit(self, run: TaskRun) -> Future[str | None]:
        """Queue ``run``; hashing and journaling happen on the capture's pool."""
        try:
            future = self._executor().submit(self._record_logged, run)
        except RuntimeError as err:  # the pool is shut down (interpreter exit)
            future = Future()
            future.set_result(self._failed(run, err))
            return future
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def record_now(self, run: TaskRun) -> str | None:
        """Hash and journal ``run`` before returning: safe when the process ends with ``os._exit``."""
        return self._record_logged(run)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued tasks, then for the back-end to have them; True if all in time."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            try:
                future.result(timeout=timeout)
            except Exception:  # noqa: BLE001 - a timeout here is reported by the return value
                return False
        recorder = self._recorder
        return recorder.flush(timeout) if recorder is not None else True

    def close(self, timeout: float | None = None) -> bool:
        """Finish queued tasks and stop; what the back-end has not taken stays spooled."""
        done = self.flush(timeout)
        with self._lock:
            pool, self._pool = self._pool, None
            recorder, self._recorder = self._recorder, None
            ledger, self._ledger = self._ledger, None
        if pool is not None:
            pool.shutdown(wait=True)
        if recorder is not None:
            done = recorder.close(timeout) and done
        if ledger is not None:
            ledger.close()
        return done

    def __enter__(self) -> TaskCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recorded_digest(self, path: str) -> dict[str, Any] | None:
        """The entry this capture last recorded for ``path`` as an output, shipped or not.

        A pre-run check consults the ledger, which may not have this run's latest records
        yet; a plugin asks here first for files its own run rewrote.
        """
        with self._lock:
            entry = self._outputs.get(normalize_path(path))
        return dict(entry) if entry is not None else None

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened on first use (replaying whatever a crash left in the spool)."""
        self._ensure_open()
        assert self._ledger is not None
        return self._ledger

    # -- internals ----------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            # A forked child inherits the pool object but none of its threads.
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="lineage-capture")
                self._pool_pid = os.getpid()
                self._pending = set()
            return self._pool

    def _forget(self, future: Future[str | None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _ensure_open(self) -> Recorder:
        with self._lock:
            if self._recorder is None:
                from ._ledger import open_ledger

                ledger = open_ledger(self.url, spool=self.spool)
                try:
                    self._recorder = ledger.recorder(**self.recorder_options)
                except BaseException:
                    ledger.close()
                    raise
                self._ledger = ledger
            return self._recorder

    def _record_logged(self, run: TaskRun) -> str | None:
        try:
            return self._record(run)
        except Exception as err:  # noqa: BLE001 - never into the engine unless asked
            if self.raise_errors:
                raise
            return self._failed(run, err)

    def _failed(self, run: TaskRun, err: BaseException) -> str | None:
        """Log a task that could not be recorded; its future's result is None."""
        with self._lock:
            self.failures += 1
        log.error("lineage-ledger: could not record task %s (%s): %s", run.task_name, run.task_id, err)
        return None

    def _record(self, run: TaskRun) -> str:
        recorder = self._ensure_open()
        extra = dict(jsonable(run.extra))
        inputs, unhashed, recalled = self._hash_inputs(run.inputs, run.known)
        outputs, missing = self._hash_present(
            run.outputs, run.known if run.known_outputs is None else run.known_outputs)
        if unhashed:
            extra["unhashed_inputs"] = unhashed
        if recalled:  # digests of files already gone, taken from an earlier record: say so
            extra["recalled_inputs"] = recalled
        if missing:
            extra["missing_outputs"] = missing
        record = Record(
            engine=self.engine,
            run_id=run.run_id or self.run_id,
            task_id=str(run.task_id),
            task_name=str(run.task_name),
            status=run.status,
            started=run.started,
            ended=run.ended,
            inputs=inputs,
            outputs=outputs,
            code_digest=run.code_digest,
            parameters=jsonable(run.parameters),
            environment=current_environment(**jsonable(run.environment_extra)),
            attempt=run.attempt,
            extra=extra,
        )
        record_id = recorder.record(record)
        if run.status == "succeeded":
            with self._lock:
                self._outputs.update(outputs)
        return record_id

    def _known(self, known: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {normalize_path(p): {"blake3": e["blake3"], "size": int(e["size"])} for p, e in known.items()}

    def _hash_present(self, paths: Iterable[str], known: Mapping[str, Mapping[str, Any]]):
        given = self._known(known)
        entries: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        for path in _unique(paths):
            if path in given:
                entries[path] = given[path]
                continue
            try:
                artifact = hash_file(path)
            except ArtifactError:
                if os.path.lexists(path):
                    raise  # there but unreadable: a real problem, not a clean-up
                missing.append(path)
                continue
            entries[path] = artifact.entry()
        return entries, missing

    def _hash_inputs(self, paths: Iterable[str], known: Mapping[str, Mapping[str, Any]]):
        entries, gone = self._hash_present(paths, known)
        unhashed: list[str] = []
        recalled: dict[str, str] = {}  # path -> where its digest came from
        for path in gone:
            with self._lock:
                remembered = self._outputs.get(path)
            source = "capture"
            if remembered is None and self._ledger is not None:
                seen = self._ledger.last_seen(path)
                remembered, source = (dict(seen[2]) if seen is not None else None), "ledger"
            if remembered is None:
                unhashed.append(path)
            else:
                entries[path] = {"blake3": remembered["blake3"], "size": remembered["size"]}
                recalled[path] = source
        return entries, unhashed, recalled


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(normalize_path(p) for p in paths))


def verify_before_run(
    ledger: Ledger | str | None, paths: Iterable[str], policy: Policy = "warn"
) -> list[ArtifactCheck]:
    """The plugins' pre-run check with the policy applied; returns the MODIFIED files.

    ``strict`` raises :class:`ArtifactMismatch` naming every tampered file; ``warn`` logs
    each one; ``rerun`` returns them for the caller to force their producers. A file that
    is missing or that no record mentions is not tampering and is not reported.
    """
    from ._ledger import Ledger, open_ledger
    from ._verify import check_before_run

    opened = ledger if isinstance(ledger, Ledger) else open_ledger(ledger)
    try:
        tampered = check_before_run(opened, [normalize_path(p) for p in paths], policy)
    finally:
        if opened is not ledger:
            opened.close()
    for check in tampered:
        log.warning(
            "lineage-ledger: %s changed outside the workflow (ledger %s, disk %s)%s",
            check.path, (check.expected or "-")[:12], (check.actual or "-")[:12],
            "; its producer will run again" if policy == "rerun" else "",
        )
    return tampered

