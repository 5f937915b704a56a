"""What the record of one task-instance try says: the key that names the try across reports
and processes, its own id, its code, the Airflow facts kept with it, and the record itself
(:func:`try_run`), built from what the running hook saw at its start (:class:`Started`),
what an operator added (:class:`Details`) and the report.

Nothing here holds state: :mod:`._tries` keeps which tries this process has seen and
claimed, and writes their records; the listener, the operators and the checks use these
names through it.
"""

from __future__ import annotations

import inspect
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lineage_ledger import ArtifactError, TaskRun, code_digest, jsonable, utcnow

from ._assets import file_paths, not_utf8_paths

log = logging.getLogger("lineage_ledger.airflow")


@dataclass
class Started:
    """What the running hook saw: when, and the inputs' digests before the task touched them."""

    at: datetime
    inputs: list[str] = field(default_factory=list)
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The outlets' stat signatures at the start (None: absent), to tell what a failed try wrote.
    outputs_before: dict[str, tuple[int, ...] | None] = field(default_factory=dict)


def stat_key(path: str) -> tuple[int, ...] | None:
    """What changes when a file is created, replaced or written (ctime moves on any write)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def written_by_try(path: str, started: Started | None, since: datetime) -> bool:
    """Whether this try created or changed ``path``: against the signature taken at its start,
    else (a try whose start this process did not see, e.g. reported by the scheduler) by mtime."""
    if started is not None and path in started.outputs_before:
        now = stat_key(path)
        return now is not None and now != started.outputs_before[path]
    try:
        return os.stat(path).st_mtime >= since.timestamp() - 1.0
    except OSError:
        return False

@dataclass
class Details:
    """What an operator that knows more than the listener adds to its try's record."""

    code: str | None = None
    parameters: dict[str, Any] | None = None
    #: Digests of the inputs as read, and of the outputs as written: two maps, since a file
    #: updated in place is both, with a different digest each time.
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs_known: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: The pre-run check refused to run: the task read nothing.
    refused: bool = False
    #: Inputs the pre-run check could not vouch for (the ledger failed its own check) that
    #: the task ran on anyway (warn, rerun): its record lists neither them nor its outputs.
    unverified: set[str] = field(default_factory=set)

def try_key(ti: Any) -> tuple[str, int]:
    """(dag id, run id, task id, map index) and the try number: what names one try.

    Not the task-instance id: Airflow 3 gives a task instance a new id for its next try
    (``prepare_db_for_next_try``) before the scheduler reports the failed one, so the
    scheduler's report of try 1 would carry try 2's id and miss the task's own report.
    """
    map_index = getattr(ti, "map_index", -1)
    natural = f"{ti.dag_id}\0{ti.run_id}\0{ti.task_id}\0{-1 if map_index is None else int(map_index)}"
    number = int(getattr(ti, "try_number", 0) or 0)
    if by_tasks_test(ti):
        # Airflow gives a task run by `airflow tasks test` no try of its own: 0 on a temporary
        # run, which read as "never started", or the existing run's last try, whose record it
        # then took for its own. It ran, and wrote its outlets: a key of its own, try 1 at least.
        return f"{natural}\0tasks-test\0{_TEST_RUN}", max(1, number)
    return natural, number


#: What tells this process's `airflow tasks test` run (one task, in this process) apart from
#: every other report of the task instance, earlier test runs' included.
_TEST_RUN = uuid.uuid4().hex


def by_tasks_test(ti: Any) -> bool:
    """Whether ``ti`` is run by ``airflow tasks test``: in the command's own process (Airflow's
    in-process runner), which sets ``AIRFLOW_TEST_MODE``. ``dag.test()`` and ``airflow dags
    test`` give every task a try of its own, and do not set it."""
    if os.environ.get("AIRFLOW_TEST_MODE", "").lower() != "true" or type(ti).__name__ != "RuntimeTaskInstance":
        return False
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover
        return False
    return type(getattr(task_runner, "SUPERVISOR_COMMS", None)).__name__ == "InProcessSupervisorComms"


def own_ti_id(ti: Any) -> str:
    """The task-instance id of the try being reported.

    When the scheduler fails a try that may be retried, it has already given the ORM
    object the next try's id when it calls the listener; the try's own id is the value
    SQLAlchemy still holds as the attribute's history (not yet flushed), the id under
    which ``task_instance_history`` keeps the try.
    """
    ident = getattr(ti, "id", None)
    if type(ti).__name__ == "TaskInstance":  # the ORM object: only outside task processes
        try:
            from sqlalchemy import inspect as orm_state

            state = orm_state(ti, raiseerr=False)
            if state is not None:
                replaced = state.attrs.id.history.deleted
                if replaced:
                    ident = replaced[0]
        except Exception:  # noqa: BLE001 - then the id it has now
            log.debug("lineage-ledger: cannot read the previous id of %s", ti, exc_info=True)
    return "" if ident is None else str(ident)

def as_utc(value: Any) -> datetime | None:
    """An Airflow date as an aware UTC datetime (a naive one is UTC); None if it is not a date."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(value.timestamp(), tz=timezone.utc)

def operator_path(task: Any) -> str:
    cls = type(task)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_code(task: Any) -> str | None:
    """A digest of what the task runs: the shell command, the callable's source, or the operator."""
    if task is None:
        return None
    command = getattr(task, "bash_command", None)
    if isinstance(command, str):
        return code_digest(command)
    func = getattr(task, "python_callable", None)
    if callable(func):
        try:
            return code_digest(inspect.getsource(func))
        except (OSError, TypeError):
            return code_digest(f"{func.__module__}.{getattr(func, '__qualname__', repr(func))}")
    return code_digest(operator_path(task))


