"""An optional cluster policy: the pre-run check for every task of a deployment.

Install it in ``airflow_local_settings.py`` (on the Python path of every Airflow process,
e.g. ``$AIRFLOW_HOME/config/airflow_local_settings.py``)::

    from lineage_ledger_airflow.policy import task_policy

Every task with ``file://`` inlets then verifies them before it runs, under
``[lineage_ledger] policy`` (``warn`` logs, ``strict`` fails the task naming the changed
files, ``rerun`` runs it and records the changed inputs). The check runs as a wrapper around
the task's ``pre_execute``, so the operator's own ``pre_execute`` still runs after it.
LedgerOperator tasks are left alone: they check their inputs themselves.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ._assets import file_paths
from ._checks import check_inputs

log = logging.getLogger("lineage_ledger.airflow")

_WRAPPED = "_lineage_ledger_checked"


def _verify_then(task: Any, original: Any) -> Any:
    @functools.wraps(original)
    def pre_execute(context: Any, *args: Any, **kwargs: Any) -> Any:
        check_inputs(file_paths(task.inlets), None, ti=context["ti"])
        return original(context, *args, **kwargs)

    setattr(pre_execute, _WRAPPED, True)
    return pre_execute


def task_policy(task: Any) -> None:
    """Wrap ``task.pre_execute`` with the ledger check (idempotent; DAG files are parsed often)."""
    from .operators import LedgerOperator

    if isinstance(task, LedgerOperator) or getattr(task.pre_execute, _WRAPPED, False):
        return
    if not file_paths(getattr(task, "inlets", None)):
        return
    task.pre_execute = _verify_then(task, task.pre_execute)
