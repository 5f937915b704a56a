"""The scheduler's sweep at the end of a DAG run: tries no task process recorded.

Two kinds of try never reach a task process's listener:

* tasks the scheduler completes itself: an ``EmptyOperator`` without callbacks, inlets or
  outlets is set to ``success`` by ``DagRun.schedule_tis`` and never runs anywhere;
* tries whose task process died without reporting (``kill -9``, the OOM killer, a machine
  gone); the supervisor marks them failed through the Execution API, which calls no listener.

When a DAG run ends, the scheduler calls ``on_dag_run_success`` / ``on_dag_run_failed``.
The listener then walks the run's tries in the metadata database (``task_instance`` and
``task_instance_history``) and records, as ``reported_by = "scheduler"``, each try that no
process on this machine has claimed and whose task process is gone. A try whose process is
still alive is left to it: a task reports its state to Airflow before its listener records
it, so the run can end while the last task is still writing its record.

A try run on another machine (a remote executor) is left alone: its markers live on that
machine, and this machine cannot tell whether its process is alive.

A run whose sweep found a task process of this machine still alive is swept once more when
those processes have ended (:func:`_sweep_later`, a thread of the scheduler): a task process
whose record neither its spool nor the ledger took gives its try up as it ends (``_late``),
after the run's sweep had found it claimed, and nothing came back to it; the record was lost
although the scheduler, which lives on, could still record it.

That second sweep is owed exactly where a task's record found no durable place (the spool's
disk full or read-only, the ledger locked), so it cannot be written down there either; a
scheduler killed with -9 (the OOM killer, a restart) before it lost it, and the try's record
with it. A scheduler that starts therefore sweeps again the runs that ended shortly before
the previous scheduler of this machine stopped (:func:`resume_when_scheduler`): the
metadata database says which, and the tries' markers say what is recorded already.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import SimpleNamespace
from typing import Any

from lineage_ledger import LedgerError

from . import _moved, _tries

log = logging.getLogger("lineage_ledger.airflow")

#: Final states of a try worth a record (skipped, upstream_failed, removed never ran).
RECORDED_STATES = {"success": "succeeded", "failed": "failed", "up_for_retry": "failed"}


def _value(state: Any) -> str:
    return str(getattr(state, "value", state) or "")


def _this_host() -> str:
    try:
        from airflow.utils.net import get_hostname

        return str(get_hostname())
    except Exception:  # noqa: BLE001
        import socket

        return socket.getfqdn()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _tries_of(dag_run: Any) -> list[Any]:
    """The run's task instances and archived tries, read in the scheduler's own session
    (it sees what the scheduler changed in this transaction)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    def read(session: Any) -> list[Any]:
        rows: list[Any] = []
        for model in (TaskInstanceHistory, TaskInstance):
            rows.extend(session.scalars(
                select(model).where(model.dag_id == dag_run.dag_id, model.run_id == dag_run.run_id)))
        return rows

    try:
        session = object_session(dag_run)
    except Exception:  # noqa: BLE001 - a later sweep's stand-in for the run: no ORM object
        session = None
    if session is not None:
        return read(session)
    from airflow.utils.session import create_session

    with create_session() as new_session:
        return read(new_session)


def _stand_in(row: Any, task: Any) -> SimpleNamespace:
    """What :func:`_tries.record_try` reads of a task instance, from a database row."""
    ident = getattr(row, "task_instance_id", None) or getattr(row, "id", None)
    return SimpleNamespace(
        dag_id=row.dag_id, run_id=row.run_id, task_id=row.task_id, map_index=row.map_index,
        try_number=row.try_number, id=ident, start_date=row.start_date, end_date=row.end_date,
        hostname=row.hostname or None, task=task, reported_by="scheduler",
    )


def _completed_by_scheduler(row: Any, task: Any) -> bool:
    """An EmptyOperator that the scheduler set to success without running it."""
    if _value(row.state) != "success":
        return False
    if task is not None and getattr(task, "inherits_from_empty_operator", False):
        return True
    return getattr(row, "operator", None) == "EmptyOperator"


