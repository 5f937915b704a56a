"""One recording process for all the ``ParslLedger``s of a process that record to the same place.

Starting a recording process costs about 0.4 s of CPU (Python, the ledger's imports, opening
the ledger), and the first DataFlowKernel's tasks wait for it. A program that loads one
DataFlowKernel pays that once. Parsl's own test suite, and any program that loads a fresh
DFK per step, loads dozens: with a process per ``ParslLedger``, 50 short DFKs ran many
times slower than plain Parsl (``bench/bench_parsl_dfks.py``).

So a ``ParslLedger`` with ``record_in="process"`` borrows the process of a live one that
records to the same ledger, spool and state directory, from the same working directory (a
relative URL or spool means another file elsewhere), with the same number of threads. When
the last borrower closes (executor shutdown: ``dfk.cleanup()``), its records are flushed
as before, and the process is kept for ``IDLE_SECONDS`` in case another DFK comes; then it
is ended, flushing and shipping what it holds. At the latest it ends when this process
exits (the core ends recording processes at exit).

A back-end that is down must not keep the process waiting: every wait here is bounded
(``END_WAIT``; the recording process's own last wait is ``EXIT_WAIT``), and what the
back-end has not taken stays in the durable spool. This process's exit first ends the
recording processes that wait for their idle timer, and waits for an idle end under way,
so that the core's exit hook does not close the pipe that end is writing to ("Bad file
descriptor"), and no recording process outlives this one, still writing to its spool.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from lineage_ledger import ProcessCapture
from lineage_ledger._capture.drain import at_threading_exit

#: How long an unused recording process waits for the next ParslLedger before it is ended.
IDLE_SECONDS = 2.0
#: How long the recording process, once its input ends, waits for the back-end (its close
#: keeps to one limit for the flush and the stop of its shipping thread together) before it
#: exits, leaving the rest in the spool. Each run's end has already waited for shipping
#: (``SHIP_WAIT``).
EXIT_WAIT = 1.0
#: How long ending a recording process may take here. Well above ``EXIT_WAIT`` (the
#: process's start-up and journaling come on top), so that it exits before this process
#: stops waiting for it.
END_WAIT = 3.0

_lock = threading.Lock()
_captures: dict[tuple, ProcessCapture] = {}
_users: dict[tuple, int] = {}
_timers: dict[tuple, threading.Timer] = {}
_ending: set[threading.Thread] = set()  # idle ends under way
_exiting = False


def _key(url: str | None, threads: int, spool: str | None) -> tuple:
    environment = tuple(sorted((k, v) for k, v in os.environ.items()
                               if k.startswith("LINEAGE_") or k in ("XDG_STATE_HOME", "HOME")))
    return (url, threads, spool, os.getcwd(), environment)


def _usable(capture: ProcessCapture) -> bool:
    # A capture closed by a caller of its own close() cannot record any more.
    return not getattr(capture, "_closing", False)


def acquire(url: str | None, threads: int, spool: str | None, *, use: bool) -> tuple[tuple, ProcessCapture]:
    """The recording process for this place, started if there is none. ``use``: an executor
    starts recording through it (count it until :func:`release`); without, a ``ParslLedger``
    is only being made: it starts early, and ends after ``IDLE_SECONDS`` if no executor uses it."""
    key = _key(url, threads, spool)
    with _lock:
        capture = _captures.get(key)
        if capture is None or not _usable(capture):
            stale = _timers.pop(key, None)  # the closed one's: it must not keep the new one's slot
            if stale is not None:
                stale.cancel()
            capture = ProcessCapture(url, engine="parsl", threads=threads, spool=spool, exit_timeout=EXIT_WAIT)
            _captures[key] = capture
            _users[key] = 0
            # Start it now, on a thread of its own: it imports and opens the ledger while the
            # DataFlowKernel loads and runs its first tasks, instead of when the first try ends
            # (the first cleanup would wait for it). Nothing waits for this thread.
            threading.Thread(target=_start, args=(capture,), name="lineage-ledger-start", daemon=True).start()
        if use:
            timer = _timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            _users[key] += 1
        elif _users[key] == 0 and key not in _timers:
            _arm(key, capture)
        return key, capture


def _arm(key: tuple, capture: ProcessCapture) -> None:
    """End ``capture`` in ``IDLE_SECONDS`` unless it is used meanwhile (called under ``_lock``)."""
    if _exiting:
        return  # the exit hook has ended the idle ones; the core ends the rest
    timer = threading.Timer(IDLE_SECONDS, _end_if_unused, args=(key, capture))
    timer.daemon = True
    _timers[key] = timer
    timer.start()


def _start(capture: ProcessCapture) -> None:
    try:
        capture.open()
    except Exception:  # noqa: BLE001 - the first try starts it again, or records here, and says why
        pass


def release(key: tuple, capture: ProcessCapture) -> None:
    """A borrower is done (it flushed first); end ``capture`` once nobody has used it for a while."""
    with _lock:
        if _captures.get(key) is not capture:
            return  # replaced meanwhile (it had been closed): nothing to count
        _users[key] -= 1
        if _users[key] == 0 and key not in _timers:
            _arm(key, capture)


def _end_if_unused(key: tuple, capture: ProcessCapture) -> None:
    with _lock:
        kept = _captures.get(key)
        if _exiting or kept is None or kept is not capture or _users.get(key, 0) > 0:
            return  # the exit hook ends it; or replaced, or borrowed again meanwhile
        del _captures[key], _users[key]
        _timers.pop(key, None)
        _ending.add(threading.current_thread())
    try:
        _end(kept)
    finally:
        with _lock:
            _ending.discard(threading.current_thread())


def _end(capture: ProcessCapture) -> None:
    """End the recording process: it journals what is left, tries to ship for ``EXIT_WAIT``
    and exits; what the back-end did not take stays spooled. One that does not end within
    ``END_WAIT`` (slow, or stopped) is let go, and finishes on its own; the tries it has
    not journaled are journaled by this process first (the core's ``_end_child``), since
    it may yet die before it journals them (``tests/test_parsl_slow_recorder.py``).

    Not ``close()``: that flushes first, for up to its timeout, and the last borrower's
    cleanup has just flushed (or given up on a back-end that is down): a second wait for
    the same back-end is what made the end of a run slow. ``close`` afterwards only
    closes what this process's side holds (the child is gone by then; this side has
    records of its own only if the child died, and waits as long for those)."""
    try:
        capture._end_child(END_WAIT)
        capture.close(EXIT_WAIT)
    except Exception:  # noqa: BLE001 - the core logs what went wrong; the records stay spooled
        pass


def _end_idle_at_exit() -> None:
    """Before the core's exit hook: end the recording processes nobody uses, and wait for
    the idle ends under way (bounded), instead of racing them."""
    global _exiting
    with _lock:
        _exiting = True
        idle = []
        for key, timer in list(_timers.items()):
            timer.cancel()
            if _users.get(key, 0) == 0 and key in _captures:
                idle.append(_captures.pop(key))
                del _users[key]
        _timers.clear()
        ending = list(_ending)
    for capture in idle:
        _end(capture)
    for thread in ending:
        thread.join(END_WAIT + 1)


# Registered after the core's hook (this module imports the core first): it runs before it.
at_threading_exit(_end_idle_at_exit)


def live() -> dict[tuple, Any]:
    """The shared captures now kept (for tests and diagnostics)."""
    with _lock:
        return dict(_captures)
