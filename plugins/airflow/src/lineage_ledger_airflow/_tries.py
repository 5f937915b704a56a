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

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from blake3 import blake3

from lineage_ledger import LedgerError, RecordPending, TaskCapture, utcnow

from . import _late, _settings, _shipper
from ._assets import file_paths
from ._digests import DigestMemo

# What a try's record says. The operators and the checks use Details, operator_path and
# try_key through this module, as before they moved.
from ._try_record import Details, Started, as_utc, own_ti_id, stat_key, try_key, try_run
from ._try_record import operator_path as operator_path

log = logging.getLogger("lineage_ledger.airflow")

ENGINE = "airflow"
_lock = threading.Lock()
_capture: TaskCapture | None = None
_capture_pid = -1
_memo: DigestMemo | None = None
_memo_pid = -1
_claimed: set[tuple[str, int]] = set()


_started: dict[tuple[str, int], Started] = {}


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


#: A thread's capture in place of the process's: the sweep of a run owed on a ledger the site
#: has moved from records and marks its tries there (see _moved).
_routed = threading.local()


def capture() -> TaskCapture:
    """This process's capture (a forked task process gets its own), or this thread's (_moved)."""
    global _capture, _capture_pid
    routed: TaskCapture | None = getattr(_routed, "capture", None)
    if routed is not None:
        return routed
    with _lock:
        if _capture is None or _capture_pid != os.getpid():
            # A job process ships this spool: a task process journals only (no shipping thread,
            # never wait here). A process that lives on (the API server, reporting a try marked
            # failed by hand) ships its own: it keeps its spool segment locked while it runs,
            # and no shipper takes a segment whose writer is alive.
            _capture = TaskCapture(_settings.ledger_url(), engine=ENGINE, spool=_settings.spool_root(), threads=2,
                                   ship=not (_shipper.alive() and _in_task_process()))
            _capture_pid = os.getpid()
        return _capture