def airflow_facts(ti: Any, state: str, error: BaseException | str | None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id,
        "map_index": getattr(ti, "map_index", -1), "try_number": getattr(ti, "try_number", None),
        "ti_id": own_ti_id(ti), "state": state,
        "hostname": getattr(ti, "hostname", None),
    }
    task = getattr(ti, "task", None)
    if task is not None:
        facts["operator"] = operator_path(task)
    # Reports from outside the task process (scheduler, API server) carry the ORM TaskInstance;
    # the scheduler's own sweep at the end of a DAG run says so (see _reconcile).
    facts["reported_by"] = getattr(ti, "reported_by", None) or (
        "task" if type(ti).__name__ == "RuntimeTaskInstance" else "server")
    if by_tasks_test(ti):
        facts["test_mode"] = True  # `airflow tasks test`: Airflow keeps no try of it
    if error is not None:
        facts["error"] = f"{type(error).__name__}: {error}"[:2000] if isinstance(error, BaseException) else str(error)[:2000]
    return facts


def try_run(
    ti: Any,
    status: str,
    *,
    state: str,
    error: BaseException | str | None,
    known: Mapping[str, Mapping[str, Any]] | None,
    code: str | None,
    parameters: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
    started: Started | None,
    details: Details,
    digest: Callable[[str], dict[str, Any]],
) -> TaskRun:
    """The record of one try, from what was seen at its start (None: not in this process),
    what an operator added, and the report's own arguments (see :func:`._tries.record_try`);
    ``digest`` hashes an output whose digest nobody gave."""
    task = getattr(ti, "task", None)
    inputs = started.inputs if started else file_paths(getattr(task, "inlets", None))
    all_known: dict[str, Mapping[str, Any]] = dict(started.known) if started else {}
    all_known.update(details.known)
    all_known.update(known or {})
    outputs = file_paths(getattr(task, "outlets", None))
    began = started.at if started else (as_utc(getattr(ti, "start_date", None)) or utcnow())
    if details.refused or status == "failed":
        # A failed try vouches only for what it wrote, a refused one for nothing: a file left
        # at an outlet by an earlier run listed here would read as "produced by a failed task".
        wrote = [] if details.refused else [
            p for p in outputs if p in details.outputs_known or written_by_try(p, started, began)]
        if len(wrote) < len(outputs):
            extra = {**(extra or {}), "outputs_not_written": [p for p in outputs if p not in wrote]}
        outputs = wrote
    outputs_known = _output_digests(outputs, details.outputs_known, digest)
    if details.unverified and not details.refused:
        # The task ran on files a tampered ledger could not vouch for. Listing them as read
        # with their digests now would give a hidden edit the record a later check trusts
        # (the next strict run would pass it), and its outputs were made from it: the record
        # names both in extra["not_verified"] instead, their digests kept apart.
        read = {p: all_known.get(p) for p in inputs if p in details.unverified}
        made = {p: outputs_known.get(p) for p in outputs}
        inputs = [p for p in inputs if p not in read]
        outputs, outputs_known = [], {}
        extra = {**(extra or {}), "not_verified": sorted({*read, *made}),
                 "not_verified_digests": {"inputs": read, "outputs": made}}
    if details.refused:
        # A try refused before it ran read nothing. Listing the changed files as its inputs
        # would make the ledger's last view of them the changed version, and the next
        # pre-run check would let them pass.
        extra = {**(extra or {}), "refused_inputs": {p: all_known.get(p) for p in inputs}}
        inputs = []
    unnamed = {"inputs": not_utf8_paths(getattr(task, "inlets", None)),
               "outputs": not_utf8_paths(getattr(task, "outlets", None))}
    if any(unnamed.values()):
        # Files whose names are not UTF-8 are in no record's inputs or outputs (file_paths
        # said so once); the record lists them here, escaped by the core (extra["escaped"]).
        extra = {**(extra or {}), "not_utf8_files": unnamed}
    code = code if code is not None else details.code
    parameters = parameters if parameters is not None else details.parameters
    extra = {**details.extra, **(extra or {})}
    map_index = getattr(ti, "map_index", -1)
    suffix = f"[{map_index}]" if map_index is not None and map_index >= 0 else ""
    return TaskRun(
        task_id=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}{suffix}",
        task_name=f"{ti.dag_id}.{ti.task_id}",
        status=status,
        started=began,
        ended=as_utc(getattr(ti, "end_date", None)) or utcnow(),
        inputs=inputs,
        outputs=outputs,
        known=all_known,
        known_outputs=outputs_known,
        code_digest=code if code is not None else describe_code(task),
        parameters=dict(parameters) if parameters is not None else {"operator": operator_path(task) if task else None},
        attempt=try_key(ti)[1],
        extra={"airflow": airflow_facts(ti, state, error), **jsonable(extra)},
        run_id=f"{ti.dag_id}/{ti.run_id}",
    )


def _output_digests(outputs: list[str], given: Mapping[str, dict[str, Any]],
                    digest: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The outputs' digests as written: the operator's, else hashed now by ``digest`` (the memo).

    A missing or unreadable output is left out: the capture then lists it as missing, or
    logs why it cannot be read.
    """
    digests: dict[str, dict[str, Any]] = {}
    for path in outputs:
        if path in given:
            digests[path] = given[path]
            continue
        try:
            digests[path] = digest(path)
        except ArtifactError:
            pass
    return digests
