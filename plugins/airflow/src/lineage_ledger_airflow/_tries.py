"""One record per task-instance try, whoever reports it and however often.

Airflow 3 reports a try's end from the task process (the task runner's ``finalize``) and,
for some failures, again from the scheduler or the API server (``TaskInstance.handle_failure``,
a task marked failed by hand). Retries share a task instance but not a try number. So every
report is keyed by (task instance id, try number) and the first one to claim the key writes
the record: in-process through a set, across processes through a marker file created with
``O_EXCL`` beside the ledger's spool.

The supervised task process ends with ``os._exit``, which joins no thread and runs no
``atexit`` handler, so records are written with :meth:`TaskCapture.record_now` (hashed and
journaled in the durable spool before it returns). A shipper in the machine's scheduler
(or another Airflow job process) ships them after the process ends; without one, the task
process ships them itself before it ends (see :func:`flush_before_exit`, :mod:`._shipper`).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from blake3 import blake3

from lineage_ledger import ArtifactError, TaskCapture, TaskRun, code_digest, jsonable, utcnow

from . import _settings, _shipper
from ._assets import file_paths
from ._digests import DigestMemo

log = logging.getLogger("lineage_ledger.airflow")

ENGINE = "airflow"
_lock = threading.Lock()
_capture: TaskCapture | None = None
_capture_pid = -1
_memo: DigestMemo | None = None
_memo_pid = -1
_claimed: set[tuple[str, int]] = set()


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


_started: dict[tuple[str, int], Started] = {}


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


_details: dict[tuple[str, int], Details] = {}


def details_for(ti: Any) -> Details:
    """The details of this try, created on first use."""
    return _details.setdefault(try_key(ti), Details())


def listener_active() -> bool:
    """Whether the plugin's listener will report this process's task ends."""
    if not _settings.enabled():
        return False
    try:
        from airflow.sdk.listener import get_listener_manager

        from .listener import listener

        return bool(get_listener_manager().pm.is_registered(listener))
    except Exception:  # noqa: BLE001 - then the operator records for itself
        return False


def capture() -> TaskCapture:
    """This process's capture (a forked task process gets its own)."""
    global _capture, _capture_pid
    with _lock:
        if _capture is None or _capture_pid != os.getpid():
            if _capture_pid not in (-1, os.getpid()):  # a forked child: the parent's tries are not ours
                _claimed.clear()
                _started.clear()
                _details.clear()
            # A job process ships this spool: journal only (no shipping thread, never wait here).
            _capture = TaskCapture(_settings.ledger_url(), engine=ENGINE, spool=_settings.spool_root(), threads=2,
                                   ship=not _shipper.alive())
            _capture_pid = os.getpid()
        return _capture


def memo() -> DigestMemo:
    """This process's memo of digests by file signature (see :mod:`._digests`)."""
    global _memo, _memo_pid
    with _lock:
        if _memo is None or _memo_pid != os.getpid():
            _memo = DigestMemo(os.path.join(_settings.spool_root(), "airflow-digests"))
            _memo_pid = os.getpid()
        return _memo


def digest_of(path: str) -> dict[str, Any]:
    """``{"blake3", "size"}`` of a file, reusing a digest taken while it had this very signature."""
    return memo().hash(path)


def reset() -> None:
    """Forget the capture (tests and the benchmark switch ledgers between runs)."""
    global _capture, _memo
    with _lock:
        old, _capture = _capture, None
        _memo = None
        _claimed.clear()
        _started.clear()
        _details.clear()
    if old is not None:
        old.close(timeout=30)


def try_key(ti: Any) -> tuple[str, int]:
    """(dag id, run id, task id, map index) and the try number: what names one try.

    Not the task-instance id: Airflow 3 gives a task instance a new id for its next try
    (``prepare_db_for_next_try``) before the scheduler reports the failed one, so the
    scheduler's report of try 1 would carry try 2's id and miss the task's own report.
    """
    map_index = getattr(ti, "map_index", -1)
    natural = f"{ti.dag_id}\0{ti.run_id}\0{ti.task_id}\0{-1 if map_index is None else int(map_index)}"
    return natural, int(getattr(ti, "try_number", 0) or 0)


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


_marker_dirs: set[str] = set()
#: A try's marker is kept this long: duplicate reports of a try (the server's failure
#: callbacks, a task marked failed by hand) come minutes after it, not weeks.
MARKER_DAYS = 7.0
#: At most one sweep of old markers and digest memos an hour, whichever process does it.
SWEEP_EVERY_S = 3600.0


