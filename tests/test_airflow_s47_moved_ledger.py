"""A second sweep owed on the ledger a site moves from, under the real scheduler (LocalExecutor).

The spool's disk is full and the SQLite ledger locked as a task ends: its record finds no
durable place, the run's sweep finds the task process still alive (waiting for the ledger),
and a second sweep of the run is owed; the scheduler notes it beside the ledger's try markers
and is killed with -9 before it does it. The task process gives its try up as it ends.
Then the site moves its ledger: the scheduler (and DAG processor) start on another one. The
note was read beside the new ledger only, so the sweep was never done and the try's record
was lost, recorded nowhere. Now the new scheduler does it for the ledger it was owed on: the
try is recorded into the old ledger, with the run's other records, and its log says so; the
new ledger gets nothing of that run.

The deployment and its helpers are ``tests/test_airflow_scheduler_faults.py``'s (a tmpfs
spool the tests fill; root only, else skipped).
"""

from __future__ import annotations

import json
import signal
import sqlite3

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.test_airflow_scheduler_faults import (  # noqa: F401 - site: the module's deployment
    _has_open,
    _pid_of,
    free_the_disk,
    hooks_done,
    pytestmark,
    site,
    sqlite_path,
    wait_for_tries,
)


def test_a_second_sweep_owed_on_the_ledger_the_site_moved_from_is_done_there(site, tmp_path):  # noqa: F811
    new_url = f"sqlite:///{tmp_path}/new-ledger.db"
    open_ledger(new_url, spool=str(tmp_path / "empty-spool")).close()
    run_id = "moved-1"
    lock = sqlite3.connect(sqlite_path(site), timeout=5, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        site.trigger("fault_fill", run_id)
        assert site.wait_for_run("fault_fill", run_id) == "success"
        pid = _pid_of(site, "fault_fill", run_id, "fill")
        assert pid and _has_open(pid, sqlite_path(site)), "the task process no longer waits for the ledger"
        site.kill("scheduler", group=False)  # its sweep of the run is done; the second one is owed
        text = hooks_done(site, "fault_fill", run_id, "fill")
        assert "NOT recorded" in text, text[-3000:]
    finally:
        free_the_disk(site)
        lock.rollback()
        lock.close()
    site.kill("dag-processor")  # the site moves its ledger: both start on the new one
    offset = (site.home / "scheduler.log").stat().st_size
    try:
        site.start("dag-processor", "scheduler", extra_env={"AIRFLOW__LINEAGE_LEDGER__URL": new_url})
        # Before: never (the try's record was lost); now in the old ledger, by the new scheduler.
        record = wait_for_tries(site, "fault_fill", run_id, timeout=180)[("fill", 1)]
        assert record["extra"]["airflow"]["reported_by"] == "scheduler" and record["status"] == "succeeded"
        assert str(site.data / "fill.txt") in record["outputs"]

        def said() -> str | None:
            with open(site.home / "scheduler.log", "rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
            return text if "resumed the sweeps a scheduler before this one owed" in text else None

        log = site.wait_for(said, "the scheduler to resume the sweeps owed", timeout=120)
        assert f"the site moved its ledger: recorded 1 tries of fault_fill/{run_id}" in log, log[-3000:]
        assert str(sqlite_path(site)) in log.split("the site moved its ledger", 1)[1], log[-3000:]
        # Nothing of the run in the new ledger: its records stay together in the old one.
        run_cli("spool", "ship", "--ledger", new_url, "--spool", site.spool, "--timeout", "60", cwd=site.home,
                check_rc=0)
        listed = run_cli("log", "--ledger", new_url, "--json", "-n", "1000", cwd=site.home)
        runs = {json.loads(line)["run_id"] for line in listed.stdout.splitlines() if line.strip()}
        assert f"fault_fill/{run_id}" not in runs, runs
    finally:
        for name in ("scheduler", "dag-processor"):
            site.kill(name, signal.SIGKILL)
        site.start("dag-processor", "scheduler")  # back on the module's ledger for the other tests
