"""The machine's spool shipper of the Airflow plugin, on real spool files and a real SQLite
ledger: it fsyncs what journal-only task processes left (they do not), and ships it.

Task processes are stood in for by journal-only captures in this process; the whole path
under the real scheduler is in ``tests/test_airflow_deployment.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lineage_ledger import TaskCapture, TaskRun, utcnow
from tests.conftest import run_cli
from tests.support.airflow_site import private_airflow_home

private_airflow_home()  # the settings read Airflow's configuration: never with ~/airflow
pytest.importorskip("lineage_ledger_airflow", reason="the Airflow plugin is not installed (make install)")

from lineage_ledger_airflow import _shipper  # noqa: E402


def _task(name: str) -> TaskRun:
    now = utcnow()
    return TaskRun(task_id=name, task_name=name, status="succeeded", started=now, ended=now, run_id="shipper-run")


def test_the_shipper_fsyncs_new_and_grown_segments_once_each_and_ships_them(tmp_path, url, spool, monkeypatch):
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__URL", url)
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__SPOOL", spool)
    finished = TaskCapture(url, engine="airflow", spool=spool, ship=False)  # a task process that ended
    finished.record_now(_task("ended"))
    finished.close(timeout=0)
    shipper = _shipper._Shipper()
    assert shipper.sync_waiting() == 1 and shipper.synced_total == 1
    assert shipper.sync_waiting() == 1 and shipper.synced_total == 1  # unchanged: not synced again

    running = TaskCapture(url, engine="airflow", spool=spool, ship=False)  # one still running
    running.record_now(_task("first"))
    assert shipper.sync_waiting() == 2 and shipper.synced_total == 2
    running.record_now(_task("second"))  # its segment grew
    assert shipper.sync_waiting() == 2 and shipper.synced_total == 3
    running.close(timeout=0)

    shipper.ship()
    assert shipper.sync_waiting() == 0 and shipper._synced == {}  # shipped, forgotten
    logged = run_cli("log", "--ledger", url, "--run", "shipper-run", "--json", cwd=tmp_path, check_rc=0)
    names = sorted(json.loads(line)["task_name"] for line in logged.stdout.splitlines() if line.strip())
    assert names == ["ended", "first", "second"]
    shipper._reopen()  # closes the ledger it kept open between rounds


HOLDER = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from lineage_ledger_airflow import _shipper
_shipper.start()
if sys.argv[1] == "fork":  # a LocalExecutor worker, forked once the shipper holds the lease
    while "ships the spool" not in open(sys.argv[2]).read():
        time.sleep(0.1)
    if os.fork() == 0:
        time.sleep(120)
        os._exit(0)
    print("forked its child", flush=True)
time.sleep(120)
"""


def _start_holder(mode: str, log_path, env: dict) -> subprocess.Popen:
    log = open(log_path, "w")
    try:
        return subprocess.Popen([sys.executable, "-c", HOLDER, mode, str(log_path)], stdout=log, stderr=log,
                                env=env, start_new_session=True)
    finally:
        log.close()


def _wait_for_text(path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def test_a_killed_shippers_forked_children_do_not_keep_its_lease(tmp_path, url, spool):
    """``kill -9`` of the scheduler alone leaves its LocalExecutor workers running. They are
    forks of it: had they kept its lease, no process would ship and none could take over."""
    env = {**os.environ, "AIRFLOW__LINEAGE_LEDGER__URL": url, "AIRFLOW__LINEAGE_LEDGER__SPOOL": spool}
    first = _start_holder("fork", tmp_path / "first.log", env)
    successor = None
    try:
        assert _wait_for_text(tmp_path / "first.log", "ships the spool", 60), (tmp_path / "first.log").read_text()
        assert _wait_for_text(tmp_path / "first.log", "forked its child", 60), (tmp_path / "first.log").read_text()
        first.kill()  # the holder alone; its child lives on, as the orphaned workers do
        first.wait()
        successor = _start_holder("plain", tmp_path / "successor.log", env)
        assert _wait_for_text(tmp_path / "successor.log", f"(pid {successor.pid}) ships the spool", 30), \
            (tmp_path / "successor.log").read_text()
    finally:
        for process in (first, successor):
            if process is not None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the orphan too
                except ProcessLookupError:
                    pass
                process.wait()
