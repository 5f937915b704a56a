"""The record side of a :class:`~.task.TaskCapture`: a finished task's report and its hashed
files made into a :class:`~lineage_ledger.Record`, and the directory manifests it needs.

Records are built in submission order: a later task may recall the outputs of an earlier
one (a ``temp()`` file deleted before its consumer is reported), so each succeeded task's
outputs are remembered here as its record is made. Engine values go through
:func:`~.report.jsonable`; the process's environment is taken once and shared. A
directory's manifest record is journaled once per capture, before the first task that
names it; where journaling fails, it is forgotten so that the next task journals it again.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .._environment import current_environment
from .._errors import SpoolError
from .._files.manifest import manifest_record
from .._model import Record
from .files import FoundFiles, TaskFiles
from .not_utf8 import escape_if_needed
from .report import TaskRun, jsonable

if TYPE_CHECKING:
    from .._ledger.recorder import Recorder

__all__ = ["TaskRecords"]


class TaskRecords(TaskFiles):
    """Builds records for the :class:`~.task.TaskCapture` that derives from it, which sets
    these attributes up and opens the recorder (recalling a deleted input may need the ledger)."""

    engine: str
    run_id: str
    _lock: threading.Lock
    _environment: dict[str, Any] | None
    if TYPE_CHECKING:
        def _ensure_open(self) -> Recorder: ...

    def _build(self, run: TaskRun, files: FoundFiles | None) -> Record:
        """``run``'s record; runs in submission order (a later task may recall these outputs)."""
        try:
            self._ensure_open()  # recalling a deleted input may need the ledger
        except SpoolError:  # the record is still built: where it can be kept is seen when it is journaled
            pass
        extra = dict(jsonable(run.extra)) if run.extra else {}
        if files is None:
            inputs: dict[str, dict[str, Any]] = {}
            outputs: dict[str, dict[str, Any]] = {}
        else:
            inputs, outputs = files.inputs, files.outputs
            if files.gone:
                unhashed, recalled = self._recall(files.gone, inputs)
                if unhashed:
                    extra["unhashed_inputs"] = unhashed
                if recalled:  # digests of files already gone, taken from an earlier record: say so
                    extra["recalled_inputs"] = recalled
            if files.missing:
                extra["missing_outputs"] = files.missing
        # parameters and extra went through jsonable, the environment is ours: no key scan.
        record = Record._from_json_values(
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
            parameters=jsonable(run.parameters) if run.parameters else {},
            environment=self._environment_of(run),
            attempt=run.attempt,
            extra=extra,
        )
        if outputs and run.status == "succeeded":
            with self._lock:
                self._outputs.update(outputs)
        # Encoded here (the recorder uses these bytes); text that is not UTF-8 is escaped.
        return escape_if_needed(record)

    def _environment_of(self, run: TaskRun) -> dict[str, Any]:
        if run.environment_extra:
            return current_environment(**jsonable(run.environment_extra))
        # The process's environment does not change from task to task: build it once
        # and share it (records never modify it).
        environment = self._environment
        if environment is None:
            environment = self._environment = current_environment()
        return environment

    def _manifest_records(self, files: FoundFiles | None) -> list[Record]:
        """Records of the manifests of ``files``' directories not journaled by this capture yet."""
        if files is None or not files.manifests:
            return []
        fresh = []
        with self._lock:
            for digest, manifest in files.manifests.items():
                if digest not in self._journaled_manifests:
                    self._journaled_manifests.add(digest)
                    fresh.append(manifest_record(manifest))
        return fresh

    def _forget_manifests(self, records: list[Record]) -> None:
        with self._lock:
            for record in records:
                if record.engine == "lineage-ledger" and record.task_name == "directory manifest":
                    self._journaled_manifests.discard(record.task_id)
