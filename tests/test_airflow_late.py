"""A try's record whose straight write outlives the plugin's wait (``_late``), in process:
a real full tmpfs as the spool (root only, else skipped), a real SQLite ledger whose write
lock another process holds, a real fork.

Under the scheduler this is ``tests/test_airflow_scheduler_faults.py -k late_record``; here
the two corners it cannot reach on purpose: a forked child (a LocalExecutor worker and its
task processes are forks of the scheduler) must not call its parent's pending write lost, nor
unclaim that try; and a write that lands after the process's last hook called it lost is
said to have landed after all.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from lineage_ledger import RecordPending, TaskCapture, TaskRun, open_ledger, utcnow
from tests.support.airflow_site import airflow_installed, private_airflow_home
from tests.support.faults import spool_on_a_full_disk

private_airflow_home()  # the plugin's package imports Airflow: never with ~/airflow

pytestmark = pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed")

HOLD = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def full_spool(tmp_path):
    with spool_on_a_full_disk(tmp_path) as spool:
        yield spool


def test_a_late_write_is_not_the_forks_and_is_said_when_it_lands_after_all(tmp_path, full_spool, caplog):
    from lineage_ledger_airflow import _late

    db = tmp_path / "ledger.db"
    open_ledger(f"sqlite:///{db}", spool=str(tmp_path / "other-spool")).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capture = TaskCapture(f"sqlite:///{db}", engine="airflow", spool=str(full_spool), ship=False)
        now = utcnow()
        run = TaskRun(task_id="d/r/late", task_name="late", status="succeeded", started=now, ended=now)
        caplog.set_level(logging.INFO, logger="lineage_ledger.airflow")
        with pytest.raises(RecordPending) as pending:  # the core's handle, as _tries takes it
            capture.record_now(run, straight_wait=1, raise_pending=True)
        write = pending.value.write
        assert not write.done()
        unclaimed: list[int] = []
        _late.await_outcome(("d/r/late", 1), "d/r/late", write, 1, lambda: unclaimed.append(os.getpid()))
        read, written = os.pipe()
        child = os.fork()
        if child == 0:  # a worker forked meanwhile: its last hook says nothing of the parent's write
            _late.give_up()
            os.write(written, f"{len(_late._pending)} {unclaimed}".encode())
            os._exit(0)
        os.close(written)
        os.waitpid(child, 0)
        assert os.read(read, 100).decode() == "0 []"
        os.close(read)
        _late.give_up()  # this process's last hook: the write has not ended
        assert unclaimed == [os.getpid()]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    deadline = time.monotonic() + 60
    while not write.done() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert write.done() and write.error is None
    said = [r.getMessage() for r in caplog.records if r.name == "lineage_ledger.airflow" and "d/r/late" in r.getMessage()]
    assert [m.split(":")[1].strip() for m in said] == [
        "try 1 of d/r/late is not recorded yet",
        "try 1 of d/r/late is NOT recorded",
        "try 1 of d/r/late is recorded after all, after this log said it was not",
    ], said
    conn = sqlite3.connect(db)
    try:
        bodies = [json.loads(bytes(body) if not isinstance(body, str) else body)
                  for (body,) in conn.execute("SELECT body FROM ll_records").fetchall()]
        assert [b["task_id"] for b in bodies if b.get("task_id") == "d/r/late"] == ["d/r/late"]
    finally:
        conn.close()