def _marker_dir(cap: TaskCapture) -> str:
    # Open the capture's recorder first (it journals into the spool; the back-end is not
    # touched): its spool directory is then worked out once, not again for the markers.
    cap.open()
    directory = os.path.join(cap.spool_dir, "airflow-tries")  # spool first: no back-end
    if directory not in _marker_dirs:
        os.makedirs(directory, exist_ok=True)
        _marker_dirs.add(directory)
        _maybe_sweep(directory)
    return directory


def _maybe_sweep(directory: str, now: float | None = None) -> None:
    """Delete try markers and digest memos older than :data:`MARKER_DAYS`, once an hour at most.

    A stamp file's mtime says when the last sweep was, so the check is one stat per process.
    Only names this module writes (40 hex digits) are removed.
    """
    now = time.time() if now is None else now
    stamp = os.path.join(directory, ".swept")
    try:
        if now - os.stat(stamp).st_mtime < SWEEP_EVERY_S:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    try:
        with open(stamp, "a"):
            pass
        os.utime(stamp, (now, now))
    except OSError as err:
        log.debug("lineage-ledger: cannot sweep %s: %s", directory, err)
        return
    cutoff = now - MARKER_DAYS * 86400
    for folder in (directory, memo().directory):
        removed = sweep(folder, cutoff)
        if removed:
            log.info("lineage-ledger: removed %d entries older than %g days from %s", removed, MARKER_DAYS, folder)


def sweep(folder: str, cutoff: float) -> int:
    """Remove this plugin's marker and memo files in ``folder`` last changed before ``cutoff``."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if len(name) != 40 or not all(c in "0123456789abcdef" for c in name):
            continue  # not ours (the stamp, a memo being written)
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # another process's sweep got there first
        except OSError as err:  # a sweep must never fail the task; the file stays for the next one
            log.debug("lineage-ledger: cannot remove %s: %s", entry.path, err)
    return removed


def _marker_name(key: tuple[str, int]) -> str:
    return blake3(f"{key[0]}\0{key[1]}".encode()).hexdigest()[:40]


def claimed(key: tuple[str, int]) -> bool:
    """Whether some process on this machine has recorded (or is recording) this try."""
    with _lock:
        if key in _claimed:
            return True
    return os.path.exists(os.path.join(_marker_dir(capture()), _marker_name(key)))


def claim(key: tuple[str, int]) -> bool:
    """True for the first report of this try on this machine; False for every later one."""
    with _lock:
        if key in _claimed:
            return False
        _claimed.add(key)
    name = _marker_name(key)
    directory = _marker_dir(capture())
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    try:
        try:
            fd = os.open(os.path.join(directory, name), flags, 0o644)
        except FileNotFoundError:  # the directory was removed since this process made it
            os.makedirs(directory, exist_ok=True)
            fd = os.open(os.path.join(directory, name), flags, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def unclaim(key: tuple[str, int]) -> None:
    """Let a later report try again when this one could not be written."""
    with _lock:
        _claimed.discard(key)
    name = _marker_name(key)
    try:
        os.unlink(os.path.join(_marker_dir(capture()), name))
    except OSError:
        pass


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(value.timestamp(), tz=timezone.utc)


def note_start(ti: Any) -> None:
    """Remember the start and hash the file inlets now, before the task can change them."""
    task = getattr(ti, "task", None)
    inputs = file_paths(getattr(task, "inlets", None))
    known: dict[str, dict[str, Any]] = {}
    for path in inputs:
        if os.path.exists(path):  # a file, or a directory (its manifest's digest)
            try:
                known[path] = digest_of(path)
            except Exception as err:  # noqa: BLE001 - the record will list it as unhashed
                log.warning("lineage-ledger: cannot hash inlet %s: %s", path, err)
    started = _utc(getattr(ti, "start_date", None)) or utcnow()
    outputs = file_paths(getattr(task, "outlets", None))
    _started[try_key(ti)] = Started(started, inputs, known, {path: stat_key(path) for path in outputs})


def started_digests(ti: Any) -> dict[str, dict[str, Any]]:
    """The inlets' digests taken when this try started (empty if the start was not seen)."""
    started = _started.get(try_key(ti))
    return dict(started.known) if started else {}


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
    if error is not None:
        facts["error"] = f"{type(error).__name__}: {error}"[:2000] if isinstance(error, BaseException) else str(error)[:2000]
    return facts


