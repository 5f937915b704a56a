"""A Parsl run whose recording process is slow: here stopped outright (SIGSTOP), a real one.

A try's end never waits for the recording process: the result callback puts the try's
report in memory shared with it and returns. Only the end of the run (``dfk.cleanup()``)
waits, at most ``SHIP_WAIT``, for the reports to be journaled and shipped. That wait is
not for nothing: until the recording process journals a report it is in that shared memory
only, not in the durable spool, and the engine's process is what takes the reports back and
records them if the recording process dies. So when the wait gives up, what the run says
must be true: it used to say that the tries "wait in the spool" and could be shipped now
with ``lineage-ledger spool ship``, while the spool held none of them.

The recording process's own end (once no DataFlowKernel has used it for ``IDLE_SECONDS``,
or at exit) gives up on it after ``END_WAIT`` too, and lets it go. Parsl's process then
journals the tries it had not journaled itself: killed afterwards, it lost every one of
them before (the last two tests); resumed, it records them again, and the ledger keeps
each once.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

import parsl  # noqa: E402
from lineage_ledger_parsl import ParslLedger  # noqa: E402
from lineage_ledger_parsl._session import SHIP_WAIT  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.executors import ThreadPoolExecutor  # noqa: E402

TRIES = 20
#: How long the resumed recording process may take to journal and ship the tries: only
#: a limit for a hang, on a busy 2-core machine; it takes well under a second here.
RESUMED_BOUND_S = 60
#: The waits that give up on the stopped recording process, shortened here: every one of
#: them runs out in full whatever its length (nothing answers a stopped process), and at
#: the plugin's own lengths (SHIP_WAIT, IDLE_SECONDS, END_WAIT: 5 s, 2 s, 3 s) they were
#: most of this file's time. The plugin's defaults stay as they are.
QUICK_SHIP_WAIT = 1.0
QUICK_IDLE_SECONDS = 0.5
QUICK_END_WAIT = 1.0


class QuickLedger(ParslLedger):
    """A ParslLedger whose end of a run (the memoizer's ``finish()``, each executor's
    ``close()``, both called without a timeout) waits ``QUICK_SHIP_WAIT``, not ``SHIP_WAIT``."""

    def close(self, timeout: float | None = QUICK_SHIP_WAIT) -> bool:
        return super().close(timeout)

    def finish(self, timeout: float | None = QUICK_SHIP_WAIT) -> bool:
        return super().finish(timeout)


@pytest.fixture
def quick_end(monkeypatch):
    """The shared recording process is ended after QUICK_IDLE_SECONDS unused, and its end
    gives up on it after QUICK_END_WAIT (both read by the plugin when it uses them)."""
    from lineage_ledger_parsl import _shared

    assert _shared.END_WAIT > _shared.EXIT_WAIT >= 0  # the names this fixture sets are still the plugin's
    monkeypatch.setattr(_shared, "IDLE_SECONDS", QUICK_IDLE_SECONDS)
    monkeypatch.setattr(_shared, "END_WAIT", QUICK_END_WAIT)


def double(x: int) -> int:
    return 2 * x


def records_of(db: Path, run_id: str) -> int:
    """This run's records in the ledger, read straight from its table (0 before the
    recording process has made it: the test must not make the ledger's file itself)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'll_records'").fetchone() is None:
            return 0
        return int(conn.execute("SELECT count(*) FROM ll_records WHERE run_id = ?", (run_id,)).fetchone()[0])


def first_try_journaled(ledger: ParslLedger, db: Path, run_id: str) -> None:
    """Wait until the run's first try is in the ledger, then flush: the recording process has
    acknowledged it, so stopping it leaves exactly the later tries unjournaled. A flush right
    after ``result()`` is not enough: Parsl completes the AppFuture from its own callback on
    the executor's future, which may run before the ledger's callback on that future has
    handed the report over (a try that ends between the executor's ``submit`` and Parsl
    adding its callback: rare, more so on a busy machine). That flush had nothing to wait
    for, the report reached the ring after the stop, and the test counted one try too many
    that the recording process "had not journaled"."""
    deadline = time.monotonic() + RESUMED_BOUND_S
    while records_of(db, run_id) < 1:
        assert time.monotonic() < deadline, "the first try never reached the ledger"
        time.sleep(0.05)
    assert ledger.flush(RESUMED_BOUND_S)  # the recording process is up and has the first try


