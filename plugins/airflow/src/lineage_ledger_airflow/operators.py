"""LedgerOperator: a Python callable or a shell command on declared files, verified first.

Declared ``inputs`` and ``outputs`` become the task's ``file://`` inlets and outlets, so
Airflow's asset graph, the listener and OpenLineage all see them. Before the task runs,
its inputs are checked against the ledger (policy ``warn``, ``strict`` or ``rerun``);
after it runs, its outputs are hashed, the digest goes into each output's asset event
``extra``, and OpenLineage (when installed) gets a ``DatasetVersionDatasetFacet`` per file.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowException

from lineage_ledger import code_digest

from . import _openlineage, _settings, _tries
from ._assets import file_uri, not_utf8
from ._checks import check_inputs
from ._command import Command

log = logging.getLogger("lineage_ledger.airflow")


def dag_folder(dag: Any = None, task_group: Any = None) -> str | None:
    """The folder of the DAG file the operator being made belongs to (``dag.folder``), or
    None where no DAG is known yet (an operator made outside ``with DAG(...)``)."""
    if dag is None and task_group is not None:
        dag = getattr(task_group, "dag", None)
    if dag is None:
        try:
            from airflow.sdk.definitions._internal.contextmanager import DagContext

            dag = DagContext.get_current()
        except ImportError:  # pragma: no cover - moved in another Airflow release
            return None
    fileloc = getattr(dag, "fileloc", None)
    return os.path.dirname(os.path.abspath(fileloc)) if fileloc else None


def _in_folder(path: str | bytes | os.PathLike[Any], folder: str | None, what: str) -> str:
    """``path`` made absolute against the DAG file's ``folder``; a relative one without a DAG
    is refused, as no working directory would name the same file in every process.

    A name that is not UTF-8 is kept (``os.fsdecode``'s text): the operator runs on it as it
    would without the ledger, and the file is left out of its records, said once by the
    listener; ``strict`` refuses the task (:func:`._checks.check_inputs`). Refused here, it
    broke the DAG file as Airflow parsed it, and every DAG in it with it."""
    text = os.fsdecode(path)
    if not os.path.isabs(text):
        if folder is None:
            raise ValueError(f"LedgerOperator {what}: {text!r} is relative, and no DAG is known to resolve it "
                             "against: make the operator inside 'with DAG(...)' (or pass dag=), or give an "
                             "absolute path")
        text = os.path.join(folder, text)
    return os.path.abspath(text)


class LedgerOperator(BaseOperator):
    """Run ``python_callable`` or ``bash_command`` with verified inputs and hashed outputs.

    :param inputs: files the task reads; relative paths are the DAG file's folder's, whatever
        the working directory of the process. They become ``file://`` inlets.
    :param outputs: files the task writes (relative: the DAG file's folder's, as ``inputs``).
        They become ``file://`` outlets; one that the task did not produce fails it.
    :param python_callable: called as ``python_callable(*op_args, **op_kwargs)``; its
        return value is the task's XCom.
    :param bash_command: run with ``bash -c`` (templated: ``{{ task.inputs[0] }}`` and
        ``{{ task.outputs[0] }}`` are the absolute paths); a non-zero exit fails the task.
    :param cwd: where ``bash_command`` runs (relative: the DAG file's folder's, so ``"."`` is
        that folder). By default a new temporary directory, removed afterwards, as Airflow's
        ``BashOperator`` does: the DAG folder may be read-only (a git DAG bundle's checkout),
        and a command's scratch files do not belong there.
    :param policy: ``warn``, ``strict`` or ``rerun``; default ``[lineage_ledger] policy``.
        ``rerun`` runs the task on the changed inputs and records them as such: Airflow
        gives a running task no way to rerun its upstream producers (``airflow tasks clear
        --upstream`` does).
    """

    template_fields: Sequence[str] = ("bash_command", "op_args", "op_kwargs", "env")
    template_ext: Sequence[str] = (".sh", ".bash")
    ui_color = "#d9f2e6"

    def __init__(
        self,
        *,
        inputs: Collection[str | bytes | os.PathLike[Any]] = (),
        outputs: Collection[str | bytes | os.PathLike[Any]] = (),
        python_callable: Callable[..., Any] | None = None,
        bash_command: str | None = None,
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        policy: str | None = None,
        **kwargs: Any,
    ) -> None:
        if (python_callable is None) == (bash_command is None):
            raise ValueError("LedgerOperator needs exactly one of python_callable and bash_command")
        if python_callable is not None and not callable(python_callable):
            raise TypeError("python_callable must be callable")
        if policy is not None and policy not in ("warn", "strict", "rerun"):
            raise ValueError(f"policy must be warn, strict or rerun, not {policy!r}")
        # Relative paths are the DAG file's folder's (Airflow's own rule for templates), not
        # the working directory of whichever process parses the file: the DAG processor and
        # each task process have their own, and the scheduler's is often "/".
        folder = dag_folder(kwargs.get("dag"), kwargs.get("task_group"))
        self.inputs = [_in_folder(p, folder, "inputs") for p in inputs]
        given = [os.fsdecode(p) for p in outputs]
        self.outputs = [_in_folder(p, folder, "outputs") for p in given]
        #: The outputs given as relative paths, by absolute path (a failure to produce one names both).
        self.relative_outputs = {path: name for path, name in zip(self.outputs, given, strict=True)
                                 if not os.path.isabs(name)}
        kwargs["inlets"] = [*(Asset(uri=file_uri(p)) for p in self.inputs), *(kwargs.get("inlets") or [])]
        kwargs["outlets"] = [*(Asset(uri=file_uri(p)) for p in self.outputs), *(kwargs.get("outlets") or [])]
        super().__init__(**kwargs)
        self.python_callable = python_callable
        self.bash_command = bash_command
        self.op_args = list(op_args or [])
        self.op_kwargs = dict(op_kwargs or {})
        self.env = dict(env) if env is not None else None
        #: Where ``bash_command`` runs: a temporary directory of its own unless told (a
        #: relative ``cwd`` is the DAG file's folder's).
        self.cwd = _in_folder(cwd, folder, "cwd") if cwd is not None else None  # in no record: any name
        #: Declared outputs that the command wrote under their relative names in its
        #: temporary working directory instead (found before it is removed).
        self._written_in_temp: list[str] = []
        #: The shell command running now, for on_kill.
        self._command: Command | None = None
        self.policy = policy
        # Digests of this try, for the OpenLineage hooks that run after execute().
        self._input_digests: dict[str, dict[str, Any] | None] = {}
        self._output_digests: dict[str, dict[str, Any] | None] = {}

    # -- what runs ----------------------------------------------------------------------
    def _code(self) -> str:
        if self.bash_command is not None:
            return self.bash_command
        try:
            return inspect.getsource(self.python_callable)  # type: ignore[arg-type]
        except (OSError, TypeError):
            func = self.python_callable
            return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"

    def _run_command(self) -> None:
        if self.cwd is not None:
            self._run_in(self.cwd)
            return
        with tempfile.TemporaryDirectory(prefix="lineage-ledger-task-") as scratch:
            try:
                self._run_in(scratch)
            finally:
                self._written_in_temp = [path for path, relative in self.relative_outputs.items()
                                         if not os.path.lexists(path)
                                         and os.path.lexists(os.path.join(scratch, relative))]

    def _run_in(self, cwd: str) -> None:
        env = {**os.environ, **(self.env or {})}
        log.info("Running in %s: %s", cwd, self.bash_command)
        # A process group of its own, ended with the try (a timeout, a kill): see _command.
        self._command = Command(self.bash_command, cwd, env)  # type: ignore[arg-type]
        try:
            status, output = self._command.run()
        finally:
            self._command = None
        for line in output.splitlines():
            log.info("%s", line)
        if status != 0:
            raise AirflowException(f"command exited with status {status}: {self.bash_command}")

    def on_kill(self) -> None:
        """Airflow ends this try from outside (marked failed, cleared, its time is up): the
        command's whole process group goes with it."""
        if self._command is not None:
            self._command.end()

    def _not_produced(self, missing: list[str]) -> AirflowException:
        """The error for declared outputs the task did not produce, saying where a command
        wrote one under its relative name instead."""
        message = f"declared outputs not produced: {', '.join(missing)}"
        if stray := [p for p in missing if p in self._written_in_temp]:
            names = ", ".join(repr(self.relative_outputs[p]) for p in stray)
            message += (f". The command wrote {names} in its own temporary working directory, removed now: a "
                        "relative output is the DAG file's folder's, the command's working directory is not. "
                        "Write to '{{ task.outputs[N] }}' (the absolute path), or pass cwd='.' to run the "
                        "command in the DAG's folder (which must then be writable)")
        return AirflowException(message)

    def execute(self, context: Any) -> Any:
        ti = context["ti"]
        if not _settings.enabled():  # the ledger is switched off: run the task, nothing else
            result = self._run()
            if missing := [p for p in self.outputs if not os.path.exists(p)]:
                raise self._not_produced(missing)
            return result
        details = _tries.details_for(ti)
        details.code = code_digest(self._code())
        details.parameters = {"operator": _tries.operator_path(self), "op_args": self.op_args, "op_kwargs": self.op_kwargs,
                              "kind": "bash" if self.bash_command is not None else "python"}
        details.extra["ledger_operator"] = {"policy": self.policy or "default"}
        records_itself = not _tries.listener_active() and _settings.recording()
        if records_itself:
            _tries.note_start(ti)
        status, error = "failed", None
        try:
            result = self._execute_verified(context, details)
            status = "succeeded"
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            if records_itself:
                _tries.record_try(ti, status, state="success" if status == "succeeded" else "failed", error=error)
                _tries.flush_before_exit()

    def _execute_verified(self, context: Any, details: _tries.Details) -> Any:
        check_inputs(self.inputs, self.policy, ti=context["ti"], outputs=self.outputs)
        # The start hook hashed the inputs already (they were just verified unchanged). A
        # name that is not UTF-8 is not hashed: no record or lineage event can name it.
        seen = _tries.started_digests(context["ti"])
        self._input_digests = {
            p: seen.get(p) or (_tries.digest_of(p) if os.path.exists(p) else None)
            for p in self.inputs if not not_utf8(p)
        }
        details.known.update({p: e for p, e in self._input_digests.items() if e})
        result = self._run()
        self._hash_outputs(context, details)
        return result

    def _run(self) -> Any:
        if self.bash_command is not None:
            self._run_command()
            return None
        return self.python_callable(*self.op_args, **self.op_kwargs)  # type: ignore[misc]

    def _hash_outputs(self, context: Any, details: _tries.Details) -> None:
        missing = [p for p in self.outputs if not os.path.exists(p)]
        for path in self.outputs:
            if path in missing or not_utf8(path):  # said by the listener; in no record
                continue
            entry = _tries.digest_of(path)  # remembered: the consumers' start hooks reuse it
            self._output_digests[path] = entry
            details.outputs_known[path] = entry
            extra = context["outlet_events"][Asset(uri=file_uri(path))].extra
            extra.update({"blake3": entry["blake3"], "size": entry["size"], "ledger": "lineage-ledger"})
        if missing:
            raise self._not_produced(missing)

    # -- OpenLineage (called by its provider's DefaultExtractor when it is installed) ----
    def _lineage(self, outputs: bool) -> Any:
        if not _openlineage.available():
            _openlineage.hint_once()
            return None
        inputs = self._input_digests or {p: None for p in self.inputs if not not_utf8(p)}
        produced = self._output_digests if outputs else {}
        return _openlineage.operator_lineage(inputs, {p: produced.get(p) for p in self.outputs if not not_utf8(p)})

    def get_openlineage_facets_on_start(self) -> Any:
        return self._lineage(outputs=False)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self._lineage(outputs=True)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self._lineage(outputs=True)