def record_unreported(dag_run: Any, *, again: bool = True, ask_ledger: bool = False) -> int:
    """Record the run's finished tries that no process recorded; how many were recorded.
    ``again``: sweep the run once more when the task processes still alive have ended.
    ``ask_ledger`` (a thread's sweep, never the scheduler's loop): a try no marker claims is
    looked for in the ledger before it is recorded (one read of the run's records), and
    where no marker can be made (the spool's disk read-only) it is recorded all the same.
    The scheduler's own sweep leaves such a run to a thread instead."""
    dag = getattr(dag_run, "dag", None)
    host = _this_host()
    recorded = 0
    alive: set[int] = set()
    unmarkable = False
    in_ledger: set[tuple[str, int]] | None = None
    for row in _tries_of(dag_run):
        state = _value(row.state)
        if (row.try_number or 0) < 1 or state not in RECORDED_STATES:
            continue
        key = (_tries.try_key(row)[0], int(row.try_number))
        if row.hostname and row.hostname != host:
            continue  # another machine's try: its markers are there
        if row.hostname and row.pid and process_alive(int(row.pid)):
            if int(row.pid) != os.getpid():  # dag.test() runs its tasks here: they have recorded themselves
                alive.add(int(row.pid))
            continue  # still in its overtime: it records itself (or gives its try up: swept again)
        try:
            if _tries.claimed(key, str(getattr(row, "task_instance_id", None) or getattr(row, "id", None) or "")):
                continue
        except (OSError, LedgerError):
            pass  # no marker can be read or made: below
        task = None
        if dag is not None:
            try:
                task = dag.get_task(row.task_id)
            except Exception:  # noqa: BLE001 - a task removed from the DAG since
                task = None
        ran = bool(row.hostname or row.pid)
        if not ran and not _completed_by_scheduler(row, task):
            continue  # marked success or failed by hand: it never ran (not recorded, as documented)
        if ask_ledger:
            if in_ledger is None:
                in_ledger = _tries_in_ledger(dag_run.dag_id, dag_run.run_id)
            if key in in_ledger:
                continue  # its record is in the ledger: no marker says so where none could be made
        try:
            record_id = _record(row, task, state, ran, unmarked=False)
        except (OSError, LedgerError) as err:
            # No try marker can be made (the spool's disk read-only): without one, only the
            # ledger can say whether this try is recorded already, and the scheduler's loop
            # must not wait for it. A thread asks it, and records the try if it is not there.
            if not ask_ledger:
                unmarkable = True
                continue
            log.debug("lineage-ledger: no marker for try %d of %s: %s", key[1], key[0], err)
            record_id = _record(row, task, state, ran, unmarked=True)
        if record_id is not None:
            recorded += 1
    if recorded:
        log.info("lineage-ledger: recorded %d tries of %s/%s that no task process recorded",
                 recorded, dag_run.dag_id, dag_run.run_id)
    if (alive or unmarkable) and again:
        _sweep_later(dag_run.dag_id, dag_run.run_id, dag, alive)
        _note_owed(dag_run.dag_id, dag_run.run_id, True)
    elif not alive and not unmarkable:
        _note_owed(dag_run.dag_id, dag_run.run_id, False)  # nothing owed any more
    return recorded


def _owed_path(dag_id: str, run_id: str) -> str:
    """The note that a second sweep of this run is owed, beside this ledger's try markers
    (40 hex digits: removed with them after :data:`_tries.MARKER_DAYS`)."""
    return os.path.join(_tries._marker_dir(_tries.capture()), owed_name(dag_id, run_id))


def owed_name(dag_id: str, run_id: str) -> str:
    from blake3 import blake3

    return blake3(f"{dag_id}\0{run_id}\0owed".encode()).hexdigest()[:40]


def _note_owed(dag_id: str, run_id: str, owed: bool) -> None:
    """Leave (or remove) word for the next scheduler on this ledger that this run's second
    sweep is owed: a scheduler killed before it does it, the one started after does it."""
    try:
        path = _owed_path(dag_id, run_id)
        if owed:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
            try:  # which site owes it (see _moved.site_token); an empty note where it cannot say
                os.write(fd, _moved.site_token())
            except OSError:
                pass
            finally:
                os.close(fd)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except (OSError, LedgerError) as err:
        if owed:  # the spool's disk read-only: only this scheduler's memory knows
            log.warning("lineage-ledger: the second sweep of %s/%s is owed, and no note of it can be left for a "
                        "scheduler started after this one (%s)", dag_id, run_id, err)