def test_a_stopped_recording_process_holds_no_try_up_and_the_run_says_where_its_tries_are(workdir, caplog):
    db = workdir / "ledger.db"
    ledger = QuickLedger(f"sqlite:///{db}", spool=str(workdir / "spool"))
    config = Config(executors=[ledger.wrap(ThreadPoolExecutor(label="threads", max_threads=2))],
                    memoizer=ledger.memoizer(), usage_tracking=0, run_dir=str(workdir / "runinfo"))
    app = python_app(double)
    dfk = parsl.load(config)
    child = None
    try:
        assert app(0).result() == 0
        first_try_journaled(ledger, db, dfk.run_id)
        child = ledger.capture.child_pid
        assert child is not None
        os.kill(child, signal.SIGSTOP)
        started = time.monotonic()
        assert [app(i).result() for i in range(1, TRIES + 1)] == [2 * i for i in range(1, TRIES + 1)]
        tries_s = time.monotonic() - started
        run_id = dfk.run_id
    finally:
        try:
            dfk.cleanup()  # gives up on the stopped recording process after QUICK_SHIP_WAIT
            before = records_of(db, dfk.run_id) if child is not None else None
        finally:
            if child is not None:
                os.kill(child, signal.SIGCONT)
    # One after another, each try ended while nothing recorded: none waited for the
    # recording process (a wait of SHIP_WAIT / TRIES each would already cross this line).
    # The bound is the plugin's SHIP_WAIT (5 s), as generous as before the wait was shortened.
    assert tries_s < SHIP_WAIT, f"{TRIES} tries took {tries_s:.1f}s with the recording process stopped"

    told = [r.getMessage() for r in caplog.records
            if r.name == "lineage_ledger.parsl" and r.levelname == "WARNING" and "in time" in r.getMessage()]
    assert len(told) == 1, told  # said once, though the memoizer and the executor both waited
    # It names the recording process and how many tries it has not journaled, and does not
    # send anyone to ship a spool that holds none of them.
    assert f"recording process (pid {child})" in told[0], told[0]
    found = re.search(r"has not journaled (\d+) tries", told[0])
    assert found and int(found.group(1)) == TRIES, told[0]
    assert "wait in the spool" not in told[0], told[0]
    assert before == 1  # only the try before the stop

    # Resumed, the recording process journals and ships every try on its own: none lost.
    deadline = time.monotonic() + RESUMED_BOUND_S
    while records_of(db, run_id) < TRIES + 1:
        assert time.monotonic() < deadline, f"{records_of(db, run_id)} of {TRIES + 1} tries reached the ledger"
        time.sleep(0.1)
    assert records_of(db, run_id) == TRIES + 1


