"""The engine plugins' side of recording: hash a finished task's files off the engine's thread.

Every plugin meets the same problems, so they are solved once here:

* Engines report tasks on threads they need back quickly (Snakemake's logging thread,
  Parsl's result thread). :meth:`TaskCapture.submit` returns at once; hashing and
  :meth:`Recorder.record` run on the capture's own worker (see :mod:`._drain`), which
  hashes with up to ``threads`` threads when several tasks have files waiting.
* Some engines end the task process with ``os._exit`` (Airflow), so no background thread
  is joined. :meth:`TaskCapture.record_now` hashes and journals in the durable spool
  before it returns; the next open of the ledger ships what the process could not.
  Where another process ships the spool (an engine's long-lived shipper), ``ship=False``
  makes the capture journal only: no shipping thread, and :meth:`TaskCapture.flush` and
  :meth:`TaskCapture.close` only fsync the spool, never waiting for the back-end.
* A record the spool refuses goes straight into the ledger; one whose write outlives
  ``record_now``'s wait is *not recorded yet* (:class:`RecordPending`, :mod:`.pending`).
* Inputs may be gone by the time a task is reported (Snakemake's ``temp()`` files and
  pipes). Their digests come from what the caller already knows, else from the last
  output this capture recorded at that path, else from the ledger's own last record of it;
  ``extra["recalled_inputs"]`` names those inputs and where each digest came from.
* Engine values are not always JSON (tuples, sets, paths, objects in Snakemake params):
  :func:`jsonable` gives them one stable spelling instead of failing the record.
* A plugin must never break the host workflow by accident: errors are logged on the
  ``lineage_ledger.capture`` logger, unless ``raise_errors`` asks for them.
* A path may name a directory: it is recorded by its manifest's digest (``_manifest``),
  and the manifest's own record is journaled with the task's (once per capture). Paths
  are recorded by their real path; a path given through a symbolic link is recorded too,
  as an alias of the real one, so that either finds the record after the link moves.

Hashing a task's files is :mod:`.files`'s part, building its record :mod:`.records`'s,
keeping it (the spool, else the ledger itself) :mod:`.journal`'s; this module queues,
settles and closes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._errors import RecordPending
from .._files.hashing import Hasher, normalize_path
from .._model import Record
from .drain import BatchWorker
from .journal import TaskJournal
from .report import TaskRun, code_digest, jsonable
from .seen_stamp import stamp_seen

if TYPE_CHECKING:
    from .._ledger.deferred import DeferredLedger
    from .._ledger.ledger import Ledger
    from .._ledger.recorder import Recorder

__all__ = ["TaskCapture", "TaskRun", "code_digest", "jsonable"]

log = logging.getLogger("lineage_ledger.capture")


class TaskCapture(TaskJournal):
    """Turns :class:`TaskRun` reports into ledger records without holding the engine up.

    ``submit`` only queues the report. One worker thread takes the queue in batches and
    builds, journals and queues each record for the back-end, in the order submitted;
    when a batch holds several tasks with files to hash, up to ``threads`` threads hash
    them at once (hashing releases the GIL), and the records are still made in order.
    ``ship=False`` journals only, for a process whose spool another process ships.
    """

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
        ship: bool = True,
        stamp_seen: bool = True,
    ) -> None:
        self.url = url
        #: False: the engine's own process stamps its reports (:mod:`.seen_stamp`), or leaves
        #: them unstamped on purpose; this capture never adds what its own process had seen.
        self.stamp_seen = stamp_seen
        self.engine = engine
        self.run_id = run_id or os.environ.get("LINEAGE_RUN_ID") or uuid.uuid4().hex
        self.threads = max(1, threads)  # threads that may hash files at the same time
        self.spool = spool
        self.raise_errors = raise_errors
        self.recorder_options = dict(recorder_options or {})
        self.recorder_options.setdefault("ship", ship)
        #: False: journal only; another process ships the spool (:class:`~.Recorder`'s ``ship``).
        self.ship = bool(self.recorder_options["ship"])
        self._failed_here = 0  # tasks this process could not record (each one logged)
        self._lock = threading.Lock()
        self._deferred: DeferredLedger | None = None
        self._straight: DeferredLedger | None = None  # records the spool cannot take go here
        self._said_straight = False
        self._spool_dir: str | None = None
        self._recorder: Recorder | None = None
        self._worker: BatchWorker[tuple[TaskRun, Future[str | None] | None]] = BatchWorker(
            self._record_batch, name="lineage-capture", on_error=self._worker_error,
        )
        self._hashers: ThreadPoolExecutor | None = None
        self._environment: dict[str, Any] | None = None
        # The last digest this capture recorded for each output path: a temp() file
        # deleted before its consumer is reported may not have reached the ledger yet.
        self._outputs: dict[str, dict[str, Any]] = {}
        self._journaled_manifests: set[str] = set()  # manifest records this capture wrote
        self._dir_hasher: Hasher | None = None

    @property
    def failures(self) -> int:
        """Tasks that could not be recorded, each one logged (one *not recorded yet*: until it lands)."""
        return self._failed_here

    # -- the engine-facing calls --------------------------------------------------------
    def open(self) -> None:
        """Open the ledger now (replaying a crashed run's spool) instead of on the first task."""
        self._ensure_open()

    def submit(self, run: TaskRun) -> Future[str | None]:
        """Queue ``run``; hashing and journaling happen on the capture's worker."""
        future: Future[str | None] = Future()
        self._record_or_queue(self._stamped(run), future)
        return future

    def post(self, run: TaskRun) -> None:
        """Queue ``run`` like :meth:`submit`, without a future, for callers that never wait
        on one record (:meth:`flush` still waits for it); failures are logged as ever."""
        self._record_or_queue(self._stamped(run), None)

    def _stamped(self, run: TaskRun) -> TaskRun:
        """``run`` stamped with what this process had seen of the ledger when the task started
        (:mod:`.seen_stamp`): here, as the report arrives from the engine."""
        return stamp_seen(run, self.url, self.spool) if self.stamp_seen else run

    def _record_or_queue(self, run: TaskRun, future: Future[str | None] | None) -> None:
        if not self._worker.put((run, future)):
            # The interpreter is exiting and no worker will run: record it here instead.
            self._record_batch([(run, future)])

    def record_now(self, run: TaskRun, *, straight_wait: float | None = None,
                   raise_pending: bool = False) -> str | None:
        """Hash and journal ``run`` before returning: safe when the process ends with ``os._exit``.

        A record the spool refuses (its disk full, its directory read-only) goes straight into
        the ledger, as from the worker; ``straight_wait`` bounds the wait for the ledger in
        seconds (None: the back-end's own timeouts), for an engine that kills a caller that
        takes too long (Airflow's overtime) and would leave nothing said. A write that outlives
        it goes on in a thread and may still land: by default the task is logged *not recorded
        yet* (WARNING), then its outcome, and None returned; with ``raise_pending`` (or
        ``raise_errors``) :class:`RecordPending` is raised instead, its ``write`` the caller's."""
        try:
            run = self._stamped(run)
            return self._commit(run, self._hash_files(run), straight_wait)
        except RecordPending as pending:
            if self.raise_errors or raise_pending:
                raise
            self._not_recorded_yet(run, pending)
            return None
        except Exception as err:  # noqa: BLE001 - never into the engine unless asked
            if self.raise_errors:
                raise
            return self._failed(run, err)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued tasks, then for the back-end to have them; True if all in time.

        Journal only (``ship=False``): wait for queued tasks and fsync the spool."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._worker.wait(timeout):
            return False
        recorder = self._recorder
        if recorder is None:
            return True
        return recorder.flush(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def sync(self) -> None:
        """fsync the spool: every record journaled so far survives a power cut (the back-end
        is not touched)."""
        recorder = self._recorder
        if recorder is not None:
            recorder.sync()

    def close(self, timeout: float | None = None) -> bool:
        """Finish queued tasks and stop; what the back-end has not taken stays spooled.
        ``timeout`` bounds the whole close, not each of its steps."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.flush(timeout)
        self._worker.stop()  # what was queued meanwhile is recorded too, as before
        return self._release(None if deadline is None else max(0.0, deadline - time.monotonic())) and done

    def _release(self, timeout: float | None) -> bool:
        """Close the hashing pool, the recorder and the ledger; True if the recorder shipped all."""
        done = True
        with self._lock:
            hashers, self._hashers = self._hashers, None
            recorder, self._recorder = self._recorder, None
            ledger, self._deferred = self._deferred, None
            straight, self._straight = self._straight, None
        if straight is not None:
            straight.close()
        if hashers is not None:
            hashers.shutdown(wait=True)
        if recorder is not None:
            done = recorder.close(timeout) and done
        if ledger is not None and done:
            ledger.close()
        elif ledger is not None:
            # The recorder's thread may still be in the back-end (connecting to a server that
            # says nothing, waiting for a lock) and holds the ledger's lock: closing here would
            # wait out the driver's own timeout. Closed once it lets go; the records are spooled.
            threading.Thread(target=ledger.close, name="lineage-ledger-close", daemon=True).start()
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
    def spool_dir(self) -> str:
        """The spool directory of this capture's ledger (the back-end is not touched)."""
        directory = self._spool_dir
        if directory is None:
            deferred = self._deferred
            if deferred is None:
                from .._ledger.deferred import spool_first

                deferred = spool_first(self.url, spool=self.spool)
                directory = deferred.spool_dir
                deferred.close()
            else:
                directory = deferred.spool_dir
            self._spool_dir = directory
        return directory

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened on first use (this connects to the back-end; recording does not
        wait for it: its records are shipped, and what a crash left in the spool replayed,
        by the recorder's worker)."""
        self._ensure_open()
        assert self._deferred is not None
        return self._deferred.ledger()

    # -- internals ----------------------------------------------------------------------
    def _ensure_open(self) -> Recorder:
        """The recorder, journaling into the ledger's spool; the back-end is not touched here
        (spool first: :mod:`._deferred`). A bad configuration raises :class:`ConfigError`."""
        recorder = self._recorder
        if recorder is not None:
            return recorder
        with self._lock:
            if self._recorder is None:
                from .._ledger.deferred import spool_first
                from .._ledger.recorder import Recorder

                deferred = spool_first(self.url, spool=self.spool)
                try:
                    self._recorder = Recorder(deferred, **self.recorder_options)  # type: ignore[arg-type]
                except BaseException:
                    deferred.close()
                    raise
                self._deferred = deferred
            return self._recorder

    def _ledger_for_lookup(self) -> Ledger | None:
        """The ledger for a lookup that may do without it (recalling a deleted input's digest)."""
        try:
            return self.ledger
        except Exception as err:  # noqa: BLE001 - the record is made without the lookup
            log.warning("lineage-ledger: cannot read the ledger (%s)", err)
            return None

    def _record_batch(self, batch: list[tuple[TaskRun, Future[str | None] | None]]) -> None:
        """The worker's job: hash what the batch needs, build its records in order, and
        journal them with one write."""
        hashed = self._hash_many([run for run, _ in batch])
        built: list[tuple[Record, TaskRun, Future[str | None] | None]] = []
        records: list[Record] = []  # the manifests the tasks' directories need come first
        for (run, future), files in zip(batch, hashed, strict=True):
            try:
                if isinstance(files, BaseException):
                    raise files
                record = self._build(run, files)
            except Exception as err:  # noqa: BLE001 - never into the engine unless asked
                self._not_recorded(run, future, err)
                continue
            records.extend(self._manifest_records(files))
            records.append(record)
            built.append((record, run, future))
        if not built:
            return
        try:
            record_ids = self._journal(records)
        except Exception as err:  # noqa: BLE001 - never into the engine unless asked
            self._forget_manifests(records)
            for _, run, future in built:
                self._not_recorded(run, future, err)
            return
        ids = dict(zip(map(id, records), record_ids, strict=True))
        for record, _, future in built:
            if future is not None:
                _settle(future, ids[id(record)])

    def _not_recorded(self, run: TaskRun, future: Future[str | None] | None, err: Exception) -> None:
        if self.raise_errors and future is not None:
            _settle(future, error=err)
            return
        self._failed(run, err)
        if future is not None:
            _settle(future, None)

    def _worker_error(self, err: BaseException) -> None:
        log.error("lineage-ledger: capture worker error: %s", err, exc_info=err)

    def _failed(self, run: TaskRun, err: BaseException) -> str | None:
        """Log a task that could not be recorded; its future's result is None."""
        with self._lock:
            self._failed_here += 1
        log.error("lineage-ledger: could not record task %s (%s): %s", run.task_name, run.task_id, err)
        return None


def _settle(future: Future[str | None], result: str | None = None, *, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled by the caller; the record is made all the same
        pass
