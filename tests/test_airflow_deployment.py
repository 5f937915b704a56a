"""The Airflow plugin under a real deployment: ``airflow scheduler``, ``airflow dag-processor``
and ``airflow api-server`` as separate processes on loopback, LocalExecutor, a PostgreSQL
metadata database started by the tests, and a PostgreSQL ledger the tests stop and start.

Airflow's own account of what ran (``task_instance`` and ``task_instance_history`` in the
metadata database) is compared with the ledger: every try has exactly one record, under its
own try's ids. One deployment serves the module (starting one takes about 40 s).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from datetime import datetime

import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.airflow_deploy import Deployment, airflow_key
from tests.support.airflow_site import airflow_installed
from tests.support.postgres import own_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]


#: A producer that writes new bytes every run, and a strict reader right after it.
FRESH_DAG = '''
import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()

with DAG(dag_id="deploy_fresh", schedule=None, catchup=False):
    make = BashOperator(task_id="make", bash_command=f"date +%s%N > '{DATA}/fresh.txt'",
                        outlets=[Asset(uri=f"file://{DATA}/fresh.txt")])
    use = LedgerOperator(task_id="use", policy="strict", inputs=[str(DATA / "fresh.txt")],
                         outputs=[str(DATA / "fresh-used.txt")],
                         bash_command="cp '{{ task.inputs[0] }}' '{{ task.outputs[0] }}'")
    make >> use

with DAG(dag_id="deploy_clear", schedule=None, catchup=False):
    made = BashOperator(task_id="make", bash_command=f"echo made > '{DATA}/clear.txt'",
                        outlets=[Asset(uri=f"file://{DATA}/clear.txt")])
    read = LedgerOperator(task_id="read", policy="strict", inputs=[str(DATA / "clear.txt")],
                          outputs=[str(DATA / "clear-read.txt")],
                          bash_command="cp '{{ task.inputs[0] }}' '{{ task.outputs[0] }}'")
    made >> read

with DAG(dag_id="deploy_move", schedule=None, catchup=False):
    # "held" waits for the test's go-ahead, so the site can move its ledger mid-run.
    first = BashOperator(task_id="first", bash_command=f"echo first > '{DATA}/move-first.txt'",
                         outlets=[Asset(uri=f"file://{DATA}/move-first.txt")])
    held = BashOperator(task_id="held", outlets=[Asset(uri=f"file://{DATA}/move-held.txt")],
                        bash_command=f"for i in $(seq 900); do [ -e '{DATA}/move-go' ] && break; sleep 0.2; done; "
                                     f"echo held > '{DATA}/move-held.txt'")
    last = BashOperator(task_id="last", bash_command=f"echo last > '{DATA}/move-last.txt'",
                        outlets=[Asset(uri=f"file://{DATA}/move-last.txt")])
    first >> held >> last
'''


@pytest.fixture(scope="module")
def ledger_server():
    with own_server() as server:
        yield server


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, postgres_server, ledger_server):
    base = tmp_path_factory.mktemp("airflow-deployment")
    site = Deployment(home=base / "home", metadata_dsn=postgres_server.create_database(),
                      ledger_url=ledger_server.create_database(), spool=base / "spool", data=base / "data")
    site.data.mkdir(parents=True)
    (site.data / "seed.txt").write_text("seed\n")
    site.configure({"XDG_STATE_HOME": str(base / "state")})
    (site.home / "dags" / "deploy_fresh.py").write_text(FRESH_DAG)
    site.migrate()
    site.start()
    try:
        site.wait_for_dags(["deploy_tries", "deploy_kill", "deploy_heartbeat", "deploy_many", "deploy_fresh",
                            "deploy_clear", "deploy_move"])
        yield site
    finally:
        site.stop()


def ledger_records(site: Deployment, dag_id: str, run_id: str, url: str | None = None) -> list[dict]:
    """The run's records as ``lineage-ledger log --json`` gives them, one JSON object a line
    (it reads; it ships nothing). None yet is ``[]``: ``log --run`` of a run no record
    describes is exit 2 since f84c16d, which the waits here must read as "not shipped yet"."""
    result = run_cli("log", "--ledger", url or site.ledger_url, "--run", f"{dag_id}/{run_id}", "--json",
                     "-n", "1000", cwd=site.home)
    if result.returncode == 2 and "no record in the ledger describes run" in result.stderr:
        return []
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def ship(site: Deployment, url: str | None = None) -> None:
    run_cli("spool", "ship", "--ledger", url or site.ledger_url, "--spool", site.spool, "--timeout", "60",
            cwd=site.home, check_rc=0)


class Rec:
    def __init__(self, entry: dict) -> None:
        self.entry = entry
        self.extra = entry.get("extra") or {}
        self.airflow = self.extra["airflow"]

    def __getattr__(self, name: str):
        return self.entry[name]


def by_try(records: list[dict]) -> dict[tuple, list[Rec]]:
    grouped: dict[tuple, list[Rec]] = {}
    for entry in records:
        rec = Rec(entry)
        grouped.setdefault(airflow_key(rec), []).append(rec)
    return grouped


def assert_every_try_recorded_once(site: Deployment, dag_id: str, run_id: str, url: str | None = None) -> dict:
    """Every try in the metadata database has exactly one record, carrying its own try's id."""
    tries = site.tries(dag_id, run_id)
    assert tries, f"no tries of {dag_id}/{run_id} in the metadata database"
    deadline = time.monotonic() + 30
    while True:  # the scheduler's records of a run's end are shipped in the background
        records = by_try(ledger_records(site, dag_id, run_id, url))
        if {t.key for t in tries} <= set(records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # each look is a CLI process (0.3 s of CPU): not at the default quarter second
    missing = [t.key for t in tries if t.key not in records]
    assert not missing, f"tries without a record: {missing}"
    duplicated = {key: len(recs) for key, recs in records.items() if len(recs) > 1}
    assert not duplicated, f"tries recorded more than once: {duplicated}"
    assert set(records) == {t.key for t in tries}, "records of tries the metadata database does not have"
    for t in tries:
        (rec,) = records[t.key]
        assert rec.airflow["ti_id"] == t.ti_id, (t, rec.airflow)
        assert rec.attempt == t.try_number
        assert rec.status == ("succeeded" if t.state == "success" else "failed"), (t, rec.status)
    return {key: recs[0] for key, recs in records.items()}


def test_every_try_retries_mapped_empty_and_failed(deployment):
    site = deployment
    doomed = site.data / "doomed.txt"
    doomed.write_text("left by an earlier run\n")  # the failing task never writes it
    # An earlier run's file is older than the try: one written within the second before the
    # try started counted as written by it (the 1 s slack for coarse file-system clocks), and
    # this test failed so when the run started at once (CI of 4abab06).
    earlier = time.time() - 60
    os.utime(doomed, (earlier, earlier))
    site.trigger("deploy_tries", "tries-1")
    assert site.wait_for_run("deploy_tries", "tries-1") == "failed"  # doomed fails
    records = assert_every_try_recorded_once(site, "deploy_tries", "tries-1")

    key = ("deploy_tries", "tries-1")
    assert [records[(*key, "flaky", -1, n)].status for n in (1, 2)] == ["failed", "succeeded"]
    flaky = records[(*key, "flaky", -1, 1)]
    # Said by the task process itself; the scheduler's sweep (a task process killed before it
    # recorded) can only say "failed", all Airflow keeps of a try retried since.
    assert flaky.airflow["state"] == "up_for_retry", (
        flaky.airflow, site.try_log("deploy_tries", "tries-1", "flaky", 1))
    assert {records[(*key, "mapped", i, 1)].task_id for i in range(3)} == {
        f"deploy_tries/tries-1/mapped[{i}]" for i in range(3)}
    # The EmptyOperator never had a task process: the scheduler's sweep recorded it.
    join = records[(*key, "join", -1, 1)]
    assert join.status == "succeeded" and join.airflow["reported_by"] == "scheduler"
    assert join.extra.get("completed_by_scheduler") is True
    # A failed try lists as outputs only what it wrote: not the earlier run's file.
    failed = records[(*key, "doomed", -1, 1)]
    assert failed.status == "failed" and failed.outputs == {}
    assert failed.extra["outputs_not_written"] == [str(doomed)]
    produced = site.data / "produced.txt"
    assert str(produced) in records[(*key, "produce", -1, 1)].outputs
    verified = run_cli("--ledger", site.ledger_url, produced, program="verify-lineage", cwd=site.home)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_kill_9_of_a_task_process(deployment):
    site = deployment
    site.trigger("deploy_kill", "kill-1")
    pid = site.wait_for(lambda: site.task_pid("deploy_kill", "kill-1", "victim"), "the task process's pid")
    time.sleep(1)  # past its start hook
    os.kill(pid, signal.SIGKILL)
    assert site.wait_for_run("deploy_kill", "kill-1") == "success"  # try 2 succeeds
    records = assert_every_try_recorded_once(site, "deploy_kill", "kill-1")
    killed = records[("deploy_kill", "kill-1", "victim", -1, 1)]
    # Its process died: the scheduler reported it (the executor's event, or its end-of-run sweep),
    # with try 1's own task-instance id (checked above), not the retry's.
    assert killed.status == "failed" and killed.airflow["reported_by"] in ("server", "scheduler")
    assert records[("deploy_kill", "kill-1", "victim", -1, 2)].airflow["reported_by"] == "task"


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_heartbeat_timeout_one_record_under_its_own_ids(deployment):
    site = deployment
    # The short timeout for this test's run alone: the deployment's own is long, so that no
    # other test's try is failed by it under a CI's load (a busy task missed 8 s once).
    with site.heartbeat_timeout(8):
        site.trigger("deploy_heartbeat", "hb-1")
        pid = site.wait_for(lambda: site.task_pid("deploy_heartbeat", "hb-1", "silent"), "the task process's pid")
        supervisor = _parent_of(pid)
        try:
            # The task stops its supervisor: no heartbeats. The scheduler fails the try after
            # the timeout (8 s here) and archives it for the retry.
            site.wait_for(lambda: site.query(
                "SELECT 1 FROM task_instance_history WHERE dag_id = 'deploy_heartbeat' AND run_id = 'hb-1'"),
                "the scheduler to fail try 1", timeout=90)
        finally:
            os.kill(supervisor, signal.SIGCONT)  # the task process may now report try 1 too
        assert site.wait_for_run("deploy_heartbeat", "hb-1") == "success"
        # Try 1's own task process may report it as well once resumed (that report must be
        # dropped): once it has ended, whatever it left is shipped before the records are counted.
        site.wait_for(lambda: not _running(pid), "try 1's task process to end", timeout=120)
    ship(site)
    records = assert_every_try_recorded_once(site, "deploy_heartbeat", "hb-1")
    first = records[("deploy_heartbeat", "hb-1", "silent", -1, 1)]
    assert first.status == "failed" and first.airflow["state"] == "up_for_retry"
    (history_id,) = site.query(
        "SELECT CAST(task_instance_id AS text) FROM task_instance_history WHERE dag_id = 'deploy_heartbeat'"
        " AND run_id = 'hb-1' AND try_number = 1")[0]
    assert first.airflow["ti_id"] == history_id  # not try 2's id


def test_ledger_down_while_tasks_finish_records_wait_in_the_spool(deployment, ledger_server):
    site = deployment
    ledger_server.stop()
    try:
        site.trigger("deploy_many", "down-1")
        assert site.wait_for_run("deploy_many", "down-1") == "success"
        # Nothing was killed for overtime, and every try waits in the spool.
        assert [t.state for t in site.tries("deploy_many", "down-1")] == ["success"] * 4
        status = run_cli("spool", "status", "--spool", site.spool, "--json", cwd=site.home, check_rc=0)
        assert sum(item.get("records", 0) for item in json.loads(status.stdout)) >= 4, status.stdout
    finally:
        ledger_server.start()
    ship(site)
    assert_every_try_recorded_once(site, "deploy_many", "down-1")


def test_kill_9_of_the_scheduler(deployment):
    site = deployment
    site.trigger("deploy_tries", "sched-1")
    site.wait_for(lambda: site.query(
        "SELECT 1 FROM task_instance WHERE dag_id = 'deploy_tries' AND run_id = 'sched-1'"
        " AND task_id = 'produce' AND state = 'success'"), "the first task")
    site.kill("scheduler", signal.SIGKILL, group=False)  # kill -9 of the scheduler alone
    time.sleep(2)
    site.start("scheduler")
    assert site.wait_for_run("deploy_tries", "sched-1") == "failed"  # doomed fails, as ever
    assert_every_try_recorded_once(site, "deploy_tries", "sched-1")


def end_of_hooks(log_path) -> float | None:
    """Seconds from the task's "Post Execute" group to the last line its finalize logs
    (after the listener's success hook and ``before_stopping``, just before the process
    exits); None while that line is not in the log (still waiting, or killed)."""
    begun = None
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event = entry.get("event")
        if event == "::group::Post Execute":
            begun = datetime.fromisoformat(entry["timestamp"])
        elif event == "::endgroup::" and begun is not None and entry.get("logger") == "task":
            return (datetime.fromisoformat(entry["timestamp"]) - begun).total_seconds()
    return None


def test_locked_sqlite_ledger_while_tasks_finish(deployment, tmp_path):
    site = deployment
    sqlite_url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(sqlite_url, spool=str(tmp_path / "empty-spool")).close()  # the schema, before the lock
    lock = sqlite3.connect(tmp_path / "ledger.db", timeout=5, check_same_thread=False)
    # The task processes inherit the scheduler's settings; the DAG processor is restarted on
    # the same ledger so that whichever of the two holds the shipper's lease ships it. A task
    # process that waited for the ledger at its end would wait up to flush_timeout (60 s),
    # and Airflow kills it after task_success_overtime (20 s by default, 60 s in these tests).
    on_sqlite = {"AIRFLOW__LINEAGE_LEDGER__URL": sqlite_url, "AIRFLOW__LINEAGE_LEDGER__FLUSH_TIMEOUT": "60"}
    for name in ("scheduler", "dag-processor"):
        site.kill(name, signal.SIGKILL)
    said = resumed_after(site)
    site.start("dag-processor", "scheduler", extra_env=on_sqlite)
    lock.execute("BEGIN EXCLUSIVE")  # the write lock, held until every task process has ended
    try:
        site.trigger("deploy_many", "locked-1")
        assert site.wait_for_run("deploy_many", "locked-1") == "success"
        assert [t.state for t in site.tries("deploy_many", "locked-1")] == ["success"] * 4
        # Airflow's task duration ends before the listener's hooks run (the task runner
        # reports success first), so the task logs tell whether a task process waited for
        # the ledger: each one's hooks must end, and its process with them, under the lock.
        logs = sorted((site.home / "logs").glob("dag_id=deploy_many/run_id=locked-1/task_id=*/attempt=1.log"))
        assert len(logs) == 4
        def all_ended():
            spans = [end_of_hooks(path) for path in logs]
            return None if None in spans else spans

        spans = site.wait_for(all_ended, "every task process to end while the ledger is locked", timeout=60)
        assert max(spans) < 10, spans  # Airflow's default overtime, 20 s, kills a task that waited
        texts = [p.read_text(errors="replace") for p in logs]
        assert not [t for t in texts if "not shipped in time" in t or "overtime" in t]
        assert ledger_records(site, "deploy_many", "locked-1", sqlite_url) == []  # all in the spool
        assert (site.spool / ".airflow-shipper").exists()
    finally:
        lock.rollback()
        lock.close()
    try:
        # The machine's shipper delivers them once the lock is gone (no `spool ship` here).
        assert_every_try_recorded_once(site, "deploy_many", "locked-1", sqlite_url)
        said()  # the scheduler on SQLite has resumed its predecessor's sweeps
    finally:
        for name in ("scheduler", "dag-processor"):
            site.kill(name, signal.SIGKILL)
        said = resumed_after(site)
        site.start("dag-processor", "scheduler")  # back on the PostgreSQL ledger for the other tests
    # A site that moves its ledger: the scheduler started on the new one resumes the sweeps of
    # the runs that ended shortly before (its predecessor may have owed one), and found no try
    # marker of the runs recorded into the other ledger (the markers are kept per ledger). It
    # recorded every try of them again, into this ledger, as the scheduler's report of a try
    # whose task process ended without reporting, listing the files at its outlets as they are
    # now: in PostgreSQL the tries of locked-1 (in SQLite), and in SQLite those of the runs of
    # the tests before this one (in PostgreSQL).
    said()
    ship(site)
    ship(site, sqlite_url)
    assert ledger_records(site, "deploy_many", "locked-1") == []
    listed = run_cli("log", "--ledger", sqlite_url, "--json", "-n", "1000", cwd=site.home, check_rc=0)
    runs = {json.loads(line)["run_id"] for line in listed.stdout.splitlines() if line.strip()}
    assert runs == {"deploy_many/locked-1"}, runs


def resumed_after(site: Deployment):
    """Call before starting a scheduler; the function it returns waits until that scheduler
    has resumed the sweeps its predecessor owed (it says so in its log)."""
    offset = (site.home / "scheduler.log").stat().st_size

    def wait() -> None:
        def said() -> bool:
            with open(site.home / "scheduler.log", "rb") as handle:
                handle.seek(offset)
                return b"resumed the sweeps a scheduler before this one owed" in handle.read()

        site.wait_for(said, "the scheduler to resume its predecessor's sweeps", timeout=120)

    return wait


def test_a_strict_reader_right_after_its_producer_passes_new_bytes(deployment):
    """The producer writes other bytes each run, and its record is journaled in the spool for
    the shipper (every 2 s) while the scheduler starts the strict reader within a second: the
    reader's check must pass what the producer just wrote, whether its record is in the ledger
    yet or still waits in the spool, run after run."""
    for number in range(1, 5):
        run_id = f"fresh-{number}"
        deployment.trigger("deploy_fresh", run_id)
        state = deployment.wait_for_run("deploy_fresh", run_id)
        log = deployment.home / "logs" / "dag_id=deploy_fresh" / f"run_id={run_id}" / "task_id=use" / "attempt=1.log"
        assert state == "success", log.read_text(errors="replace")[-3000:] if log.exists() else state
        assert (deployment.data / "fresh-used.txt").read_bytes() == (deployment.data / "fresh.txt").read_bytes()
        records = assert_every_try_recorded_once(deployment, "deploy_fresh", run_id)
        assert not any(rec.extra.get("refused_by") for rec in records.values())


def test_a_reader_cleared_after_its_input_was_edited_is_refused_under_strict(deployment):
    """Cleared through the REST API (the UI's "Clear") after its input was edited outside the
    workflow: the reader's next try checks again and refuses, and its record says so; the
    producer cleared with it makes the file again, and the reader then runs."""
    import urllib.request

    def clear(task_ids: list[str]) -> None:
        body = {"dag_run_id": "clear-1", "task_ids": task_ids, "dry_run": False, "only_failed": False}
        request = urllib.request.Request(
            f"http://127.0.0.1:{deployment.api_port}/api/v2/dags/deploy_clear/clearTaskInstances",
            data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200

    deployment.trigger("deploy_clear", "clear-1")
    assert deployment.wait_for_run("deploy_clear", "clear-1") == "success"
    assert_every_try_recorded_once(deployment, "deploy_clear", "clear-1")
    with open(deployment.data / "clear.txt", "a") as handle:
        handle.write("edited\n")
    clear(["read"])
    deployment.wait_for(lambda: deployment.run_state("deploy_clear", "clear-1") not in ("success", None),
                        "the cleared run to start again", timeout=60)
    assert deployment.wait_for_run("deploy_clear", "clear-1") == "failed"
    records = assert_every_try_recorded_once(deployment, "deploy_clear", "clear-1")
    refused = records[("deploy_clear", "clear-1", "read", -1, 2)]
    assert refused.status == "failed" and refused.extra["refused_by"] == "strict"
    assert refused.extra["modified_inputs"] == [str(deployment.data / "clear.txt")]
    assert (deployment.data / "clear-read.txt").read_text() == "made\n"  # the edit was never read
    clear(["make", "read"])
    deployment.wait_for(lambda: deployment.run_state("deploy_clear", "clear-1") not in ("failed", None),
                        "the cleared run to start again", timeout=60)
    assert deployment.wait_for_run("deploy_clear", "clear-1") == "success"
    records = assert_every_try_recorded_once(deployment, "deploy_clear", "clear-1")
    assert records[("deploy_clear", "clear-1", "read", -1, 3)].status == "succeeded"


def test_a_run_in_progress_when_the_site_moves_its_ledger_is_not_recorded_again(deployment, tmp_path):
    """The site moves its ledger (PostgreSQL to SQLite here; the markers of recorded tries
    are kept per ledger, either way) while a run is in progress: its first task recorded
    into the old ledger, the second still running (it waits for the test's go-ahead) when
    the scheduler is killed and started on the new ledger, the third run by that scheduler.
    The second task's process, started before the move, records into the old ledger. Before,
    the new scheduler's sweep at the run's end found no marker of the first two tries beside
    the new ledger and recorded both again there, as its own report of a task process that
    ended without reporting ("killed?"): two tries that ran and reported, recorded twice."""
    site = deployment
    sqlite_url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(sqlite_url, spool=str(tmp_path / "empty-spool")).close()
    run_id = "move-1"
    site.trigger("deploy_move", run_id)
    site.wait_for(lambda: site.task_pid("deploy_move", run_id, "held"), "the held task to run", timeout=120)
    site.wait_for(lambda: ledger_records(site, "deploy_move", run_id), "the first task's record", timeout=60,
                  every=0.5)  # a CLI process a look
    try:
        site.kill("scheduler", group=False)  # its worker supervising "held" lives on, on the old ledger
        site.kill("dag-processor")
        offset = (site.home / "scheduler.log").stat().st_size
        site.start("dag-processor", "scheduler", extra_env={"AIRFLOW__LINEAGE_LEDGER__URL": sqlite_url})
        (site.data / "move-go").write_text("go\n")
        assert site.wait_for_run("deploy_move", run_id) == "success"
        tries = {t.task_id: t for t in site.tries("deploy_move", run_id)}
        assert sorted(tries) == ["first", "held", "last"] and {t.try_number for t in tries.values()} == {1}

        def swept() -> str | None:  # the sweep runs in the scheduler's loop, before it logs the run's end
            with open(site.home / "scheduler.log", "rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
            return text if f"DagRun Finished: dag_id=deploy_move, logical_date=None, run_id={run_id}," in text else None

        said = site.wait_for(swept, "the scheduler's sweep of the run", timeout=60)
        assert f"of deploy_move/{run_id} that no task process recorded" not in said, said[-3000:]
        ship(site)
        ship(site, sqlite_url)
        new = site.wait_for(lambda: by_try(ledger_records(site, "deploy_move", run_id, sqlite_url)),
                            "the last task's record", timeout=60, every=0.5)
        old = by_try(ledger_records(site, "deploy_move", run_id))
        assert {k[2]: len(v) for k, v in new.items()} == {"last": 1}, {k: [r.airflow for r in v] for k, v in new.items()}
        assert {k[2]: len(v) for k, v in old.items()} == {"first": 1, "held": 1}
        for task_id, recs in [*old.items(), *new.items()]:
            (rec,) = recs
            assert rec.status == "succeeded" and rec.airflow["reported_by"] == "task", (task_id, rec.airflow)
    finally:
        for name in ("scheduler", "dag-processor"):
            site.kill(name, signal.SIGKILL)
        site.start("dag-processor", "scheduler")  # back on the PostgreSQL ledger for the other tests