class HeldLedger(QuickLedger):
    """The report of its first try is held on the thread that ends the try until ``go``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reporting, self.go = threading.Event(), threading.Event()

    def submit(self, run: Any) -> None:
        if not self.reporting.is_set():
            self.reporting.set()
            self.go.wait(RESUMED_BOUND_S)
        super().submit(run)


#: Set by the test once Parsl watches the try: the try may end.
MAY_END = threading.Event()


def double_when_told(x: int) -> int:
    MAY_END.wait(RESUMED_BOUND_S)
    return 2 * x


def test_parsl_sees_a_try_end_only_once_the_ledger_has_its_report(workdir):
    """The future Parsl watches for a try (and completes its AppFuture from) was the
    executor's own: done when the try returned, while the ledger's callback on it might not
    have handed the report over yet. Parsl's callback runs after the ledger's only when it
    was added before the try ended; on a busy machine the try could end between the two, and
    then ``app(0).result(); ledger.flush()`` flushed nothing (this file's other tests stopped
    the recording process with that try still to come: one try too many unjournaled), and a
    dependent try's pre-launch check did not know its input was produced in this run. Here
    the try ends once Parsl watches it, and its report is held until the test has looked
    at what Parsl watches. A few seconds."""
    db = workdir / "ledger.db"
    ledger = HeldLedger(f"sqlite:///{db}", spool=str(workdir / "spool"))
    config = Config(executors=[ledger.wrap(ThreadPoolExecutor(label="threads", max_threads=2))],
                    memoizer=ledger.memoizer(), usage_tracking=0, run_dir=str(workdir / "runinfo"))
    dfk = parsl.load(config)
    MAY_END.clear()
    try:
        future = python_app(double_when_told)(21)
        deadline = time.monotonic() + RESUMED_BOUND_S  # Parsl launches on a thread of its own
        while (watched := future.task_record["exec_fu"]) is None:
            assert time.monotonic() < deadline, "Parsl never launched the try"
            time.sleep(0.01)
        MAY_END.set()
        assert ledger.reporting.wait(RESUMED_BOUND_S), "the try never ended"
        assert not watched.done() and not future.done(), "Parsl sees the try end before the ledger has its report"
        ledger.go.set()
        assert future.result() == 42
        assert ledger.flush(RESUMED_BOUND_S)
        assert records_of(db, dfk.run_id) == 1
    finally:
        MAY_END.set()
        ledger.go.set()
        dfk.cleanup()


def test_tries_the_recording_process_had_not_journaled_when_it_died_are_recorded_by_the_end_of_the_run(workdir, caplog):
    """Why the end of the run waits for the recording process rather than for the spool alone:
    until then Parsl's process keeps every report not journaled, and records it itself if the
    recording process dies (here: stopped, then killed with SIGKILL, 20 tries unjournaled)."""
    db = workdir / "ledger.db"
    ledger = QuickLedger(f"sqlite:///{db}", spool=str(workdir / "spool"))
    config = Config(executors=[ledger.wrap(ThreadPoolExecutor(label="threads", max_threads=2))],
                    memoizer=ledger.memoizer(), usage_tracking=0, run_dir=str(workdir / "runinfo"))
    app = python_app(double)
    dfk = parsl.load(config)
    try:
        assert app(0).result() == 0
        first_try_journaled(ledger, db, dfk.run_id)
        child = ledger.capture.child_pid
        assert child is not None
        os.kill(child, signal.SIGSTOP)
        try:
            assert [app(i).result() for i in range(1, TRIES + 1)] == [2 * i for i in range(1, TRIES + 1)]
        finally:
            os.kill(child, signal.SIGKILL)  # a stopped process dies of it too
    finally:
        dfk.cleanup()
    assert records_of(db, dfk.run_id) == TRIES + 1  # in the ledger when cleanup returns
    lost = [r.getMessage() for r in caplog.records if "had not journaled" in r.getMessage()]
    assert lost and f" {TRIES} task(s)" in lost[0], lost


def write_double(x: int, outputs: Any = ()) -> int:
    with open(outputs[0].filepath, "w") as out:
        out.write(f"{2 * x}\n")
    return 2 * x


def _stopped_run(workdir: Path) -> tuple[ParslLedger, int, str]:
    """A run whose recording process is stopped after its first try; TRIES tries follow, and
    one more that writes a file (its record holds the file's digest, hashed in whichever
    process records it), and ``dfk.cleanup()`` gives up on it after QUICK_SHIP_WAIT. (The ledger,
    the stopped pid, the run.)"""
    ledger = QuickLedger(f"sqlite:///{workdir / 'ledger.db'}", spool=str(workdir / "spool"))
    config = Config(executors=[ledger.wrap(ThreadPoolExecutor(label="threads", max_threads=2))],
                    memoizer=ledger.memoizer(), usage_tracking=0, run_dir=str(workdir / "runinfo"))
    app = python_app(double)
    dfk = parsl.load(config)
    try:
        assert app(0).result() == 0
        first_try_journaled(ledger, workdir / "ledger.db", dfk.run_id)
        child = ledger.capture.child_pid
        assert child is not None
        os.kill(child, signal.SIGSTOP)
        assert [app(i).result() for i in range(1, TRIES + 1)] == [2 * i for i in range(1, TRIES + 1)]
        from parsl.data_provider.files import File

        assert python_app(write_double)(21, outputs=[File(str(workdir / "out.txt"))]).result() == 42
    finally:
        dfk.cleanup()
    return ledger, child, dfk.run_id


#: The task ids of every try of a stopped run.
ALL_TRIES = sorted(str(i) for i in range(TRIES + 2))


def _wait_for_the_end_of(capture: object) -> None:
    """The shared recording process is ended once no DataFlowKernel has used it for
    IDLE_SECONDS; that end waits END_WAIT for it, gives up, and closes Parsl's side."""
    from lineage_ledger_parsl import _shared

    deadline = time.monotonic() + RESUMED_BOUND_S
    while True:
        with _shared._lock:
            ended = capture not in _shared._captures.values() and not _shared._ending
        if ended:
            return
        assert time.monotonic() < deadline, "the idle recording process was never ended"
        time.sleep(0.1)


