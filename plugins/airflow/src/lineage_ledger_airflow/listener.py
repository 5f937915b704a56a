"""The listener: every task instance of every operator, recorded once per try.

Airflow calls these hooks in the task process (``RuntimeTaskInstance``) and, for failures it
decides itself (heartbeat timeouts, a task marked failed in the UI), in the scheduler or the
API server (the ORM ``TaskInstance``). When a DAG run ends, the scheduler's hooks record the
tries that no task process reported (:mod:`._reconcile`). Listeners cannot stop a task; refusing to run is the
job of :class:`~lineage_ledger_airflow.operators.LedgerOperator` and of the optional
:func:`~lineage_ledger_airflow.policy.task_policy`.

Every hook catches its own errors: a ledger problem is logged and the task goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from . import _settings, _tries

log = logging.getLogger("lineage_ledger.airflow")


def _state(value: Any, default: str) -> str:
    return str(getattr(value, "value", value) or default)


class LedgerListener:
    """Registered by :class:`~lineage_ledger_airflow.plugin.LineageLedgerPlugin`."""

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        try:
            if _settings.recording():
                _tries.note_start(task_instance)
        except Exception:  # noqa: BLE001 - never break the task
            log.exception("lineage-ledger: could not note the start of %s", getattr(task_instance, "task_id", "?"))

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        if previous_state is None and type(task_instance).__name__ == "TaskInstance":
            # Marked success by hand (the UI, the REST API: the API server calls this with no
            # previous state). No task process vouches for the files at its outlets: one that
            # was running is ended, and reports what it did itself (failed); a record saying
            # succeeded here claimed the try before it, listing whatever an earlier run left
            # there as this try's product, which every later strict check then passed.
            log.info("lineage-ledger: %s was marked success by hand; not recorded as succeeded (what its task "
                     "process did, if it ran, is recorded by that process or the scheduler's sweep)",
                     getattr(task_instance, "task_id", "?"))
            try:
                if _settings.recording():
                    _tries.note_marked_success_by_hand(_tries.try_key(task_instance))
            except Exception:  # noqa: BLE001 - never break the API server
                log.exception("lineage-ledger: could not note %s as marked by hand", getattr(task_instance, "task_id", "?"))
            return
        self._record(task_instance, "succeeded", "success", None)

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        # UP_FOR_RETRY arrives here too: a failed try is a failed try, whatever comes next.
        state = _state(getattr(task_instance, "state", None), "failed")
        self._record(task_instance, "failed", state, error)

    @hookimpl
    def on_starting(self, component: Any) -> None:
        """A scheduler, DAG processor or triggerer starts: ship the machine's spool from here
        (task processes then only journal; see :mod:`._shipper`)."""
        try:
            if _settings.recording() and type(component).__name__ == "Job":
                from . import _reconcile, _shipper

                _shipper.start()
                _reconcile.resume_when_scheduler(component)
        except Exception:  # noqa: BLE001 - never break the component
            log.exception("lineage-ledger: could not start the spool shipper")

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self._sweep(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self._sweep(dag_run)

    @hookimpl
    def before_stopping(self, component: Any) -> None:
        try:
            _tries.flush_before_exit()
        except Exception:  # noqa: BLE001
            log.exception("lineage-ledger: could not flush before the process stops")

    def _sweep(self, dag_run: Any) -> None:
        """In the scheduler, at the end of a run: record the tries no task process recorded
        (EmptyOperator, a killed task process); see :mod:`._reconcile`."""
        try:
            if _settings.recording():
                from ._reconcile import record_unreported

                record_unreported(dag_run)
        except Exception:  # noqa: BLE001 - never break the scheduler
            log.exception("lineage-ledger: could not sweep the tries of %s", getattr(dag_run, "run_id", "?"))

    def _record(self, ti: Any, status: str, state: str, error: Any) -> None:
        try:
            if _settings.recording():
                _tries.record_try(ti, status, state=state, error=error)
        except Exception:  # noqa: BLE001 - never break the task
            log.exception("lineage-ledger: could not record %s", getattr(ti, "task_id", "?"))


listener = LedgerListener()
_tries.preload()  # inherited by forked task processes instead of imported in each
