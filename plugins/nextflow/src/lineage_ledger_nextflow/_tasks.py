"""Trace rows and published files turned into :class:`lineage_ledger.TaskRun` records.

One record per task try that ran (``COMPLETED``, ``FAILED`` or ``ABORTED`` in the trace;
a retried task's tries each have a row, a work directory and an attempt number of their
own). Tasks taken from the cache (``CACHED``) ran in an earlier run, which recorded them.
The files a task's ``publishDir`` published get a second record once Nextflow has exited
(publishing runs after the task ends, on a thread pool): ``PROCESS:publish``, reading the
files in the work directory and writing the published copies or links. ``verify-lineage``
on a published file therefore walks back through the task that made it to the sources.

Records go through :class:`lineage_ledger.TaskCapture`: ``post`` returns at once, the
capture's worker hashes and writes each record to the durable spool first, then the ledger.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ._log import Published
from ._trace import parse_time
from ._workdir import read_workdir, task_key

log = logging.getLogger("lineage_ledger.nextflow")

SCRIPT_KEPT = 8 << 10  # bytes of a task's script kept in the record (its digest covers all of it)
TAIL = 2 << 10  # bytes of a failed task's .command.err kept


class TaskRecorder:
    """Receives trace rows (on the trace thread) and published files (at the end)."""

    def __init__(self, capture: Any, params: Mapping[str, Any]) -> None:
        self.capture = capture
        self.params = dict(params)
        self.session: str | None = None
        self.tasks: dict[str, dict[str, Any]] = {}  # key -> what the session file keeps
        self.cached = 0
        self.recorded = 0
        self._lock = threading.Lock()

    def on_row(self, row: dict[str, str]) -> None:
        try:
            self._row(row)
        except Exception:  # noqa: BLE001 - one task's record, never the pipeline
            log.exception("lineage-ledger: could not record task %s", row.get("name"))

    def _row(self, row: dict[str, str]) -> None:
        status = row.get("status", "")
        workdir = _value(row, "workdir")
        if status == "CACHED" or workdir is None:
            with self._lock:
                self.cached += status == "CACHED"
            return
        from lineage_ledger import TaskRun, code_digest

        work = read_workdir(workdir)
        key = task_key(workdir)
        exit_status = _int(_value(row, "exit"))
        if exit_status is None:
            exit_status = work.exit_code
        succeeded = status == "COMPLETED"
        extra: dict[str, Any] = {
            "workdir": workdir, "hash": key, "nextflow_task_id": _value(row, "task_id"),
            "native_id": _value(row, "native_id"), "name": _value(row, "name"), "tag": _value(row, "tag"),
            "nextflow_status": status, "exit_status": exit_status, "error_action": _value(row, "error_action"),
            "staged": work.staged, "container": _value(row, "container"), "conda_env": work.conda,
        }
        if work.script is not None:
            extra["script"] = work.script[:SCRIPT_KEPT].decode("utf-8", "replace")
        if not succeeded:
            extra["stderr_tail"] = _tail(os.path.join(workdir, ".command.err"))
        if work.problems:
            extra["workdir_problems"] = work.problems
        environment = {"container": _value(row, "container"), "conda_env": work.conda}
        now = datetime.now(timezone.utc)
        started = parse_time(row.get("start")) or parse_time(row.get("submit")) or now
        run = TaskRun(
            task_id=key, task_name=row.get("process") or "?", status="succeeded" if succeeded else "failed",
            started=started, ended=parse_time(row.get("complete")) or now,
            inputs=work.inputs, outputs=work.outputs,
            code_digest=code_digest(work.script) if work.script is not None else None,
            parameters={"params": self.params, "tag": _value(row, "tag")},
            environment_extra={k: v for k, v in environment.items() if v is not None},
            attempt=_int(_value(row, "attempt")) or 1, extra=extra,
        )
        self.capture.post(run)
        with self._lock:
            self.recorded += 1
            self.tasks[key] = {
                "process": run.task_name, "name": extra["name"], "workdir": workdir,
                "status": run.status, "inputs": list(work.inputs), "outputs": list(work.outputs),
                "published": [],
            }

    def on_published(self, published: list[Published]) -> int:
        """One ``PROCESS:publish`` record per task of this run that published files."""
        from lineage_ledger import TaskRun

        by_task: dict[str, list[Published]] = {}
        for item in published:
            key = task_key(os.path.dirname(item.source))
            task = self.tasks.get(key)
            if task is None or not item.source.startswith(task["workdir"] + os.sep):
                continue  # a cached task's files, published (again) from what an earlier run recorded
            by_task.setdefault(key, []).append(item)
        now = datetime.now(timezone.utc)
        for key, items in by_task.items():
            task = self.tasks[key]
            task["published"] = [[i.source, i.target] for i in items]
            self.capture.post(TaskRun(
                task_id=f"{key}/publish", task_name=f"{task['process']}:publish", status="succeeded",
                started=now, ended=now, inputs=[i.source for i in items], outputs=[i.target for i in items],
                extra={"workdir": task["workdir"], "hash": key, "published": {i.target: i.mode for i in items},
                       "nextflow_status": "PUBLISHED"},
            ))
        return len(by_task)


def _value(row: Mapping[str, str], name: str) -> str | None:
    value = row.get(name)
    return None if value in (None, "", "-") else value


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _tail(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - TAIL))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None