def is_owed(dag_id: str, run_id: str) -> bool:
    """Whether a scheduler on this ledger left this run's second sweep owed."""
    try:
        return os.path.exists(_owed_path(dag_id, run_id))
    except (OSError, LedgerError):
        return False


def _record(row: Any, task: Any, state: str, ran: bool, *, unmarked: bool) -> str | None:
    if ran:
        error = "the task process ended without reporting this try (killed?)"
    else:
        error = None  # completed by the scheduler (EmptyOperator): no process ever ran
    status = RECORDED_STATES[state]
    if ran and state == "success" and _tries.marked_success_by_hand(_tries.try_key(row)):
        # Airflow has it as success because someone said so, and ended its task process,
        # which never reported: nothing vouches for its outlets. Recorded as what it was
        # (a try ended before it finished), listing only the files it wrote.
        status = "failed"
        error = "marked success by hand; its task process was ended without reporting what it did"
    return _tries.record_try(
        _stand_in(row, task), status, state=state, error=error if status == "failed" else None,
        extra=None if ran else {"completed_by_scheduler": True}, unmarked=unmarked,
    )


def _tries_in_ledger(dag_id: str, run_id: str) -> set[tuple[str, int]]:
    """The tries of a run that the ledger has a record of, by :func:`_tries.try_key`; an
    empty set (said) where the ledger cannot be read: a second record of a try is better
    than none."""
    from lineage_ledger import open_ledger

    from . import _settings

    found: set[tuple[str, int]] = set()
    try:  # the capture's ledger: another one where the run was owed there (see _moved)
        ledger = open_ledger(_tries.capture().url or _settings.ledger_url(), spool=_settings.spool_root(),
                             read_only=True)
        try:
            for item in ledger.run(f"{dag_id}/{run_id}"):
                facts = (item.record.extra or {}).get("airflow") or {}
                if facts.get("test_mode") or not isinstance(facts.get("try_number"), int):
                    continue
                found.add(_tries.try_key(SimpleNamespace(
                    dag_id=facts.get("dag_id"), run_id=facts.get("run_id"), task_id=facts.get("task_id"),
                    map_index=facts.get("map_index", -1), try_number=facts["try_number"])))
        finally:
            ledger.close()
    except Exception as err:  # noqa: BLE001 - then every unmarked try is recorded
        log.warning("lineage-ledger: cannot read the records of %s/%s from the ledger (%s); a try no marker "
                    "claims is recorded, perhaps a second time", dag_id, run_id, err)
    return found


#: A run's task process still alive this long after its sweep is not waited for any more.
LATER_GIVE_UP_S = 1800.0
LATER_POLL_S = 1.0
_later_lock = threading.Lock()
#: Runs to sweep again: (dag id, run id) -> (the DAG, the task processes waited for, give up at).
_later: dict[tuple[str, str], tuple[Any, set[int], float]] = {}
_later_thread: threading.Thread | None = None


def _sweep_later(dag_id: str, run_id: str, dag: Any, pids: set[int]) -> None:
    """Sweep the run again once the task processes ``pids`` have ended."""
    global _later_thread
    with _later_lock:
        known = _later.get((dag_id, run_id), (dag, set(), 0.0))[1]
        _later[(dag_id, run_id)] = (dag, known | pids, time.monotonic() + LATER_GIVE_UP_S)
        if _later_thread is None:
            _later_thread = threading.Thread(target=_sweep_when_ended, name="lineage-ledger-later-sweep", daemon=True)
            _later_thread.start()


def _sweep_when_ended() -> None:
    global _later_thread
    while True:
        time.sleep(LATER_POLL_S)
        now = time.monotonic()
        with _later_lock:
            due = [(key, entry[0]) for key, entry in _later.items()
                   if now > entry[2] or not any(process_alive(pid) for pid in entry[1])]
            for key, _ in due:
                del _later[key]
            if not due and not _later:
                _later_thread = None  # under the lock: the next _sweep_later starts another
                return
        for (dag_id, run_id), dag in due:
            try:
                record_unreported(SimpleNamespace(dag_id=dag_id, run_id=run_id, dag=dag), again=False,
                                  ask_ledger=True)
            except Exception:  # noqa: BLE001 - never break the scheduler
                log.exception("lineage-ledger: could not sweep the tries of %s/%s again", dag_id, run_id)