def _in_task_process() -> bool:
    """Whether this process runs tasks for Airflow's supervisor (it ends right after its hooks)."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def _forget_in_child() -> None:
    """A forked child (a LocalExecutor worker, a task process) starts with none of its
    parent's tries, capture or memo, and a lock no thread holds.

    Done at the fork, not at the child's first use of the capture: by then a task process has
    noted its own try (the inputs hashed at its start, a strict check's refusal), and that
    first use dropped them with the parent's. It did wherever the parent had recorded before
    it forked (a LocalExecutor worker spawned after the scheduler's first sweep): a refused
    try was recorded without ``refused_by`` or ``modified_inputs``, and every try's inputs
    were hashed as it ended instead of as it started."""
    global _lock, _capture, _capture_pid, _memo, _memo_pid
    _lock = threading.Lock()
    _capture, _capture_pid = None, -1
    _memo, _memo_pid = None, -1
    _claimed.clear()
    _started.clear()
    _details.clear()


os.register_at_fork(after_in_child=_forget_in_child)


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


def claimed(key: tuple[str, int], ti_id: str | None = None) -> bool:
    """Whether some process on this machine has recorded (or is recording) this try, into
    this ledger, or (the try's task-instance id ``ti_id`` given) into another one of the same
    spool (see :func:`_claimed_for_another_ledger`)."""
    with _lock:
        if key in _claimed:
            return True
    directory = _marker_dir(capture())
    name = _marker_name(key)
    return os.path.exists(os.path.join(directory, name)) or (
        bool(ti_id) and _claimed_for_another_ledger(directory, name, str(ti_id)))


def _claimed_for_another_ledger(directory: str, name: str, ti_id: str) -> bool:
    """Whether a try's marker is beside another ledger of this spool root.

    The markers are kept per ledger (in its spool directory). A site that moves its ledger
    (SQLite to PostgreSQL, or back) while a run is in progress restarts its scheduler on the
    new one; the run's tries that reported before, or from task processes started before the
    move, are claimed beside the old ledger only. Before, the new scheduler's sweep at the
    run's end found no marker of them and recorded each one again, into the new ledger, as a
    task process that ended without reporting (tests/test_airflow_deployment.py). A try
    recorded into any ledger by a process of this machine was reported: it is not the sweep's
    to record again. Only the sweep asks, for a try its own ledger has no marker of.

    The marker must name the try's own task-instance id (a marker holds the id its report
    gave): two Airflow sites on one machine whose spool root is shared (``LINEAGE_SPOOL``)
    and whose ledgers differ run the same DAGs under the same run ids, staging beside
    production, and a try of one must not pass for the other's killed one."""
    root = os.path.dirname(os.path.dirname(directory))  # <root>/<ledger's spool>/airflow-tries
    own = os.path.dirname(directory)
    try:
        others = [entry.path for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False) and entry.path != own]
    except OSError:
        return False
    for other in others:
        try:
            with open(os.path.join(other, "airflow-tries", name), "rb") as handle:
                if handle.read(200).decode(errors="replace") == ti_id:
                    return True
        except OSError:  # none there (most), or unreadable: not this try's
            continue
    return False


def claim(key: tuple[str, int], *, own: bool = False, ti_id: str = "") -> bool:
    """True for the first report of this try on this machine; False for every later one.

    ``own``: the task process's own report. Where no marker can be made (the spool's disk
    read-only, its directory unusable) it is recorded all the same, with a warning: its
    record can still go straight into the ledger, and a lost record is worse than the rare
    second one (another process's report of the same try). Any other report then raises:
    without markers, the scheduler's sweep would record every try a second time. The marker
    holds ``ti_id``, the try's task-instance id (see :func:`_claimed_for_another_ledger`)."""
    with _lock:
        if key in _claimed:
            return False
        _claimed.add(key)
    name = _marker_name(key)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    try:
        directory = _marker_dir(capture())
        try:
            fd = os.open(os.path.join(directory, name), flags, 0o644)
        except FileNotFoundError:  # the directory was removed since this process made it
            os.makedirs(directory, exist_ok=True)
            fd = os.open(os.path.join(directory, name), flags, 0o644)
    except FileExistsError:
        return False
    except (OSError, LedgerError) as err:
        if not own:
            with _lock:
                _claimed.discard(key)
            raise
        log.warning("lineage-ledger: cannot mark try %d of %s as recorded on this machine (%s); recording it all "
                    "the same", key[1], key[0].replace("\0", "/"), err)
        return True
    try:
        os.write(fd, ti_id.encode())
    except OSError as err:  # the marker stands all the same; a sweep on another ledger records it again
        log.debug("lineage-ledger: cannot write the task-instance id into the marker of %s: %s", key, err)
    finally:
        os.close(fd)
    return True


def _by_hand_name(key: tuple[str, int]) -> str:
    return blake3(f"{key[0]}\0{key[1]}\0by-hand".encode()).hexdigest()[:40]


def note_marked_success_by_hand(key: tuple[str, int]) -> None:
    """Leave word for the scheduler's sweep that this try was marked success by hand: a task
    process killed before it reported (it ignored the signals that end it) did not vouch for
    its outlets, and the sweep must not record it as succeeded. Removed with the markers."""
    try:
        fd = os.open(os.path.join(_marker_dir(capture()), _by_hand_name(key)), os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    except (OSError, LedgerError) as err:  # then the sweep records it as Airflow has it; said
        log.warning("lineage-ledger: cannot note that try %d of %s was marked success by hand (%s)", key[1],
                    key[0].replace("\0", "/"), err)


def marked_success_by_hand(key: tuple[str, int]) -> bool:
    try:
        return os.path.exists(os.path.join(_marker_dir(capture()), _by_hand_name(key)))
    except (OSError, LedgerError):
        return False


def unclaim(key: tuple[str, int]) -> None:
    """Let a later report try again when this one could not be written."""
    with _lock:
        _claimed.discard(key)
    name = _marker_name(key)
    try:
        os.unlink(os.path.join(_marker_dir(capture()), name))
    except (OSError, LedgerError):  # no marker was made, or none can be removed
        pass


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
    started = as_utc(getattr(ti, "start_date", None)) or utcnow()
    outputs = file_paths(getattr(task, "outlets", None))
    _started[try_key(ti)] = Started(started, inputs, known, {path: stat_key(path) for path in outputs})


def started_digests(ti: Any) -> dict[str, dict[str, Any]]:
    """The inlets' digests taken when this try started (empty if the start was not seen)."""
    started = _started.get(try_key(ti))
    return dict(started.known) if started else {}


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
    unmarked: bool = False,
) -> str | None:
    """Record this try once (None if another report already did, or if recording failed).
    ``unmarked``: record it where no marker can be made, as the task's own report is (the
    scheduler's sweep, which found no record of it in the ledger)."""
    key = try_key(ti)
    if key[1] < 1:  # never started (e.g. an upstream-failed task marked failed by hand)
        return None
    if not claim(key, own=unmarked or type(ti).__name__ == "RuntimeTaskInstance",  # the task's own report
                 ti_id=own_ti_id(ti)):
        log.debug("lineage-ledger: %s try %s already recorded", key[0], key[1])
        return None
    started = _started.pop(key, None)
    details = _details.pop(key, None) or Details()
    run = try_run(ti, status, state=state, error=error, known=known, code=code, parameters=parameters,
                  extra=extra, started=started, details=details, digest=digest_of)
    # A record the spool cannot take (its disk full) goes straight into the ledger, within
    # flush_timeout: a task process that waited out a locked SQLite ledger (60 s) would be
    # killed for overtime (20 s) and say nothing.
    cap, wait = capture(), max(2.0, _settings.flush_timeout())
    try:
        record_id = cap.record_now(run, straight_wait=wait, raise_pending=True)
    except RecordPending as pending:
        # The ledger has not answered yet, and the write goes on: it may still land.
        # The try stays claimed meanwhile (no second record of it); see _late.
        _late.await_outcome(key, run.task_id, pending.write, wait, lambda: unclaim(key), str(pending))
        return None
    if record_id is None:
        unclaim(key)  # the scheduler's sweep at the run's end tries again if this process has ended
        log.error("lineage-ledger: try %d of %s is NOT recorded (the error above says why: a spool and a "
                  "ledger that both refused it, say); its outputs are vouched for by no record", key[1], run.task_id)
    return record_id


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
    try:
        if not cap.ship:
            # The machine's shipper (in the scheduler or another Airflow job process) ships it
            # once this process has ended. Make it survive a power cut first, and go: the
            # record is durable before the task process ends, not a shipper's round later
            # (a few ms on this path; the shipper's own fsync is a second line only).
            cap.sync()
        elif not cap.flush(timeout=_settings.flush_timeout()):
            log.warning("lineage-ledger: records not shipped in time; they stay in the spool for the next open")
    finally:
        _late.give_up()  # last: a write still waiting for the ledger ends with the process
