"""Hash a job's ``temp()`` outputs before Snakemake can delete them.

Snakemake logs ``job_finished`` and then, in the same call on its main thread
(``JobScheduler._finish_jobs`` -> ``DAG.finish`` -> ``DAG.handle_temp``), deletes the temp
files no job still needs: the finished job's own unneeded temp outputs at once, its temp
inputs once their last consumer is done. The plugin's handler hears ``job_finished`` later,
through Snakemake's log queue, and hashes on the capture's threads later still; under a
backlog a temp output could be gone before its own record hashed it.

:class:`TempOutputHook` is a filter on Snakemake's logger, so it runs synchronously inside
that ``logger.info`` call, before ``DAG.finish``. It hashes only the job's ``temp()``
outputs (usually few and small; every other file is hashed off Snakemake's threads as
before) and keeps the digests for the job's record, which takes them as ``known``.

On ``job_info``, logged before Snakemake starts the job, it takes a ``stat`` of each of the
job's input files (no reading): the recording process hashes them as of that moment (see
:mod:`._started`).

The same filter tells the plugin when ``Workflow.execute`` begins (``workflow_started``), so
that it starts its recording process while Snakemake builds the DAG.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from blake3 import blake3

from ._jobs import JobLookup, parse_files
from ._preflight import SnakemakeLogHook
from ._started import stat_inputs

log = logging.getLogger("lineage_ledger.snakemake")


def file_entry(path: str) -> dict[str, Any] | None:
    """``lineage_ledger.hash_file(path).entry()`` for a regular file reached by no symbolic
    link, without importing ``lineage_ledger`` on Snakemake's main thread (about 0.1 s of
    CPU; a temp() output is often the first thing a run hashes). None for anything else.

    The same bytes as the core's entry for a file: ``{"blake3": hex digest, "size": bytes}``,
    the file read whole while its size and mtime stay put.
    """
    try:
        if os.path.realpath(path) != path:
            return None
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            return None
        hasher = blake3()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
        after = os.stat(path)
    except OSError:
        return None  # missing or unreadable: the record says so when it hashes
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        return None  # changing while read: the core's hashing retries it
    return {"blake3": hasher.hexdigest(), "size": after.st_size}


def _core_entry(path: str) -> dict[str, Any] | None:
    from lineage_ledger import ArtifactError, hash_file

    try:
        artifact = hash_file(path)
    except ArtifactError:
        return None  # missing or unreadable: the record says so when it hashes
    entry = artifact.entry()
    manifest = getattr(artifact, "manifest", None)
    if manifest is not None:
        # A directory's record needs its manifest, which stays in this process: it travels
        # with the digest to the recording process (_journal.decode_run), or that process
        # hashes again and finds a temp() directory deleted.
        entry["manifest"] = manifest.to_json()
    return entry


class TempOutputHook(SnakemakeLogHook):
    def __init__(self, on_workflow_started: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self.on_workflow_started = on_workflow_started
        self.digests: dict[str, dict[str, Any]] = {}  # abs path -> {"blake3", "size"}; taken by records
        self.input_stats: dict[int, dict[str, list[int]]] = {}  # job id -> its inputs' stats at its start
        # job id -> the outputs of the group job it belongs to: written by the group's own jobs,
        # after the group's job_info events (a cluster runs them later, in one submission)
        self._group_outputs: dict[int, set[str]] = {}
        self._lookup = JobLookup()
        self._failed = False
        self.cpu = 0.0  # CPU seconds spent here, on Snakemake's main thread

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if event is None:
            return True
        began = time.thread_time()
        self._on_event(event, record)
        self.cpu += time.thread_time() - began
        return True

    def _on_event(self, event: Any, record: logging.LogRecord) -> None:
        if event == "workflow_started" and self.on_workflow_started is not None:
            try:
                self.on_workflow_started(record.created)
            except Exception:  # noqa: BLE001 - the first job event tries again
                log.exception("lineage-ledger: could not start recording at workflow start")
        elif event == "group_info":
            try:
                self._note_group(record)
            except Exception:  # noqa: BLE001 - never into Snakemake
                log.exception("lineage-ledger: could not read a group job's outputs")
        elif event == "job_info":
            try:
                self._stat_inputs(record)
            except Exception:  # noqa: BLE001 - never into Snakemake; its inputs are hashed after it ends
                log.exception("lineage-ledger: could not stat a job's inputs at its start")
        elif event == "job_finished" and not self._failed:
            try:
                self._hash_temp_outputs(int(record.__dict__["job_id"]))
            except Exception:  # noqa: BLE001 - never into Snakemake; the pool still tries later
                log.exception("lineage-ledger: could not hash temp() outputs at job_finished; "
                              "they are hashed later, if still there")
                self._failed = True

    def _hash_temp_outputs(self, jobid: int) -> None:
        job = self._lookup.find(jobid)
        if job is None:
            return
        temp = [f for f in job.output if (getattr(f, "flags", None) or {}).get("temp")]
        for f in temp:
            path = os.path.abspath(f)
            entry = file_entry(path)
            if entry is None:
                entry = _core_entry(path)  # a directory, or a path through a symbolic link
            if entry is not None:
                self.digests[path] = entry

    def _note_group(self, record: logging.LogRecord) -> None:
        jobs = list(record.__dict__.get("jobs") or ())
        outputs = {os.path.abspath(f) for job in jobs for f in job.output}
        for job in jobs:
            self._group_outputs[int(job.jobid)] = outputs

    def _stat_inputs(self, record: logging.LogRecord) -> None:
        """Before Snakemake starts the job (see _started): a stat of each input file, but not
        of one another job of its group writes (what is there now is the last run's)."""
        get = record.__dict__.get
        jobid = int(get("jobid"))  # type: ignore[arg-type]
        made_in_group = self._group_outputs.pop(jobid, set())
        files = [ref.path for ref in parse_files(get("input")) if ref.hashable and ref.path not in made_in_group]
        if files:
            self.input_stats[jobid] = stat_inputs(files)

    def take_input_stats(self, jobid: int) -> dict[str, list[int]]:
        return self.input_stats.pop(jobid, None) or {}

    def take(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        """The digests kept for ``paths``, removed from the hook."""
        if not self.digests:
            return {}
        return {p: entry for p in paths if (entry := self.digests.pop(p, None)) is not None}