def record_try(
    ti: Any,
    status: str,
    *,
    state: str,
    error: BaseException | str | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
    code: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str | None:
    """Record this try once (None if another report already did, or if recording failed)."""
    key = try_key(ti)
    if key[1] < 1:  # never started (e.g. an upstream-failed task marked failed by hand)
        return None
    if not claim(key):
        log.debug("lineage-ledger: %s try %s already recorded", key[0], key[1])
        return None
    task = getattr(ti, "task", None)
    started = _started.pop(key, None)
    details = _details.pop(key, None) or Details()
    inputs = started.inputs if started else file_paths(getattr(task, "inlets", None))
    all_known: dict[str, Mapping[str, Any]] = dict(started.known) if started else {}
    all_known.update(details.known)
    all_known.update(known or {})
    outputs = file_paths(getattr(task, "outlets", None))
    began = started.at if started else (_utc(getattr(ti, "start_date", None)) or utcnow())
    if details.refused or status == "failed":
        # A failed try vouches only for what it wrote, a refused one for nothing: a file left
        # at an outlet by an earlier run listed here would read as "produced by a failed task".
        wrote = [] if details.refused else [
            p for p in outputs if p in details.outputs_known or written_by_try(p, started, began)]
        if len(wrote) < len(outputs):
            extra = {**(extra or {}), "outputs_not_written": [p for p in outputs if p not in wrote]}
        outputs = wrote
    outputs_known = _output_digests(outputs, details.outputs_known)
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
    code = code if code is not None else details.code
    parameters = parameters if parameters is not None else details.parameters
    extra = {**details.extra, **(extra or {})}
    map_index = getattr(ti, "map_index", -1)
    suffix = f"[{map_index}]" if map_index is not None and map_index >= 0 else ""
    run = TaskRun(
        task_id=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}{suffix}",
        task_name=f"{ti.dag_id}.{ti.task_id}",
        status=status,
        started=began,
        ended=_utc(getattr(ti, "end_date", None)) or utcnow(),
        inputs=inputs,
        outputs=outputs,
        known=all_known,
        known_outputs=outputs_known,
        code_digest=code if code is not None else describe_code(task),
        parameters=dict(parameters) if parameters is not None else {"operator": operator_path(task) if task else None},
        attempt=key[1],
        extra={"airflow": airflow_facts(ti, state, error), **jsonable(extra)},
        run_id=f"{ti.dag_id}/{ti.run_id}",
    )
    record_id = capture().record_now(run)
    if record_id is None:
        unclaim(key)
    return record_id


def _output_digests(outputs: list[str], given: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The outputs' digests as written: the operator's, else hashed now through the memo.

    A missing or unreadable output is left out: the capture then lists it as missing, or
    logs why it cannot be read.
    """
    digests: dict[str, dict[str, Any]] = {}
    for path in outputs:
        if path in given:
            digests[path] = given[path]
            continue
        try:
            digests[path] = digest_of(path)
        except ArtifactError:
            pass
    return digests


def preload() -> None:
    """Import now what recording a try needs later.

    The plugin is imported in the scheduler, whose LocalExecutor workers and their task
    processes are forks: a module imported here is inherited by every task process, while
    one imported at the first record is imported again in each of them (the recorder and
    the back-end's URL parsing cost 20 to 40 ms a task process that way, more than all
    the rest of the listener's work).
    """
    try:
        from lineage_ledger import Recorder, spool_first  # noqa: F401 - their modules, imported now
        from lineage_ledger.backends import backend_class, split_url

        backend_class(split_url(_settings.ledger_url())[0])
    except Exception as err:  # noqa: BLE001 - a bad URL is reported when a try is recorded
        log.debug("lineage-ledger: nothing preloaded: %s", err)


def in_process_runner() -> bool:
    """True under ``dag.test()``: tasks run in this process, which outlives them."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover
        return False
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return type(comms).__name__ == "InProcessSupervisorComms"


def flush_before_exit() -> None:
    """Make this process's records durable before a supervised task process ends with
    ``os._exit``, and ship them unless the machine's shipper will (:mod:`._shipper`).

    They are in the spool already; without a shipper, shipping now means the ledger has
    them without waiting for the next open to replay. Under ``dag.test()`` the process lives on and the
    recorder ships in the background, so the task is not held up.
    """
    cap = _capture
    if cap is None or _capture_pid != os.getpid() or in_process_runner():
        return
    if not cap.ship:
        # The machine's shipper (in the scheduler or another Airflow job process) ships it
        # once this process has ended. Make it survive a power cut first, and go: the
        # record is durable before the task process ends, not a shipper's round later
        # (a few ms on this path; the shipper's own fsync is a second line only).
        cap.sync()
        return
    if not cap.flush(timeout=_settings.flush_timeout()):
        log.warning("lineage-ledger: records not shipped in time; they stay in the spool for the next open")
