"""An optional cluster policy: the pre-run check for every task of a deployment.

Install it in ``airflow_local_settings.py`` (on the Python path of every Airflow process,
e.g. ``$AIRFLOW_HOME/config/airflow_local_settings.py``)::

    from lineage_ledger_airflow.policy import task_policy

Every task with ``file://`` inlets then verifies them before it runs, under
``[lineage_ledger] policy`` (``warn`` logs, ``strict`` fails the task naming the changed
files, ``rerun`` runs it and records the changed inputs). The check runs as a wrapper around
the task's ``pre_execute``, so the operator's own ``pre_execute`` still runs after it.
LedgerOperator tasks are left alone: they check their inputs themselves.

A mapped task (``.partial(...).expand(...)``) is a ``MappedOperator`` until a task process
unmaps it, and has no ``pre_execute`` to wrap (reading it raised, and Airflow then refused
the whole DAG file: every DAG with a mapped task broke once the policy was installed). Its
check goes into the ``pre_execute`` hook argument of its partial arguments instead, which
each unmapped operator receives and the task runner calls before ``pre_execute``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ._assets import file_paths, not_utf8_paths
from ._checks import check_inputs

log = logging.getLogger("lineage_ledger.airflow")

_WRAPPED = "_lineage_ledger_checked"


def _inputs(inlets: Any) -> list[str]:
    """The local files of a task's inlets, those whose names are not UTF-8 too (no record can
    name them, and strict refuses them)."""
    return [*file_paths(inlets), *not_utf8_paths(inlets)]


def _verify_then(task: Any, original: Any) -> Any:
    @functools.wraps(original)
    def pre_execute(context: Any, *args: Any, **kwargs: Any) -> Any:
        check_inputs(_inputs(task.inlets), None, ti=context["ti"], outputs=not_utf8_paths(task.outlets))
        return original(context, *args, **kwargs)

    setattr(pre_execute, _WRAPPED, True)
    return pre_execute


def _checked_hook(hook: Any) -> Any:
    """A ``pre_execute`` hook (called with the context) that checks the running task's file
    inlets, then calls ``hook``, the one the DAG gave, if any. The running task is the
    unmapped operator (the task runner puts it on ``ti.task`` before this is called)."""

    def pre_execute(context: Any) -> Any:
        ti = context["ti"]
        check_inputs(_inputs(getattr(ti.task, "inlets", None)), None, ti=ti, outputs=not_utf8_paths(getattr(ti.task, "outlets", None)))
        return hook(context) if hook is not None else None

    setattr(pre_execute, _WRAPPED, True)
    if hook is not None:
        pre_execute.__wrapped__ = hook  # type: ignore[attr-defined]  # what it adds the check to
    return pre_execute


def _mapped_policy(task: Any) -> None:
    from .operators import LedgerOperator

    operator_class = getattr(task, "operator_class", None)
    if isinstance(operator_class, type) and issubclass(operator_class, LedgerOperator):
        return
    partial = task.partial_kwargs
    # Inlets cannot be mapped (Airflow refuses them in expand()): the partial ones are all.
    if not _inputs(partial.get("inlets")) or getattr(partial.get("pre_execute"), _WRAPPED, False):
        return
    partial["pre_execute"] = _checked_hook(partial.get("pre_execute"))


def task_policy(task: Any) -> None:
    """Wrap ``task.pre_execute`` with the ledger check (idempotent; DAG files are parsed often)."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from .operators import LedgerOperator

    if isinstance(task, MappedOperator):
        _mapped_policy(task)
        return
    if isinstance(task, LedgerOperator) or getattr(task.pre_execute, _WRAPPED, False):
        return
    if not _inputs(getattr(task, "inlets", None)):
        return
    task.pre_execute = _verify_then(task, task.pre_execute)
