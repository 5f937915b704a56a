"""The plugin's working part: Snakemake's job events in, ledger records out.

Imported only when a run with ``--logger ledger`` reports its first job, so that a plain
``snakemake`` in an environment where the plugin is installed does not import the ledger.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, wait
from typing import IO, Any

from lineage_ledger import TaskCapture, TaskRun

from ._jobs import JobLookup, JobReport, job_details, parse_files
from ._journal import PendingJournal, orphaned, read_journal
from ._recovery import jobs_from_metadata, metadata_end

log = logging.getLogger("lineage_ledger.snakemake")

JOURNAL_DIR = os.path.join(".lineage", "snakemake-pending")


class JobRecorder:
    """Turns ``job_info`` / ``job_finished`` / ``job_error`` events into submitted records."""

    def __init__(self, settings: Any, temp_hook: Any = None) -> None:
        self.settings = settings
        self.temp_hook = temp_hook  # a _eager.TempOutputHook: temp() digests taken at job_finished
        self.capture: TaskCapture | None = None
        self.journal: PendingJournal | None = None
        self._started = False
        self._reports: dict[int, JobReport] = {}
        self._attempts: dict[int, int] = {}
        self._producers: dict[str, Future[str | None]] = {}  # output path -> its job's record
        self._futures: set[Future[str | None]] = set()
        self._lookup = JobLookup()
        self._lock = threading.Lock()
        self._closing = False

    def handle(self, event: str, record: logging.LogRecord) -> None:
        self._start(record.created)
        if event == "job_info":
            report = JobReport.from_event(record)
            self._reports[report.jobid] = report
        elif event == "job_finished":
            self._finished(int(record.__dict__["job_id"]), record.created)
        else:
            self._failed(record)

    def close(self) -> None:
        self._shutdown()

    # -- the events ---------------------------------------------------------------------
    def _start(self, first_event: float) -> None:
        if self._started:
            return
        self._started = True
        # Snakemake has changed into the workflow's working directory by the first job event.
        self.capture = TaskCapture(
            self.settings.url, engine="snakemake", run_id=self.settings.run_id,
            threads=self.settings.hash_threads,
        )
        directory = os.path.abspath(JOURNAL_DIR)
        try:
            self.journal = PendingJournal(directory, self.capture.run_id, first_event)
        except OSError as err:  # e.g. a read-only working directory with a remote ledger
            log.warning("lineage-ledger: no pending-jobs journal (%s); records still go to the "
                        "ledger, but a kill -9 may lose the jobs not yet in the spool", err)
            return
        self._recover(directory, first_event)

    def _finished(self, jobid: int, ended: float) -> None:
        report = self._reports.pop(jobid, None)
        if report is None:
            log.warning("lineage-ledger: job %s finished without a job_info event; not recorded", jobid)
            return
        report.details = job_details(self._lookup.find(jobid))
        self._enqueue(report, report.task_run("succeeded", ended, known=self._early_digests(report)))

    def _early_digests(self, report: JobReport) -> dict[str, dict[str, Any]]:
        if self.temp_hook is None:
            return {}
        return dict(self.temp_hook.take([r.path for r in report.outputs]))

    def _failed(self, record: logging.LogRecord) -> None:
        get = record.__dict__.get
        jobid = int(get("jobid"))  # type: ignore[arg-type]
        report = self._reports.pop(jobid, None) or JobReport.from_event(record)
        report.details = job_details(self._lookup.find(jobid))
        error = {"message": get("rule_msg"), "aux": get("aux")}
        if get("conda_env"):
            report.details.setdefault("conda_env", get("conda_env"))
        if get("container_img"):
            report.details.setdefault("container", get("container_img"))
        if get("log"):
            report.logs = parse_files(get("log"))
        self._enqueue(report, report.task_run("failed", record.created, error=error))

    # -- recording ----------------------------------------------------------------------
    def _enqueue(self, report: JobReport, run: TaskRun) -> None:
        assert self.capture is not None
        attempt = self._attempts[report.jobid] = self._attempts.get(report.jobid, 0) + 1
        run.attempt = attempt
        run.run_id = self.capture.run_id  # journaled: a later run records it under this run's id
        key = f"{report.jobid}:{attempt}"
        if self.journal is not None:
            self.journal.add(key, run)
        done: Future[str | None] = Future()
        with self._lock:
            self._futures.add(done)
            # A temp() input may be deleted as soon as this job ends: its digest must come
            # from its producer's record, so this record waits for that one to be taken.
            waits = [self._producers[p] for p in run.inputs if p in self._producers]
            if run.status == "succeeded":
                for path in run.outputs:
                    self._producers[path] = done
        self._after(waits, lambda: self._submit(key, run, done))

    def _submit(self, key: str, run: TaskRun, done: Future[str | None]) -> None:
        capture = self.capture
        if capture is None:  # closed after its wait timed out: the journal keeps the job
            done.set_result(None)
            return
        future = capture.submit(run)

        def taken(f: Future[str | None]) -> None:
            record_id = None
            try:
                record_id = f.result()
                if record_id is not None and self.journal is not None:
                    self.journal.done(key)  # otherwise the next run retries it
            except Exception:  # noqa: BLE001 - e.g. a full disk under the journal
                log.exception("lineage-ledger: could not mark job %s recorded", key)
            finally:
                # Always resolved: jobs waiting on this one, and the exit, must not hang.
                done.set_result(record_id)
                with self._lock:
                    self._futures.discard(done)

        future.add_done_callback(taken)

    @staticmethod
    def _after(futures: list[Future[Any]], action: Any) -> None:
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

    def _recover(self, directory: str, now: float) -> None:
        """Record the jobs a killed Snakemake had seen finish but not yet recorded."""
        assert self.capture is not None
        for path, handle in orphaned(directory, self.journal.path if self.journal else ""):
            left = read_journal(path, handle)
            runs = list(left.pending)
            if left.opened is not None:
                runs += jobs_from_metadata(left.opened, now, left.outputs, left.run_id)
            if runs:
                log.warning("lineage-ledger: recording %d job(s) left by an interrupted run (%s)",
                            len(runs), left.run_id)
            futures = []
            for run in runs:
                run.extra = {**run.extra, "recovered_after_interruption": True}
                run.run_id = run.run_id or left.run_id
                futures.append(self.capture.submit(run))
            with self._lock:
                self._futures.update(futures)
            self._after(futures, lambda p=path, h=handle, fs=futures: _retire(p, h, fs))

    def _finish_unreported(self) -> None:
        """Jobs that started and, by Snakemake's metadata, finished without a job_finished event."""
        for jobid, report in list(self._reports.items()):
            try:
                job = self._lookup.find(jobid)
                ended = metadata_end(job, report.started - 1.0)  # mtimes may be coarser than the clock
                if ended is None:
                    continue  # still running when Snakemake stopped, or killed: not a finished job
                del self._reports[jobid]
                report.details = job_details(job)
                run = report.task_run("succeeded", ended, known=self._early_digests(report))
                run.extra = {**run.extra, "finished_from": "snakemake metadata"}
                self._enqueue(report, run)
            except Exception:  # noqa: BLE001
                log.exception("lineage-ledger: could not record job %s from Snakemake's metadata", jobid)

    def _shutdown(self) -> None:
        # Snakemake may close a handler more than once; the first close does the work.
        if self.capture is None or self._closing:
            return
        self._closing = True
        self._finish_unreported()
        with self._lock:
            futures = list(self._futures)
        # Records chained behind their temp inputs' producers are submitted while we wait.
        done, not_done = wait(futures, timeout=self.settings.flush_timeout)
        capture, self.capture = self.capture, None
        flushed = capture.close(timeout=self.settings.flush_timeout)
        if not_done or not flushed:
            log.warning("lineage-ledger: %d job record(s) not written at exit; the spool and the "
                        "pending-jobs journal keep them for the next run", len(not_done))
        if capture.failures:
            log.warning("lineage-ledger: %d job(s) could not be recorded (see the errors above)",
                        capture.failures)
        if self.journal is not None:
            self.journal.close()


def _retire(path: str, handle: IO[str], futures: list[Future[str | None]]) -> None:
    """Drop a recovered journal once all its jobs are in the spool; keep it otherwise."""
    try:
        if all(f.result() is not None for f in futures):
            os.unlink(path)
    finally:
        handle.close()