#: How far back, before the previous scheduler's last heartbeat, a scheduler that starts
#: sweeps again the runs that ended (a second sweep is owed for as long as it waits).
RESUME_BEFORE_S = LATER_GIVE_UP_S
#: ... and never further back than this (the tries' markers say what is recorded for 7 days).
RESUME_AT_MOST_S = 86400.0


def resume_when_scheduler(component: Any, wait_s: float = 120.0) -> None:
    """In a job process that turns out to be a scheduler (Airflow names the job's type only
    after ``on_starting``), sweep again the runs a scheduler before it may have owed a second
    sweep: those that ended since :data:`RESUME_BEFORE_S` before the last heartbeat of the
    previous scheduler of this machine, and that a scheduler on this ledger left owed (its note
    beside the try markers). A try recorded already is claimed, and skipped.

    Only those: the runs that ended before are not all this ledger's to sweep. A site that
    moved its ledger (SQLite to PostgreSQL) has its tries' markers beside the other ledger,
    and a scheduler that ran without the plugin left none; sweeping them all recorded every
    try of those runs again, into this ledger, as the scheduler's report of a try whose task
    process ended without reporting, with the files at its outlets as they are now (and a
    scheduler started beside running tasks took their CPU for it: the benchmark's task
    processes, which restart the scheduler for each run, took 0.3 s longer at load 9)."""
    def resume() -> None:
        deadline = time.monotonic() + wait_s
        while getattr(component, "job_type", None) in (None, "undefined") and time.monotonic() < deadline:
            time.sleep(0.5)
        if getattr(component, "job_type", None) != "SchedulerJob":
            return
        try:
            runs = _runs_owed(getattr(component, "start_date", None))
        except Exception:  # noqa: BLE001 - never break the scheduler
            log.exception("lineage-ledger: could not read which runs a scheduler before this one owed a sweep")
            return
        recorded = 0
        for dag_id, run_id, dag, moved_from in runs:
            try:
                if moved_from is None:
                    recorded += record_unreported(SimpleNamespace(dag_id=dag_id, run_id=run_id, dag=dag),
                                                  ask_ledger=True)
                else:
                    recorded += _moved.sweep_owed_there(dag_id, run_id, dag, moved_from)
            except Exception:  # noqa: BLE001
                log.exception("lineage-ledger: could not sweep the tries of %s/%s again", dag_id, run_id)
        log.info("lineage-ledger: resumed the sweeps a scheduler before this one owed: %d runs swept again, "
                 "%d tries recorded", len(runs), recorded)

    threading.Thread(target=resume, name="lineage-ledger-resume-sweeps", daemon=True).start()


def _runs_owed(started: Any) -> list[tuple[str, str, Any, str | None]]:
    """The ended runs a previous scheduler of this machine may have owed a second sweep,
    each with the DAG it was made from (its outlets name the files a try wrote), and the
    spool directory of the ledger it was owed on where that is another one than this
    scheduler's (the site moved its ledger since: see _moved), else None."""
    from datetime import datetime, timedelta, timezone

    from airflow.jobs.job import Job
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    now = datetime.now(timezone.utc)
    started = started if isinstance(started, datetime) else now
    with create_session() as session:
        last = session.scalar(select(func.max(Job.latest_heartbeat)).where(
            Job.job_type == "SchedulerJob", Job.hostname == _this_host(), Job.start_date < started))
        if last is None:
            return []  # the first scheduler of this machine: nobody owed anything
        if last.tzinfo is None:
            last = last.replace(tzinfo=timezone.utc)
        since = max(last - timedelta(seconds=RESUME_BEFORE_S), now - timedelta(seconds=RESUME_AT_MOST_S))
        found: list[tuple[Any, str | None]] = []
        for run in session.scalars(select(DagRun).where(DagRun.state.in_(("success", "failed")),
                                                         DagRun.end_date >= since)):
            if is_owed(run.dag_id, run.run_id):
                found.append((run, None))
            found.extend((run, there) for there in _moved.owed_elsewhere(run.dag_id, run.run_id))
        bag = DBDagBag()
        return [(run.dag_id, run.run_id, bag.get_dag_for_run(run, session), there) for run, there in found]


def _forget_in_child() -> None:
    """A forked child (a LocalExecutor worker) has no sweeping thread and sweeps no run."""
    global _later_lock, _later_thread
    _later_lock = threading.Lock()
    _later.clear()
    _later_thread = None


os.register_at_fork(after_in_child=_forget_in_child)
