"""The plugin's working part: Snakemake's job events in, ledger records out.

Imported only when a run with ``--logger ledger`` starts executing, so that a plain
``snakemake`` in an environment where the plugin is installed does not import the ledger.

Here, in Snakemake's process, a job becomes a ``TaskRun`` message (no file is hashed, and
``lineage_ledger`` is not imported), one journal line, and the same line sent to the
recording process (:mod:`._sidecar`), which hashes and records it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections import deque
from typing import IO, Any

from ._jobs import JobLookup, JobReport, error_details, job_details, json_default, parse_files
from ._journal import PendingJournal, orphaned
from ._sinks import InProcessSink, SidecarSink

log = logging.getLogger("lineage_ledger.snakemake")

JOURNAL_DIR = os.path.join(".lineage", "snakemake-pending")


class JobRecorder:
    """Turns ``job_info`` / ``job_finished`` / ``job_error`` events into sent records."""

    def __init__(self, settings: Any, temp_hook: Any = None, recent_errors: Any = None,
                 policy_hook: Any = None) -> None:
        self.settings = settings
        # a _preflight.PolicyHook: under warn, the files a tampered ledger could not vouch for
        self.policy_hook = policy_hook
        # (time, text) of Snakemake's recent "error" events: a failed job's exception text
        self.recent_errors: Any = recent_errors if recent_errors is not None else deque(maxlen=32)
        self.temp_hook = temp_hook  # a _eager.TempOutputHook: temp() digests taken at job_finished
        self.run_id = settings.run_id or os.environ.get("LINEAGE_RUN_ID") or uuid.uuid4().hex
        self.journal: PendingJournal | None = None
        self.sink: Any = None  # SidecarSink, or InProcessSink if the recording process cannot start
        self._started = False
        self._recovered = False
        self._reports: dict[int, JobReport] = {}
        self._attempts: dict[int, int] = {}
        self._orphan_handles: list[IO[str]] = []
        self._unjournaled: set[str] = set()  # jobs whose journal line could not be written
        self._lookup = JobLookup()
        # a pipe() -> the files its producer read (through its own pipes too): a pipe is never
        # hashed, so its reader's record lists them instead, and the lineage goes on through it
        self._pipe_sources: dict[str, list[str]] = {}
        self._closing = False
        self._cwd = ""  # the workflow's working directory, from start() on
        self.jobs_sent = 0
        self.close_wait = 0.0
        self.summary: dict[str, Any] | None = None  # the recording process's, at close

    def start(self, now: float) -> None:
        """Open the journal and start the recording process (Snakemake is in its workdir by now).

        Called on Snakemake's main thread when the workflow starts executing, so that the
        recording process starts up while Snakemake builds its DAG; else at the first job event.
        """
        if self._started:
            return
        self._started = True
        self._cwd = os.getcwd()  # Snakemake does not change directory while jobs run
        directory = os.path.join(self._cwd, JOURNAL_DIR)
        try:
            self.journal = PendingJournal(directory, self.run_id, now)
        except OSError as err:  # e.g. a read-only working directory with a remote ledger
            log.warning("lineage-ledger: no pending-jobs journal (%s); records still go to the "
                        "ledger, but a kill -9 may lose the jobs not yet in the spool", err)
        config = {"url": self.settings.url, "run_id": self.run_id, "threads": self.settings.hash_threads,
                  "flush_timeout": self.settings.flush_timeout}
        try:
            self.sink = SidecarSink(config, self.journal.fileno() if self.journal else None)
        except OSError as err:
            log.warning("lineage-ledger: could not start the recording process (%s); recording on "
                        "Snakemake's own threads", err)
            self.sink = InProcessSink(config, self.journal)

    def handle(self, event: str, record: logging.LogRecord) -> None:
        self.start(record.created)
        if not self._recovered:
            self._recovered = True  # the DAG exists by the first job event
            if self.journal is not None:
                self._recover(os.path.dirname(self.journal.path), record.created)
        if event == "job_info":
            report = JobReport.from_event(record, self._cwd)
            self._reports[report.jobid] = report
            self._send_start(report.jobid)
            pipes = [r.path for r in report.outputs if "pipe" in r.flags]
            if pipes:  # its reader runs in the same group, started with it: its job_info is here first
                carried = list(dict.fromkeys(self._carried(report)))
                self._pipe_sources.update(dict.fromkeys(pipes, carried))
        elif event == "job_finished":
            self._finished(int(record.__dict__["job_id"]), record.created)
        else:
            self._failed(record)

    def close(self) -> None:
        self._shutdown()

    def _send_start(self, jobid: int) -> None:
        """The inputs' stats taken before the job started: the recording process hashes them now."""
        stats = self.temp_hook.take_input_stats(jobid) if self.temp_hook is not None else {}
        if stats:
            self._send(json.dumps({"start": jobid, "inputs": stats}, separators=(",", ":")))

    # -- the events ---------------------------------------------------------------------
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
        report = self._reports.pop(jobid, None) or JobReport.from_event(record, self._cwd)
        report.details = job_details(self._lookup.find(jobid))
        if get("conda_env"):
            report.details.setdefault("conda_env", get("conda_env"))
        if get("container_img"):
            report.details.setdefault("container", get("container_img"))
        if get("log"):
            report.logs = parse_files(get("log"), self._cwd)
        error = {"message": get("rule_msg"), "aux": get("aux"),
                 **error_details(report, get("shellcmd"), self.recent_errors, record.created)}
        self._enqueue(report, report.task_run("failed", record.created, error=error))

    def _carried(self, report: JobReport) -> list[str]:
        """The files that reached ``report``'s job: its hashable inputs, and what its pipes carried."""
        # (a reader's job_info names a pipe without Snakemake's "(pipe)" flag: known by its path)
        files: list[str] = []
        for ref in report.inputs:
            files.extend(self._pipe_sources.get(ref.path, [ref.path] if ref.hashable else []))
        return files

    # -- recording ----------------------------------------------------------------------
    def _enqueue(self, report: JobReport, run: dict[str, Any]) -> None:
        via = {r.path: self._pipe_sources[r.path] for r in report.inputs if r.path in self._pipe_sources}
        if via:  # what the pipes carried is what the job read; a pipe itself is never hashed
            carried = [p for paths in via.values() for p in paths]
            run["inputs"] = list(dict.fromkeys([*(p for p in run["inputs"] if p not in via), *carried]))
            streams = [p for p in run["extra"].get("streams", []) if p not in via]
            run["extra"] = {**run["extra"], "via_pipe": via, "streams": [*streams, *via]}
        unverified = getattr(self.policy_hook, "unverified", None)
        if unverified is not None:  # a job that read a file the ledger could not vouch for lists neither
            unverified.apply(run)
        self._stamp_seen(report, run)
        attempt = self._attempts[report.jobid] = self._attempts.get(report.jobid, 0) + 1
        run["attempt"] = attempt
        run["run_id"] = self.run_id  # journaled: a later run records it under this run's id
        key = f"{report.jobid}:{attempt}"
        line = json.dumps({"job": key, "run": run}, separators=(",", ":"), default=json_default)
        if self.journal is not None:
            try:
                self.journal.add_line(line)
            except OSError as err:  # a full disk: the job is still recorded, only not journaled
                if not self._unjournaled:
                    log.warning("lineage-ledger: cannot write the pending-jobs journal %s (%s); jobs are still "
                                "recorded, but one that cannot be recorded now is not kept for a later run",
                                self.journal.path, err)
                self._unjournaled.add(key)
        self._send(line)
        self.jobs_sent += 1

    def _stamp_seen(self, report: JobReport, run: dict[str, Any]) -> None:
        """What this process had seen of the ledger when the job started (the core's order of
        records, ``lineage_ledger._order``): stamped here, before the line is journaled, so
        that the recording process and a later run recovering the line build one record.
        Only where the ledger is imported already (a pre-run check ran, whose verified head is
        the reading): a run with the policy off stays without it, recorded by its clocks, and
        the recording process never adds its own (``stamp_seen=False``)."""
        if "lineage_ledger" not in sys.modules:
            return
        from datetime import datetime, timezone

        from lineage_ledger._capture.seen_stamp import seen_for
        from lineage_ledger._order import AFTER_KEY, SEEN_KEY

        values = seen_for(datetime.fromtimestamp(report.started, timezone.utc), self.settings.url)
        if values and AFTER_KEY not in run["extra"] and SEEN_KEY not in run["extra"]:
            run["extra"] = {**run["extra"], **values}

    def _send(self, line: str) -> None:
        try:
            self.sink.send(line)
        except OSError as err:  # the recording process is gone: go on here, nothing lost
            log.warning("lineage-ledger: the recording process stopped (%s); recording on "
                        "Snakemake's own threads from now on", err)
            config = {"url": self.settings.url, "run_id": self.run_id,
                      "threads": self.settings.hash_threads, "flush_timeout": self.settings.flush_timeout}
            self.sink = InProcessSink(config, self.journal)
            self.sink.send(line)

    def _recover(self, directory: str, now: float) -> None:
        """Record the jobs a killed Snakemake had seen finish but not yet recorded."""
        for path, handle in orphaned(directory, self.journal.path if self.journal else ""):
            # Imported only when there is an orphan: they import lineage_ledger.
            from ._journal import encode_run, read_journal
            from ._recovery import jobs_from_metadata, leave_out_changed_since

            self._orphan_handles.append(handle)  # locked until this run ends
            try:  # its last write: before the kill, by the clock of the outputs' file system
                journal_written: float | None = os.fstat(handle.fileno()).st_mtime
            except OSError:
                journal_written = None
            left = read_journal(path, handle)
            runs = list(left.pending)
            if left.opened is not None:
                runs += jobs_from_metadata(left.opened, now, left.outputs, left.run_id)
            if runs:
                log.warning("lineage-ledger: recording %d job(s) left by an interrupted run (%s)",
                            len(runs), left.run_id)
            for number, run in enumerate(runs):
                run.extra = {**run.extra, "recovered_after_interruption": True}
                leave_out_changed_since(run, journal_written)
                run.run_id = run.run_id or left.run_id
                self._send(json.dumps({"job": f"orphan:{path}:{number}", "run": encode_run(run),
                                       "orphan": path}, separators=(",", ":"), default=str))
            if not runs:
                os.unlink(path)

    def _finish_unreported(self) -> None:
        """Jobs that started and, by Snakemake's metadata, finished without a job_finished event."""
        if not self._reports:
            return  # the usual case; _recovery imports lineage_ledger, which Snakemake's process never needs
        from ._recovery import metadata_end

        for jobid, report in list(self._reports.items()):
            try:
                job = self._lookup.find(jobid)
                ended = metadata_end(job, report.started - 1.0)  # mtimes may be coarser than the clock
                if ended is None:
                    continue  # still running when Snakemake stopped, or killed: not a finished job
                del self._reports[jobid]
                report.details = job_details(job)
                run = report.task_run("succeeded", ended, known=self._early_digests(report))
                run["extra"] = {**run["extra"], "finished_from": "snakemake metadata"}
                self._enqueue(report, run)
            except Exception:  # noqa: BLE001
                log.exception("lineage-ledger: could not record job %s from Snakemake's metadata", jobid)

    def _shutdown(self) -> None:
        # Snakemake may close a handler more than once; the first close does the work.
        if self.sink is None or self._closing:
            return
        self._closing = True
        if not self._recovered and self.journal is not None:
            # No job ran ("Nothing to be done"): what an earlier run's journal kept is
            # recorded all the same, not left for a later run that happens to run a job.
            self._recovered = True
            self._recover(os.path.dirname(self.journal.path), time.time())
        self._finish_unreported()
        began = time.perf_counter()
        summary = self.summary = self.sink.close()
        self.close_wait = time.perf_counter() - began  # how long Snakemake's exit waited for it
        for handle in self._orphan_handles:
            handle.close()
        # A job that could not be recorded is kept for the next run by its journal line; one
        # whose line could not be written either (a full disk under both) is lost: said so.
        lost = [key for key in summary.get("failed_jobs", ()) if not key.startswith("orphan:")
                and (self.journal is None or key in self._unjournaled)]
        failures = int(summary.get("failures", 0))
        if summary.get("error"):
            log.warning("lineage-ledger: %s; the spool and the pending-jobs journal keep what was not "
                        "recorded for the next run", summary["error"])
        elif summary.get("not_done"):
            log.warning("lineage-ledger: %d job record(s) not written at exit; the spool and the "
                        "pending-jobs journal keep them for the next run", summary["not_done"])
        elif not summary.get("all_recorded", True) and not failures:
            log.warning("lineage-ledger: the spool could not be synced; the pending-jobs journal keeps this "
                        "run's jobs for the next run")
        elif not summary.get("flushed", True):
            # Why is the core's to say, in the line just before this one (locked, down, or a
            # refusal for good such as a role that does not exist): no guess here.
            log.warning("lineage-ledger: the ledger did not take this run's last records before the run "
                        "ended (why: see above); they wait in the spool, and `lineage-ledger spool ship` or "
                        "the next run ships them")
        if lost:
            log.warning("lineage-ledger: %d job(s) were NOT recorded and are NOT kept for a later run: neither "
                        "the spool, the ledger nor the pending-jobs journal could take them (see the errors "
                        "above); their outputs are vouched for by no record: `lineage-ledger adopt` them, or run "
                        "them again", len(lost))
        if failures > len(lost):
            log.warning("lineage-ledger: %d job(s) could not be recorded (see the errors above); the pending-jobs "
                        "journal keeps them, and the next run records them", failures - len(lost))
        if self.journal is not None:
            self.journal.close(remove=bool(summary.get("all_recorded")))
