"""Journal only (``ship=False``): what the Airflow plugin's task processes use when the
machine's shipper ships the spool. The record is durable in the spool, the process never
waits for the back-end (not even at interpreter exit), and another process ships it.

Real SQLite files, real processes, the ``lineage-ledger spool`` CLI; no Airflow needed.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow
from tests.conftest import run_cli
from tests.support.factories import make_record

CHILD = """
import sys, threading
from lineage_ledger import TaskCapture, TaskRun, utcnow
url, spool, ship = sys.argv[1], sys.argv[2], sys.argv[3] == "ship"
# exit_timeout 120: a capture that ships would wait that long for the locked ledger at exit.
capture = TaskCapture(url, engine="journal-test", spool=spool, ship=ship, recorder_options={"exit_timeout": 120})
now = utcnow()
record_id = capture.record_now(TaskRun(task_id="t1", task_name="step", status="succeeded", started=now, ended=now,
                                       run_id="journal-run"))
print(record_id, sorted(t.name for t in threading.enumerate()))
"""


def _child(url: str, spool: str, mode: str, cwd, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, url, spool, mode], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_a_journal_only_capture_exits_while_the_ledger_is_locked_and_is_shipped_later(tmp_path, url, spool):
    open_ledger(url, spool=str(tmp_path / "other-spool")).close()  # the schema, before the lock
    lock = sqlite3.connect(tmp_path / "ledger.db", timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        # Ends at once although the ledger is locked: nothing in it ships, not even at exit.
        # (A shipping capture waits for the lock at exit, up to exit_timeout: 120 s here.)
        child = _child(url, spool, "journal", tmp_path, timeout=60)
        assert child.returncode == 0, child.stderr
        record_id, threads = child.stdout.split(" ", 1)
        assert len(record_id) == 64
        assert "lineage-ledger-recorder" not in threads  # no shipping thread was started
        assert "not shipped" not in child.stderr  # and nothing warned about what it left
        status = run_cli("spool", "status", "--spool", spool, "--json", cwd=tmp_path, check_rc=0)
        (waiting,) = [item for item in json.loads(status.stdout) if item["records"]]
        assert waiting["records"] == 1 and waiting["live"] == 0  # synced, its lock let go
    finally:
        lock.rollback()
        lock.close()
    shipped = run_cli("spool", "ship", "--ledger", url, "--spool", spool, cwd=tmp_path, check_rc=0)
    assert "shipped 1 record(s)" in shipped.stderr
    logged = run_cli("log", "--ledger", url, "--run", "journal-run", "--json", cwd=tmp_path, check_rc=0)
    (entry,) = [json.loads(line) for line in logged.stdout.splitlines() if line.strip()]
    assert entry["id"] == record_id and entry["engine"] == "journal-test"


def test_a_shipping_capture_waits_for_the_locked_ledger_at_exit(tmp_path, url, spool):
    """The contrast that makes the test above mean something: the default capture does wait."""
    open_ledger(url, spool=str(tmp_path / "other-spool")).close()
    lock = sqlite3.connect(tmp_path / "ledger.db", timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, url, spool, "ship"], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list((tmp_path / "spool").glob("*/*.log")) and time.monotonic() < deadline:
            time.sleep(0.1)  # journaled: it now waits at exit to ship it
        time.sleep(2)
        assert child.poll() is None, "the shipping capture ended while the ledger was locked"
    finally:
        lock.rollback()
        lock.close()
    out, err = child.communicate(timeout=60)  # ships once the lock is gone, then ends
    assert child.returncode == 0, err
    assert "lineage-ledger-recorder" in out
    logged = run_cli("log", "--ledger", url, "--run", "journal-run", "--json", cwd=tmp_path, check_rc=0)
    assert len([line for line in logged.stdout.splitlines() if line.strip()]) == 1


def test_a_journal_only_recorder_never_ships_and_leaves_its_segment_for_replay(tmp_path, url, spool):
    ledger = open_ledger(url, spool=spool)
    before = {t.ident for t in threading.enumerate()}
    recorder = ledger.recorder(ship=False)
    record_id = recorder.record(make_record(7, run_id="journal-run"))
    # no worker thread (<=: a thread an earlier test left may end meanwhile)
    assert {t.ident for t in threading.enumerate()} <= before
    assert recorder.flush(timeout=0) is True  # synced; nothing of its own to wait for
    assert recorder.pending == 1
    time.sleep(0.3)
    assert ledger.run("journal-run") == []  # nothing was shipped
    assert recorder.close() is True
    segments = list((tmp_path / "spool").glob("*/*.log"))
    assert len(segments) == 1 and segments[0].stat().st_size > 0
    ledger.close()
    with open_ledger(url, spool=spool) as reopened:  # the next open ships what was left
        (shipped,) = reopened.run("journal-run")
        assert shipped.record.task_id == "task-7" and shipped.id == record_id
    assert not list((tmp_path / "spool").glob("*/*.log"))


def test_an_empty_journal_only_capture_leaves_no_segment(tmp_path, url, spool):
    capture = TaskCapture(url, engine="journal-test", spool=spool, ship=False)
    capture.open()
    assert capture.ship is False
    assert capture.close(timeout=0) is True
    assert not list((tmp_path / "spool").glob("*/*.log"))
    capture = TaskCapture(url, engine="journal-test", spool=spool, ship=False)
    now = utcnow()
    capture.record_now(TaskRun(task_id="t", task_name="n", status="succeeded", started=now, ended=now))
    assert capture.close(timeout=0) is True
    assert len(list((tmp_path / "spool").glob("*/*.log"))) == 1


def test_a_journal_only_recorder_keeps_no_records_in_memory_and_has_no_pending_limit(tmp_path, url, spool):
    """A long-lived journal-only process (its records shipped by another) never hits
    max_pending, which bounds what a shipping recorder holds while its back-end is away."""
    ledger = open_ledger(url, spool=spool)
    recorder = ledger.recorder(ship=False, batch_size=1, max_pending=2)
    ids = [recorder.record(make_record(i, run_id="journal-run")) for i in range(5)]
    assert recorder.pending == 5
    assert recorder.close() is True
    ledger.close()
    (segment,) = (tmp_path / "spool").glob("*/*.log")
    assert len(segment.read_bytes().splitlines()) == 5
    with open_ledger(url, spool=spool) as reopened:
        assert [r.id for r in reopened.run("journal-run")] == ids
