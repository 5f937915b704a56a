"""``nextflow-ledger``: run ``nextflow run`` and record every task in a lineage-ledger.

    nextflow-ledger [NEXTFLOW OPTIONS] run PIPELINE [RUN OPTIONS] --ledger URL --ledger-policy warn|strict|rerun|off

0. A launch directory or ``-log`` name that is not UTF-8 text (``_unrecordable``): nothing of
   the run can be recorded; said once, and Nextflow runs unrecorded (``strict`` refuses).
1. With ``-resume``: check the files of the resumed session's tasks against the ledger and
   apply the policy (``_preflight``): ``strict`` refuses with exit status 1 before Nextflow
   starts, ``rerun`` moves the changed tasks' work directories aside, ``warn`` names them.
2. Run the real ``nextflow``, following its log (``_log``): each task that ends is read from
   its work directory and handed to :class:`lineage_ledger.TaskCapture`, which hashes and
   spools it while the pipeline goes on (``_tasks``).
3. After Nextflow exits: one record per task that published files (from the same log); the
   session's task list for the next ``-resume`` (``_state``).

Exit status: Nextflow's; 1 when ``strict`` refuses; 2 for a bad command line or ledger URL.
The ledger is ``--ledger``, else ``$LINEAGE_LEDGER_URL``, else ``.lineage/ledger.db`` in the
launch directory. Nextflow is ``$LINEAGE_NEXTFLOW``, else ``nextflow`` on ``PATH``, else the
one ``plugins/nextflow/tools/install-nextflow.sh`` built.
"""

from __future__ import annotations

# Only what starting Nextflow needs is imported here: the JVM takes seconds to start, and the
# wrapper's own imports (logging, the core, the log's patterns) happen while it does, not before.
import os
import subprocess
import sys

from . import _args

TYPE_CHECKING = False  # `typing` itself costs milliseconds before Nextflow starts
if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Future
    from typing import Any

    from ._preflight import Plan
    from ._unverified import Unverified

NXF_RELEASE = "25.04.4"
FLUSH_TIMEOUT = 300.0  # seconds to wait for the records to reach the spool at the end
SHIP_WAIT = 5.0  # then for the ledger; what it has not taken stays spooled


def find_nextflow() -> str | None:
    import shutil

    given = os.environ.get("LINEAGE_NEXTFLOW")
    if given:
        return given
    found = shutil.which("nextflow")
    if found:
        return found
    cache = os.environ.get("LINEAGE_LEDGER_NEXTFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lineage-ledger")
    built = os.path.join(cache, f"nextflow-{NXF_RELEASE}", "bin", "nextflow")
    return built if os.access(built, os.X_OK) else None


_as_command = False  # run by main(): the wrapper's (and the core's) warnings go to stderr


def main(argv: Sequence[str] | None = None) -> None:
    global _as_command
    _as_command = True
    _leave(run(list(sys.argv[1:] if argv is None else argv)))


def _leave(status: int) -> None:
    """Exit with ``status`` once the exit handlers ran, without Python's teardown of every
    module and object (30 to 50 ms the user would wait for after Nextflow is done).

    By now the records are in the fsynced spool and the ledger has what it took in time;
    the exit handlers (the core's recorders, logging's flush) still run. Should a thread
    that is not a daemon still be alive, the ordinary exit waits for it as it would have."""
    import atexit
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say to it
            pass
    os._exit(status)


def _logger() -> Any:
    """The wrapper's logger, set up on first use: ``logging`` is imported once Nextflow started."""
    import logging

    if _as_command:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")  # no-op once configured
    return logging.getLogger("lineage_ledger.nextflow")