def _ship(workdir: Path) -> None:
    """``lineage-ledger spool ship``, as the warning says; it takes what dead processes left."""
    import subprocess
    import sys

    shipped = subprocess.run(
        [sys.executable, "-m", "lineage_ledger", "spool", "ship", "--ledger", f"sqlite:///{workdir / 'ledger.db'}",
         "--spool", str(workdir / "spool")], capture_output=True, text=True, timeout=120)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr


def tries_of(db: Path, run_id: str) -> list[str]:
    """The task ids of this run's records, one per record, sorted."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body FROM ll_records WHERE run_id = ?", (run_id,)).fetchall()
    import json

    return sorted(json.loads(bytes(body) if not isinstance(body, str) else body)["task_id"] for (body,) in rows)


def test_tries_are_not_lost_when_the_end_gives_up_on_a_recording_process_that_then_dies(workdir, caplog, quick_end):
    """The end of the recording process gives up on it (stopped: it journals nothing), and
    it is then killed. Its tries must still reach the ledger, each once: before, Parsl's
    process forgot the reports it had not journaled when it gave up, and the kill lost all
    TRIES of them (only the try before the stop was recorded)."""
    ledger, child, run_id = _stopped_run(workdir)
    capture = ledger.capture
    try:
        _wait_for_the_end_of(capture)
        assert ledger.capture.child_pid is None  # Parsl's process has let it go
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)  # our child: reaped, so it is gone for sure
    (told,) = _journaled_here(caplog)
    assert f"the {TRIES + 1} task(s)" in told, told
    _ship(workdir)
    assert tries_of(workdir / "ledger.db", run_id) == ALL_TRIES
    # The kill, after the end let it go, is no loss to report, and nothing was reported lost.
    assert not [r for r in caplog.records if "had not journaled and all later" in r.getMessage()]
    assert not [r for r in caplog.records if "not recorded" in r.getMessage()]


def _journaled_here(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "it had not journaled are journaled here as well" in r.getMessage()]


def test_tries_journaled_by_both_processes_are_in_the_ledger_once(workdir, caplog, quick_end):
    """Given up on, the stopped recording process is resumed instead of killed: Parsl's
    process has journaled its tries (they are in the ledger before it resumes), and it
    journals and ships the same tries again. A record is built the same from the same
    report in either process, so it has one id, and the ledger keeps each try once."""
    ledger, child, run_id = _stopped_run(workdir)
    try:
        _wait_for_the_end_of(ledger.capture)
        (told,) = _journaled_here(caplog)
        assert f"the {TRIES + 1} task(s)" in told, told
        _ship(workdir)  # whatever Parsl's process had not shipped yet; the stopped one ships nothing
        assert tries_of(workdir / "ledger.db", run_id) == ALL_TRIES
    finally:
        os.kill(child, signal.SIGCONT)
    _, status = os.waitpid(child, 0)  # it takes the rest of its ring, records, ships and exits
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    _ship(workdir)  # what it left in the spool, if anything
    assert tries_of(workdir / "ledger.db", run_id) == ALL_TRIES
