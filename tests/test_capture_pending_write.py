"""The core's handle on a straight write that outlives ``record_now``'s wait
(:class:`RecordPending`, :class:`PendingWrite`): the spool a real full tmpfs (root only,
else skipped), the ledger a real SQLite file whose write lock another process holds.

The write goes on in its thread and lands once the lock is let go: the caller that asked
for the handle (``raise_pending``) sees it land, or be refused; the default capture says
*not recorded yet*, never a final "could not record", and then what became of it.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lineage_ledger import PendingWrite, RecordPending, SpoolError, TaskCapture, TaskRun, open_ledger, utcnow
from tests.support.faults import hold_write_lock, spool_on_a_full_disk


@pytest.fixture
def full_spool(tmp_path):
    """A spool on a 1 MiB tmpfs filled to the last page (root only)."""
    with spool_on_a_full_disk(tmp_path) as spool:
        yield spool


@pytest.fixture
def ledger_url(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(url, spool=str(tmp_path / "other-spool")).close()
    return url


def _ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=60)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM ll_records ORDER BY seq")]
    finally:
        conn.close()


def _run(name: str) -> TaskRun:
    now = utcnow()
    return TaskRun(task_id=name, task_name=name, status="succeeded", started=now, ended=now)


def test_the_caller_gets_the_write_and_sees_it_land(tmp_path, full_spool, ledger_url, caplog):
    holder = hold_write_lock(tmp_path / "ledger.db")
    capture = TaskCapture(ledger_url, engine="test", spool=str(full_spool), ship=False)
    ended: list[PendingWrite] = []
    landed = threading.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
            with pytest.raises(RecordPending) as caught:
                capture.record_now(_run("late"), straight_wait=1, raise_pending=True)
            write = caught.value.write
            assert isinstance(caught.value, SpoolError)  # what a raise_errors caller caught before
            assert "No space left on device" in str(caught.value) and "no answer within 1s" in str(caught.value)
            assert not write.done() and write.error is None and not write.wait(0.2)
            write.add_done_callback(lambda w: (ended.append(w), landed.set()))
            assert ended == [] and _ids(tmp_path / "ledger.db") == []  # still held: nothing landed
            # The caller speaks of it: the core said nothing final, and counted nothing.
            assert "could not record" not in caplog.text and capture.failures == 0
    finally:
        holder.communicate("")
    assert write.wait(60) and landed.wait(60)
    assert write.error is None and ended == [write]
    assert write.record_id in _ids(tmp_path / "ledger.db")
    late: list[PendingWrite] = []
    write.add_done_callback(late.append)  # added after the end: called at once
    assert late == [write]
    capture.close(timeout=30)


def test_the_default_capture_says_not_recorded_yet_then_recorded_after_all(tmp_path, full_spool, ledger_url,
                                                                             caplog):
    holder = hold_write_lock(tmp_path / "ledger.db")
    capture = TaskCapture(ledger_url, engine="test", spool=str(full_spool), ship=False)
    try:
        with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
            assert capture.record_now(_run("late"), straight_wait=1) is None
            said = [(r.levelname, r.getMessage()) for r in caplog.records if "task late" in r.getMessage()]
            assert [(level, m.split(":")[1].strip()) for level, m in said] == [
                ("WARNING", "task late (late) is not recorded yet")], said
            assert "could not record" not in caplog.text and capture.failures == 1
    finally:
        holder.communicate("")
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        capture.close(timeout=30)
        for _ in range(600):  # the write's thread says it when the lock is let go
            if "task late (late) is recorded after all" in caplog.text:
                break
            time.sleep(0.1)
    assert "task late (late) is recorded after all" in caplog.text and capture.failures == 0
    assert len(_ids(tmp_path / "ledger.db")) == 1


DROP_WHEN_TOLD = ("import sqlite3, sys\n"
                  "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                  "c.execute('BEGIN IMMEDIATE')\n"
                  "print('locked', flush=True)\n"
                  "sys.stdin.readline()\n"
                  "c.execute('DROP TABLE ll_records')\n"
                  "c.execute('COMMIT')\n")


def test_a_write_the_ledger_refuses_at_last_is_said_not_recorded(tmp_path, full_spool, ledger_url, caplog):
    # Another process holds the lock, then drops the records' table: the waiting write fails.
    holder = subprocess.Popen([sys.executable, "-c", DROP_WHEN_TOLD, str(tmp_path / "ledger.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    capture = TaskCapture(ledger_url, engine="test", spool=str(full_spool), ship=False)
    try:
        with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
            assert capture.record_now(_run("doomed"), straight_wait=1) is None
            assert "task doomed (doomed) is not recorded yet" in caplog.text
            with pytest.raises(RecordPending) as caught:
                capture.record_now(_run("watched"), straight_wait=1, raise_pending=True)
    finally:
        holder.communicate("go\n")
    write = caught.value.write
    assert write.wait(60) and write.error is not None and "ll_records" in str(write.error)
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        capture.close(timeout=30)
        for _ in range(600):
            if "task doomed (doomed) is NOT recorded" in caplog.text:
                break
            time.sleep(0.1)
    lost = [r for r in caplog.records if "task doomed (doomed) is NOT recorded" in r.getMessage()]
    assert [r.levelname for r in lost] == ["ERROR"], caplog.text
    assert "is recorded after all" not in caplog.text and capture.failures == 1