def run(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        command = _args.parse(argv)
    except _args.UsageError as err:
        print(f"nextflow-ledger: {err}", file=sys.stderr)
        return 2
    nextflow = find_nextflow()
    if nextflow is None:
        print("nextflow-ledger: no `nextflow` found (set LINEAGE_NEXTFLOW, put it on PATH, or run "
              "plugins/nextflow/tools/install-nextflow.sh)", file=sys.stderr)
        return 2
    launch_dir = os.getcwd()
    url = _args.absolute_url(command.ledger, launch_dir)
    from . import _unrecordable

    # Before Nextflow starts: a name that is not UTF-8 (_unrecordable).
    unrecordable = _unrecordable.why_nothing_is_recorded(launch_dir, command.log_file)
    if unrecordable is not None:
        if command.policy == "strict":
            print(f"nextflow-ledger: refusing to run (--ledger-policy strict): {_unrecordable.SAID}: {unrecordable}",
                  file=sys.stderr)
            return 1
        checked = "; nothing is checked before -resume either" if command.resume and command.policy != "off" else ""
        _logger().warning("lineage-ledger: %s: %s%s; Nextflow runs unrecorded", _unrecordable.SAID, unrecordable,
                          checked)
        return _run_unrecorded(command, nextflow)
    bad = _unrecordable.bad_ledger(url)
    if bad is not None:
        print(f"nextflow-ledger: refusing to run: {bad}", file=sys.stderr)
        return 2
    unverified: list[Unverified] = []
    known: dict[str, Any] = {}  # the session's tasks the check started from (its list, or rebuilt)
    stored: set[str] = set()  # what storeDir tasks stored, checked before any run (_stored_check)
    if command.policy != "off":
        from ._stored import stores_listed

        if stores_listed(launch_dir):
            _logger()
            from ._stored_check import check_stored

            refused = check_stored(command, launch_dir, url, stored)
            if refused is not None:
                return refused
    if command.resume and command.policy != "off":
        _logger()
        refused = _check_resume(command, launch_dir, url, unverified, known, nextflow, stored)
        if refused is not None:
            return refused
    return _run_recorded(command, nextflow, launch_dir, url, unverified[0] if unverified else None, known)


def _check_resume(command: _args.Command, launch_dir: str, url: str, unverified: list[Unverified],
                  known: dict[str, Any], nextflow: str | None = None, stored: frozenset[str] | set[str] = frozenset(),
                  ) -> int | None:
    """Apply the policy before a ``-resume``; an exit status when the run must not start.

    Under ``warn``, a ledger that failed its own check adds to ``unverified`` the files it
    could not vouch for: the run's records list them as ``not_verified`` (``_unverified``).
    ``known`` gets the session and the tasks the check starts from (its list, or without one
    the tasks ``_recovered`` found): the list this run writes names them too, or a list moved
    aside before the run (or during it) would leave the next ``-resume``, trusting the new
    one, checking only the tasks this run ran."""
    from lineage_ledger import ConfigError

    from . import _appeared, _log, _not_followed, _preflight, _recovered, _state

    log = _logger()
    session = command.resume_session or _log.last_session(launch_dir)
    if session is None:
        return None  # Nextflow will say there is nothing to resume
    plan = _preflight.Plan()
    try:
        _preflight.ship_left(url)  # a killed run's records, before anything reads the ledger
        tasks = _state.load(launch_dir, session)
        work_dir = None
        if tasks is None:  # moved aside, or not this user's: the work directory and the ledger say instead
            work_dir = _recovered.work_directory(command, launch_dir, nextflow)
            log.warning("lineage-ledger: no list of the tasks of session %s that this user wrote (%s); the check "
                        "before -resume is planned from %s and the ledger's records", session,
                        _state.session_file(launch_dir, session), work_dir)
            tasks = _recovered.tasks_from_work(url, work_dir)
        known.update(session=session, tasks=tasks)
        plan = _preflight.plan(tasks)
        plan.checked = [p for p in plan.checked if p not in stored]  # checked already (_stored_check)
        if not plan.tasks:
            if work_dir is not None and command.policy == "strict" and _recovered.nextflow_cached(launch_dir, session):
                print(f"nextflow-ledger: refusing to run (--ledger-policy strict): Nextflow keeps a cache of "
                      f"session {session}, but nothing lists its tasks and no finished task is in {work_dir}, so "
                      f"nothing checks what -resume would reuse; pass the work directory with -w, or run without "
                      f"-resume", file=sys.stderr)
                return 1
            log.warning("lineage-ledger: no recorded task of session %s here; nothing checked before -resume",
                        session)
            return None
        # Links not followed: nothing to compare them by, so said unchecked (under strict too: a
        # note, not a refusal, since nothing was seen to change).
        for line in _not_followed.not_checked_lines(plan.tasks):
            log.warning("%s", line)
        # Files slipped into a task's work directory: no record names them, so the ledger's
        # check cannot see them; the session's list of what each task wrote can (_appeared).
        relinked: dict[str, str] = {}
        slipped = _appeared.appeared(plan.tasks, relinked)
        plan.producers.update(slipped)
        plan.tampered = _preflight.check(url, plan.checked) + _appeared.as_checks(slipped, plan.tasks, relinked)
    except ConfigError as err:  # a URL no retry can fix: every record of the run would be lost too
        print(f"nextflow-ledger: refusing to run: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - an unreadable ledger: strict refuses, others say so
        if command.policy == "strict":
            print(f"nextflow-ledger: refusing to run (--ledger-policy strict): the files could not be "
                  f"checked against the ledger: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        if not _preflight.failed_its_own_check(err):  # out of reach: go on
            log.error("lineage-ledger: could not check files against the ledger (%s: %s); running without "
                      "the %s policy", type(err).__name__, err, command.policy)
            return None
        return _after_failed_check(command, launch_dir, url, plan, err, unverified)
    if not plan.tampered:
        return None
    lines = "\n  ".join(_appeared.describe(c, _preflight.describe) for c in plan.tampered)
    if command.policy == "strict":
        print(f"nextflow-ledger: refusing to run (--ledger-policy strict); files changed outside the "
              f"workflow:\n  {lines}", file=sys.stderr)
        return 1
    log.warning("lineage-ledger: files changed outside the workflow:\n  %s", lines)
    if command.policy == "rerun":
        return _rerun(launch_dir, plan)
    return None


def _after_failed_check(command: _args.Command, launch_dir: str, url: str, plan: Plan, err: BaseException,
                        unverified: list[Unverified]) -> int | None:
    """Under warn or rerun, after the batch check failed the ledger's own verification: each
    file checked on its own (``_preflight.one_by_one``); only those whose own check fails are
    unverified. Under rerun they count as changed (their makers, or a source's readers, run
    again) and a source among them (no task of the session made it) is left out of its
    readers' records as under warn: they read the same edit, and records listing it would make
    the next strict ``-resume`` pass it. Under warn every task that reads one of them lists
    it, and what it writes, as ``not_verified`` (``_unverified``)."""
    from . import _appeared, _preflight
    from ._unverified import Unverified

    log = _logger()
    failed = f"{type(err).__name__}: {err}"
    existing = [p for p in plan.checked if os.path.exists(p)]
    slipped = _appeared.as_checks({p: k for p, k in plan.producers.items() if p not in plan.checked},
                                  plan.tasks)
    whole = True
    try:
        plan.tampered, plan.unverified, whole = _preflight.one_by_one(url, existing)
    except Exception as again:  # noqa: BLE001 - out of reach now: nothing vouches for any of them
        log.error("lineage-ledger: could not check the files one by one either (%s: %s)", type(again).__name__, again)
        plan.tampered, plan.unverified, whole = [], existing, False  # each one singled out: the safe side
    plan.tampered += slipped  # changed whatever the ledger says: no record names them
    shown = " ".join(plan.unverified[:20]) + (" ..." if len(plan.unverified) > 20 else "")
    log.error("lineage-ledger: the ledger failed its own check (%s); checked one by one, it cannot vouch for "
              "%d of the %d file(s) the resumed run builds on: %s", failed, len(plan.unverified), len(existing), shown)
    if plan.tampered:
        log.warning("lineage-ledger: files changed outside the workflow:\n  %s",
                    "\n  ".join(_appeared.describe(c, _preflight.describe) for c in plan.tampered))
    if command.policy == "rerun":
        # A ledger failed as a whole names no file: every one is rerun, none singled out (that
        # failure persists, so the next strict -resume refuses whatever these records list).
        sources = [] if whole else [p for p in plan.unverified if p not in plan.producers]
        if sources:
            unverified.append(Unverified(sources, failed, "rerun"))
            log.error("lineage-ledger: under rerun the tasks that read the %d source(s) the ledger cannot vouch "
                      "for run again, and their records list them, and what they write, as not_verified",
                      len(sources))
        return _rerun(launch_dir, plan)
    unverified.append(Unverified(plan.unverified, failed))
    log.error("lineage-ledger: the records of the tasks that read them list them, and what they write, as "
              "not_verified")
    return None


def _rerun(launch_dir: str, plan: Plan) -> int | None:
    """Move aside the tasks :func:`_preflight.to_rerun` names; exit status 1 if that fails."""
    from . import _preflight

    try:
        _preflight.quarantine(launch_dir, plan, _preflight.to_rerun(plan))
    except OSError as err:  # the promised rerun cannot happen: do not run on the changed files
        print(f"nextflow-ledger: refusing to run (--ledger-policy rerun): cannot move a changed task's "
              f"files aside: {err}", file=sys.stderr)
        return 1
    return None


def _run_unrecorded(command: _args.Command, nextflow: str) -> int:
    """Nextflow with the user's arguments, as it runs without the wrapper; its exit status."""
    import signal

    process = subprocess.Popen([nextflow, *command.top, "run", *command.run])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches Nextflow (same process group)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    return process.wait()


def _run_recorded(command: _args.Command, nextflow: str, launch_dir: str, url: str,
                  unverified: Unverified | None = None, known: dict[str, Any] | None = None) -> int:
    log_file = os.path.join(launch_dir, command.log_file or ".nextflow.log")
    try:  # before Nextflow starts: it renames the previous run's log, which the follower skips
        stale_log: int | None = os.stat(log_file).st_ino
    except OSError:
        stale_log = None
    process = subprocess.Popen([nextflow, *_args.nextflow_args(command, _args.PUBLISH_LOGGER)])
    # The JVM takes seconds to start: everything else is imported and opened meanwhile.
    import signal

    # Ctrl-C reaches Nextflow too (same process group): the wrapper waits for it and records
    # what ended. A TERM sent to the wrapper alone is passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    import time
    from concurrent.futures import wait

    from lineage_ledger import ConfigError, TaskCapture

    from . import _log, _state
    from ._tasks import TaskRecorder

    log = _logger()
    capture = TaskCapture(url, engine="nextflow")
    futures: list[Future[str | None]] = []
    recorder = TaskRecorder(_Poster(capture, futures), command.params, unverified)
    if command.policy != "off":  # a cached task's publications are recorded against the list (_republished)
        recorder.listed = (known or {}).get("tasks") or {}
    follower = _log.LogFollower(log_file, recorder, stale=stale_log)
    try:
        capture.open()  # while the JVM starts: a URL no retry can fix stops the run now
    except ConfigError as err:
        process.terminate()
        process.wait()
        print(f"nextflow-ledger: refusing to run: {err}", file=sys.stderr)
        return 2
    follower.start()
    status = process.wait()
    exited = time.monotonic()
    follower.stop()
    try:
        recorder.finish()
    except Exception:  # noqa: BLE001 - Nextflow's exit status must reach the caller whatever happens
        log.exception("lineage-ledger: could not record the last tasks or the published files")
    _, late = wait(list(futures), timeout=FLUSH_TIMEOUT)
    try:
        capture.sync()
    except Exception as err:  # noqa: BLE001 - the ledger's own replay then covers it
        log.error("lineage-ledger: cannot sync the spool: %s", err)
    shipped = capture.close(timeout=SHIP_WAIT)
    carried = known["tasks"] if known and known["session"] == recorder.session_id else {}
    for key, pairs in recorder.republished.items():  # checked by the next -resume as any published file
        if key in carried:
            earlier = [list(p) for p in carried[key].get("published") or []]
            carried = {**carried, key: {**carried[key], "published": earlier + [p for p in pairs if p not in earlier]}}
    if recorder.session_id is not None and (recorder.tasks or carried):
        try:
            _state.save(launch_dir, recorder.session_id, {**carried, **recorder.tasks})
        except Exception as err:  # noqa: BLE001 - an unsafe state root, a full disk: Nextflow's status still goes out
            log.error("lineage-ledger: cannot save the session's tasks (the next -resume is checked from the work "
                      "directory and the ledger): %s", err)
    lost = capture.failures + len(late)
    print(f"lineage-ledger: recorded {recorder.recorded} task try(s) and {recorder.publications} publication(s)"
          f"{f', {recorder.cached_count} cached task(s) recorded by earlier runs' if recorder.cached_count else ''}"
          f"{'' if shipped else '; some wait in the spool (lineage-ledger spool ship)'}"
          f"{f'; {lost} record(s) could NOT be made (see above)' if lost else ''}"
          f" ({time.monotonic() - exited:.2f} s after Nextflow exited)", file=sys.stderr)
    return status


class _Poster:
    """``capture.submit`` with the futures kept, so that the end waits for the spool only."""

    def __init__(self, capture: object, futures: list[Future[str | None]]) -> None:
        self._capture = capture
        self._futures = futures

    def post(self, run: object) -> None:
        self._futures.append(self._capture.submit(run))  # type: ignore[attr-defined]
