"""``TaskCapture.record_now`` (the path of a process that ends with ``os._exit``: Airflow's task
processes) when the spool cannot take a record: a real full tmpfs (root only, else skipped),
a real SQLite ledger, its write lock held by another process.

The record goes straight into the ledger, as the capture's worker sends it since 20fd9e0;
where the ledger does not answer within ``straight_wait``, the task is said not recorded and
the call returns, rather than waiting out SQLite's 60 s lock timeout.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow
from tests.support.faults import fill_disk, hold_write_lock, small_tmpfs


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path / "small"``, filled to the last page (root only)."""
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        (mount / "spool").mkdir()
        fill_disk(mount / "filler")
        yield mount


def _names(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=60)
    try:
        rows = conn.execute("SELECT body FROM ll_records ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(bytes(body) if not isinstance(body, str) else body)["task_name"] for (body,) in rows]


def _run(name: str, out: Path) -> TaskRun:
    out.write_text(name)
    now = utcnow()
    return TaskRun(task_id=name, task_name=name, status="succeeded", started=now, ended=now, outputs=[str(out)])


def test_record_now_puts_what_the_full_spool_refuses_straight_into_the_ledger(tmp_path, full_disk, caplog):
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(url, spool=str(tmp_path / "other-spool")).close()
    capture = TaskCapture(url, engine="test", spool=str(full_disk / "spool"), ship=False)
    try:
        with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
            record_id = capture.record_now(_run("kept", tmp_path / "kept.txt"), straight_wait=30)
    finally:
        capture.close(timeout=30)
    assert record_id is not None and capture.failures == 0
    assert "No space left on device" in caplog.text and "straight into the ledger" in caplog.text
    assert _names(tmp_path / "ledger.db") == ["kept"]


def test_record_now_says_a_record_neither_takes_is_lost_within_its_wait(tmp_path, full_disk, caplog):
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(url, spool=str(tmp_path / "other-spool")).close()
    holder = hold_write_lock(tmp_path / "ledger.db")
    capture = TaskCapture(url, engine="test", spool=str(full_disk / "spool"), ship=False)
    try:
        with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
            # Without the bound it waited SQLite's 60 s, then said "database is locked".
            record_id = capture.record_now(_run("lost", tmp_path / "lost.txt"), straight_wait=2)
        assert record_id is None and capture.failures == 1
        assert "No space left on device" in caplog.text and "did not take it either" in caplog.text
        assert "no answer within 2s" in caplog.text
        # (Read while the lock is held: the append goes on in its thread, and in a process
        # that lives on it may still land once the lock is let go.)
        assert _names(tmp_path / "ledger.db") == []
    finally:
        holder.communicate("")
        capture.close(timeout=30)
