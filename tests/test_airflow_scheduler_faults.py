"""The Airflow plugin under the real scheduler (LocalExecutor) when the machine misbehaves:
the spool's disk fills as a task ends, or turns read-only; the ledger is read-only while
tasks finish; the LocalExecutor worker that supervises a task is killed with SIGKILL
mid-task; and a DAG names its files with relative paths.

The deployment is the one of ``tests/support/airflow_deploy.py`` (scheduler, DAG processor
and API server as separate processes, a PostgreSQL metadata database), with an SQLite ledger
on an ordinary disk and the spool on a small tmpfs the tests mount (root only, else
skipped). What is already covered elsewhere is not repeated here: ``kill -9`` of a task
process and of the scheduler, a ledger server that is down and an SQLite ledger whose write
lock is held while tasks finish (``tests/test_airflow_deployment.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.airflow_deploy import Deployment
from tests.support.airflow_site import airflow_installed, private_airflow_home

private_airflow_home()  # the in-process tests import Airflow: never with ~/airflow

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]

FILLER = "filler"  # the file that fills the spool's disk

DAG_FILE = '''
import os
import time
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()
SMALL = Path(os.environ["LINEAGE_TEST_SMALL_DISK"]).resolve()


def _file(path):
    return Asset(uri=f"file://{path}")


with DAG(dag_id="fault_fill", schedule=None, catchup=False):
    # Fills the spool's disk, then writes its outlet elsewhere and succeeds.
    BashOperator(task_id="fill", outlets=[_file(DATA / "fill.txt")],
                 bash_command=f"(head -c 64000000 /dev/zero > '{SMALL}/filler') 2>/dev/null; echo filled > '{DATA}/fill.txt'")


with DAG(dag_id="fault_many", schedule=None, catchup=False):
    for index in range(3):
        out = DATA / f"many-{index}.txt"
        BashOperator(task_id=f"step{index}", bash_command=f"echo {index} > '{out}'", outlets=[_file(out)])


def _outlive_the_supervisor(ti, **_):
    """Try 1 waits until the test killed its supervisor (its parent changes), then finishes
    its work as if nothing happened; try 2 just does the work."""
    out = DATA / "outlived.txt"
    if ti.try_number == 1:
        parent = os.getppid()
        (DATA / "victim.pid").write_text(str(os.getpid()))
        deadline = time.monotonic() + 150
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    out.write_text(f"written by try {ti.try_number}\\n")


with DAG(dag_id="fault_worker_kill", schedule=None, catchup=False):
    PythonOperator(task_id="victim", python_callable=_outlive_the_supervisor, retries=1,
                   retry_delay=timedelta(0), outlets=[_file(DATA / "outlived.txt")])


with DAG(dag_id="fault_relative", schedule=None, catchup=False):
    # Relative to this file's folder, whatever the working directory of the worker.
    LedgerOperator(task_id="copy", inputs=["rel-data/in.txt"], outputs=["rel-data/out.txt"],
                   bash_command="cat '{{ task.inputs[0] }}' > '{{ task.outputs[0] }}'")


with DAG(dag_id="fault_ro_dags", schedule=None, catchup=False):
    # The DAG's folder read-only (a git DAG bundle's checkout): the input is read from it, the
    # command's scratch file goes to its own working directory.
    LedgerOperator(task_id="sort", inputs=["ro-data/in.txt"], outputs=[str(DATA / "ro-sorted.txt")],
                   bash_command="sort '{{ task.inputs[0] }}' > scratch.txt && pwd > '" + str(DATA / "ro-cwd.txt")
                                + "' && cp scratch.txt '{{ task.outputs[0] }}'")
    # A relative output is the DAG folder's; the command writes it relative to its own.
    LedgerOperator(task_id="relative_out", outputs=["ro-data/out.txt"],
                   bash_command="mkdir -p ro-data && echo made > ro-data/out.txt")


with DAG(dag_id="fault_uris", schedule=None, catchup=False):
    BashOperator(task_id="write", bash_command="echo ok > '" + str(DATA / "uri-ok.txt") + "'",
                 outlets=[_file(DATA / "uri-ok.txt"), Asset(uri="file://rel-host/x.csv"), Asset(uri="file:rel-x.csv")])


with DAG(dag_id="fault_marked_failed", schedule=None, catchup=False):
    # A subshell the command starts, still running when the try is marked failed.
    LedgerOperator(task_id="long", outputs=[str(DATA / "marked.txt")],
                   bash_command=f"(echo $BASHPID > '{DATA}/marked.pid'; sleep 40; echo late > '{DATA}/marked.txt'); "
                                "echo done")


def _stubborn(ti, **_):
    """Ignores the signals Airflow ends a try with, until its supervisor kills it (-9)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    (DATA / "stubborn.pid").write_text(str(os.getpid()))
    time.sleep(120)
    (DATA / "stubborn.txt").write_text("written by the try\\n")


with DAG(dag_id="fault_marked_stubborn", schedule=None, catchup=False):
    PythonOperator(task_id="stubborn", python_callable=_stubborn, outlets=[_file(DATA / "stubborn.txt")])


with DAG(dag_id="fault_late", schedule=None, catchup=False):
    # The task process dies without reporting (kill -9 by its own command): the scheduler's
    # sweep at the run's end records the try.
    BashOperator(task_id="vanish", bash_command="kill -9 $PPID", outlets=[_file(DATA / "late.txt")])
'''

DAGS = ("fault_fill", "fault_many", "fault_worker_kill", "fault_relative", "fault_ro_dags", "fault_uris", "fault_late",
        "fault_marked_failed", "fault_marked_stubborn")


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                                capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres_server):
    base = tmp_path_factory.mktemp("airflow-faults")
    small = base / "small"
    if not _mount_tmpfs(small, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (base / "ledger").mkdir()
        site = Deployment(home=base / "home", metadata_dsn=postgres_server.create_database(),
                          ledger_url=f"sqlite:///{base}/ledger/ledger.db", spool=small / "spool", data=base / "data")
        site.data.mkdir(parents=True)
        site.configure({"XDG_STATE_HOME": str(base / "state"), "LINEAGE_TEST_SMALL_DISK": str(small),
                        "AIRFLOW__LINEAGE_LEDGER__FLUSH_TIMEOUT": "5"})
        dags = Path(site.env["AIRFLOW__CORE__DAGS_FOLDER"])
        for other in dags.glob("*.py"):  # the deployment tests' DAGs: not needed here
            other.unlink()
        (dags / "faults.py").write_text(DAG_FILE)
        open_ledger(site.ledger_url, spool=str(base / "empty-spool")).close()  # the schema, before any lock
        site.migrate()
        site.start()
        try:
            site.wait_for_dags(DAGS)
            yield site
        finally:
            site.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def sqlite_path(site: Deployment) -> Path:
    return Path(site.ledger_url.removeprefix("sqlite:///"))


def records_of(site: Deployment, dag_id: str, run_id: str) -> list[dict]:
    """The run's records, read with sqlite3 (no lineage-ledger code, and no spool shipped)."""
    conn = sqlite3.connect(sqlite_path(site), timeout=60)
    try:
        rows = conn.execute("SELECT body FROM ll_records WHERE run_id = ? ORDER BY seq", (f"{dag_id}/{run_id}",)).fetchall()
    finally:
        conn.close()
    return [json.loads(bytes(body) if not isinstance(body, str) else body) for (body,) in rows]


def by_try(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    found: dict[tuple[str, int], list[dict]] = {}
    for record in records:
        facts = record["extra"]["airflow"]
        found.setdefault((facts["task_id"], int(facts["try_number"])), []).append(record)
    return found


def wait_for_tries(site: Deployment, dag_id: str, run_id: str, timeout: float = 90) -> dict[tuple[str, int], dict]:
    """One record for every try Airflow has of the run (the shipper ships every 2 s)."""
    wanted = {(t.task_id, t.try_number) for t in site.tries(dag_id, run_id)}
    assert wanted, f"no tries of {dag_id}/{run_id}"
    found = site.wait_for(lambda: (have := by_try(records_of(site, dag_id, run_id))) and set(have) >= wanted and have,
                          f"a record of every try of {dag_id}/{run_id}", timeout=timeout)
    assert set(found) == wanted, (sorted(found), sorted(wanted))
    assert {key: len(recs) for key, recs in found.items()} == dict.fromkeys(wanted, 1), found
    return {key: recs[0] for key, recs in found.items()}


def task_log(site: Deployment, dag_id: str, run_id: str, task_id: str, attempt: int = 1) -> str:
    path = (site.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
            / f"attempt={attempt}.log")
    return path.read_text(errors="replace") if path.exists() else ""


def hooks_done(site: Deployment, dag_id: str, run_id: str, task_id: str) -> str:
    """The task log once the task process has logged its last line (after the listener's hooks)."""
    def ended() -> str | None:
        text = task_log(site, dag_id, run_id, task_id)
        return text if '"::endgroup::"' in text.rsplit("Post Execute", 1)[-1] else None

    return site.wait_for(ended, f"the end of {dag_id}/{run_id}/{task_id}'s log", timeout=120)


def free_the_disk(site: Deployment) -> None:
    (Path(site.env["LINEAGE_TEST_SMALL_DISK"]) / FILLER).unlink(missing_ok=True)


def fill_the_disk(site: Deployment) -> None:
    filler = Path(site.env["LINEAGE_TEST_SMALL_DISK"]) / FILLER
    subprocess.run(f"head -c 64000000 /dev/zero > '{filler}'", shell=True, check=False, stderr=subprocess.DEVNULL)


JOB_LOGS = ("scheduler", "api-server")  # the long-lived processes that report tries of others


def job_log_offsets(site: Deployment) -> dict[str, int]:
    return {name: (site.home / f"{name}.log").stat().st_size for name in JOB_LOGS}


def job_logs_since(site: Deployment, seen: dict[str, int]) -> str:
    said = ""
    for name in JOB_LOGS:
        with open(site.home / f"{name}.log", "rb") as handle:
            handle.seek(seen[name])
            said += handle.read().decode(errors="replace")
    return said


def ledger_takes_writes_now(site: Deployment) -> None:
    """Wait until nothing waits in the spool and the ledger's write lock is free: what a test
    that needs a task's straight write to land within flush_timeout (5 s) must start from.
    An earlier test's leftovers (records shipped late, a write waiting in a job process) can
    hold the lock as this test's task ends (seen once in a shuffled run: 'not recorded yet'),
    and the plugin then rightly leaves the record to the scheduler's sweep."""
    def quiet() -> bool:
        status = run_cli("spool", "status", "--spool", site.spool, "--json", cwd=site.home, check_rc=0)
        if sum(item.get("records", 0) for item in json.loads(status.stdout)):
            return False
        conn = sqlite3.connect(sqlite_path(site), timeout=1)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return True
        except sqlite3.OperationalError:  # locked
            return False
        finally:
            conn.close()

    site.wait_for(quiet, "an empty spool and a free ledger", timeout=120)


# -- the spool's disk fills as a task ends --------------------------------------------------
def test_a_task_that_fills_the_spools_disk_is_recorded_straight_into_the_ledger(site):
    ledger_takes_writes_now(site)
    seen = job_log_offsets(site)
    try:
        site.trigger("fault_fill", "full-1")
        assert site.wait_for_run("fault_fill", "full-1") == "success"
        text = hooks_done(site, "fault_fill", "full-1", "fill")
    finally:
        free_the_disk(site)
    # On failure, what the job processes (the shipper, the sweeps) said meanwhile.
    assert "No space left on device" in text and "straight into the ledger" in text, (
        text[-3000:], job_logs_since(site, seen)[-3000:])
    assert "Traceback" not in text and "NOT recorded" not in text, text[-3000:]
    record = wait_for_tries(site, "fault_fill", "full-1")[("fill", 1)]
    assert record["status"] == "succeeded" and record["extra"]["airflow"]["reported_by"] == "task"
    assert str(site.data / "fill.txt") in record["outputs"]


def test_a_task_whose_record_neither_the_spool_nor_the_ledger_takes_says_so_in_its_log(site):
    lock = sqlite3.connect(sqlite_path(site), timeout=5, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # the ledger takes nothing either while the disk is full
    try:
        site.trigger("fault_fill", "neither-1")
        assert site.wait_for_run("fault_fill", "neither-1") == "success"  # the workflow goes on
        text = hooks_done(site, "fault_fill", "neither-1", "fill")
        # Said in the task's own log, in words that leave no doubt, naming both reasons,
        # within Airflow's overtime (a task process that waited out SQLite's 60 s lock
        # timeout would be killed, and say nothing).
        assert "NOT recorded" in text and "No space left on device" in text, text[-3000:]
        assert "did not take it" in text, text[-3000:]
        # The write outlived the wait ('not recorded yet'); the process's last hook says it
        # ends with the write, which dies with it.
        assert "not recorded yet" in text and "this process ends before the ledger took it" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        # The run's sweep found the task process alive (it was waiting for the ledger) and
        # sweeps the run again once it has ended: the try, given up by then, is recorded by
        # the scheduler, which lives on, on the same full disk and locked ledger: its write
        # waits in the scheduler's process.
        time.sleep(5)
    finally:
        free_the_disk(site)
        lock.rollback()
        lock.close()
    # Before: never; the run's only sweep had found the try claimed, and the record was lost.
    record = wait_for_tries(site, "fault_fill", "neither-1")[("fill", 1)]
    assert record["extra"]["airflow"]["reported_by"] == "scheduler" and record["status"] == "succeeded"
    assert str(site.data / "fill.txt") in record["outputs"]
    # Recording goes on once there is room.
    site.trigger("fault_many", "after-full-1")
    assert site.wait_for_run("fault_many", "after-full-1") == "success"
    wait_for_tries(site, "fault_many", "after-full-1")


def test_a_scheduler_killed_before_a_runs_second_sweep_does_it_when_started_again(site):
    """As above (the disk full and the ledger locked as the task ends), but the scheduler is
    killed with -9 (alone: its workers and the task process live on) between the run's end,
    whose sweep found the task process alive, and the second sweep it owed the run. The
    scheduler started again must do that sweep: the task process gave its try up as it
    ended, and no one else will ever record it."""
    lock = sqlite3.connect(sqlite_path(site), timeout=5, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        site.trigger("fault_fill", "killed-1")
        assert site.wait_for_run("fault_fill", "killed-1") == "success"
        pid = _pid_of(site, "fault_fill", "killed-1", "fill")
        assert pid and _has_open(pid, sqlite_path(site)), "the task process no longer waits for the ledger"
        site.kill("scheduler", group=False)  # its sweep of the run is done; the second one is owed
        text = hooks_done(site, "fault_fill", "killed-1", "fill")
        assert "NOT recorded" in text, text[-3000:]
    finally:
        free_the_disk(site)
        lock.rollback()
        lock.close()
    site.start("scheduler")
    record = wait_for_tries(site, "fault_fill", "killed-1")[("fill", 1)]  # before: never
    assert record["extra"]["airflow"]["reported_by"] == "scheduler" and record["status"] == "succeeded"
    assert str(site.data / "fill.txt") in record["outputs"]  # the DAG read back: its outlet is listed


def _pid_of(site: Deployment, dag_id: str, run_id: str, task_id: str) -> int | None:
    """The task process's pid, whatever the try's state by now."""
    rows = site.query("SELECT pid FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s",
                      dag_id, run_id, task_id)
    return rows[0][0] if rows and rows[0][0] else None


def _has_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # not started yet, or gone
        return False


def test_a_record_given_up_as_the_task_ends_waits_in_the_spool_once_it_has_room(site):
    """The spool's disk is full as the task ends and the ledger is locked: the record goes
    straight at the ledger and waits (flush_timeout, 5 s). The disk gets room during that
    wait; the lock is held until the task process has ended. The task's last hook must keep
    the record in the spool (the one durable place it has now), and the shipper ships it
    once the lock is gone: the task's own record, once. Before, the hook said it NOT
    recorded, and it never reached the ledger (the run's sweep had found the try claimed)."""
    lock = sqlite3.connect(sqlite_path(site), timeout=5, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        site.trigger("fault_fill", "room-1")
        # The task's record goes straight at the ledger (the task process opens it, which a
        # task whose spool takes its record never does) and waits: make room on the disk now.
        pid = site.wait_for(lambda: _pid_of(site, "fault_fill", "room-1", "fill"), "the task's process", timeout=180,
                            every=0.1)
        site.wait_for(lambda: _has_open(pid, sqlite_path(site)), "the task process to open the ledger",
                      timeout=180, every=0.1)
        free_the_disk(site)
        text = hooks_done(site, "fault_fill", "room-1", "fill")
        assert site.wait_for_run("fault_fill", "room-1") == "success"
        time.sleep(3)  # the shipper's rounds meet the lock still held
        assert records_of(site, "fault_fill", "room-1") == []
    finally:
        free_the_disk(site)
        lock.rollback()
        lock.close()
    record = wait_for_tries(site, "fault_fill", "room-1")[("fill", 1)]  # before: never, the try's record was lost
    assert record["extra"]["airflow"]["reported_by"] == "task"
    assert str(site.data / "fill.txt") in record["outputs"]
    assert "Traceback" not in text, text[-3000:]
    assert "waits in the spool" in text and "NOT recorded" not in text, text[-3000:]


def test_a_late_record_of_a_long_lived_process_is_not_said_lost(site):
    """The scheduler (a process that lives on) records a try whose task process died, while
    the spool's disk is full and another process holds the SQLite ledger's write lock: its
    write outlives the plugin's wait. The log must not call it NOT recorded and then let it
    land: it says 'not recorded yet', and 'recorded after all' once the lock is released."""
    seen = job_log_offsets(site)
    lock = sqlite3.connect(sqlite_path(site), timeout=5, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        fill_the_disk(site)
        site.trigger("fault_late", "late-1")
        assert site.wait_for_run("fault_late", "late-1") == "failed"
        # Said while the lock is still held (the wait is flush_timeout, 5 s).
        said = site.wait_for(lambda: (text := job_logs_since(site, seen)) and "fault_late/late-1/vanish" in text
                             and "recorded" in text.split("fault_late/late-1/vanish", 1)[1] and text,
                             "the scheduler to say what became of the killed try", timeout=120)
    finally:
        lock.rollback()
        lock.close()
        free_the_disk(site)
    time.sleep(8)  # a write still waiting lands within a moment of the release, and is said
    said = job_logs_since(site, seen)
    records = by_try(records_of(site, "fault_late", "late-1")).get(("vanish", 1), [])
    lines = [line for line in said.splitlines() if "fault_late/late-1/vanish" in line]
    if records:  # it landed: nothing may have called it lost
        assert len(records) == 1 and records[0]["extra"]["airflow"]["reported_by"] in ("scheduler", "server")
        assert not [line for line in lines if "NOT recorded" in line], lines
        assert [line for line in lines if "not recorded yet" in line], lines
        # "is recorded after all": the 'not recorded yet' line itself names 'recorded after all'.
        assert [line for line in lines if "is recorded after all" in line], lines
    else:  # refused for good: then it says so, and nothing lands later
        assert [line for line in lines if "NOT recorded" in line], lines
        time.sleep(10)
        assert records_of(site, "fault_late", "late-1") == []
    # Recording goes on.
    site.trigger("fault_many", "after-late-1")
    assert site.wait_for_run("fault_many", "after-late-1") == "success"
    wait_for_tries(site, "fault_many", "after-late-1")


def restart_jobs(site: Deployment) -> None:
    for name in ("scheduler", "dag-processor"):
        site.kill(name, signal.SIGKILL)
    site.start("dag-processor", "scheduler")


def _holders(mount: Path) -> set[int]:
    """The processes with a file open below ``mount`` (all of them this module's: the file
    system is the test's own)."""
    found = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd).startswith(f"{mount}/") for fd in fd_dir.iterdir()):
                found.add(int(fd_dir.parent.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    found.discard(os.getpid())
    return found


def _remount_read_only(site, mount: Path) -> list[str]:
    """Remount ``mount`` read-only; the components that had to be killed for it, to start again.
    A process still writing there makes the remount fail ("mount point is busy", CI in random
    order): a component's worker exiting after its group's SIGKILL, or a task process an
    earlier test orphaned (its worker killed alone). Each is killed, then the remount tried again."""
    restart: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
        if remount.returncode == 0:
            return restart
        holders = _holders(mount)
        assert time.monotonic() < deadline, (remount.stderr, holders)
        for name, process in list(site.processes.items()):
            if process.pid in holders:
                site.kill(name, signal.SIGKILL)
                restart.append(name)
        for pid in holders:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def test_a_read_only_spool_as_tasks_finish_sends_their_records_straight_into_the_ledger(site):
    """The spool's disk remounted read-only (as the kernel does after a disk error): no
    segment, no try marker and no shipper's lease can be written. Each task process's own
    report goes straight into the ledger, once."""
    ledger_takes_writes_now(site)  # each report must land within flush_timeout
    small = Path(site.env["LINEAGE_TEST_SMALL_DISK"])
    for name in ("scheduler", "dag-processor"):  # nothing may hold a file open for writing there
        site.kill(name, signal.SIGKILL)
    restart = _remount_read_only(site, small)
    try:
        site.start(*restart, "dag-processor", "scheduler")
        site.trigger("fault_many", "rospool-1")
        assert site.wait_for_run("fault_many", "rospool-1") == "success"
        for index in range(3):
            text = hooks_done(site, "fault_many", "rospool-1", f"step{index}")
            assert "Read-only file system" in text and "straight into the ledger" in text, text[-3000:]
            assert "Traceback" not in text and "NOT recorded" not in text, text[-3000:]
        records = wait_for_tries(site, "fault_many", "rospool-1")
        assert {r["extra"]["airflow"]["reported_by"] for r in records.values()} == {"task"}
        time.sleep(6)  # the scheduler's sweep at the run's end must not record them a second time
        wait_for_tries(site, "fault_many", "rospool-1")
    finally:
        for name in ("scheduler", "dag-processor"):
            site.kill(name, signal.SIGKILL)
        subprocess.run(["mount", "-o", "remount,rw", str(small)], check=False)
        site.start("dag-processor", "scheduler")


def test_a_read_only_spool_and_a_locked_ledger_as_a_task_ends_the_scheduler_records_it(site):
    """The spool's disk read-only and the SQLite ledger's write lock held by another process
    as a task ends: the task's record has no durable place, and its process gives it up as it
    ends (said NOT recorded in its log, 'unless the scheduler's sweep records the try'). The
    scheduler, which lives on, must record it once the ledger lets go, once, although no try
    marker can be made (it asks the ledger instead). Before, its sweep raised ('could not
    sweep'), and the record was lost without a word in the task's log saying so."""
    small = Path(site.env["LINEAGE_TEST_SMALL_DISK"])
    for name in ("scheduler", "dag-processor"):
        site.kill(name, signal.SIGKILL)
    restart = _remount_read_only(site, small)
    lock = sqlite3.connect(sqlite_path(site), timeout=5, check_same_thread=False)
    try:
        site.start(*restart, "dag-processor", "scheduler")
        lock.execute("BEGIN EXCLUSIVE")
        site.trigger("fault_fill", "ro-locked-1")  # its filler cannot be written: the disk is read-only
        assert site.wait_for_run("fault_fill", "ro-locked-1") == "success"
        text = hooks_done(site, "fault_fill", "ro-locked-1", "fill")
        assert "Read-only file system" in text and "NOT recorded" in text, text[-3000:]
        time.sleep(3)  # the scheduler's second sweep meets the lock still held
        lock.rollback()
        record = wait_for_tries(site, "fault_fill", "ro-locked-1")[("fill", 1)]  # before: never
        assert record["extra"]["airflow"]["reported_by"] == "scheduler" and record["status"] == "succeeded"
        assert str(site.data / "fill.txt") in record["outputs"]
    finally:
        lock.close()
        for name in ("scheduler", "dag-processor"):
            site.kill(name, signal.SIGKILL)
        subprocess.run(["mount", "-o", "remount,rw", str(small)], check=False)
        site.start("dag-processor", "scheduler")
    time.sleep(4)  # the scheduler started again sweeps the run again: no second record
    wait_for_tries(site, "fault_fill", "ro-locked-1")


def test_the_spool_removed_while_the_deployment_runs(site):
    """``rm -rf`` of the spool (a clean-up job, an operator) under a running scheduler: the
    next tasks' records are made in a new one and reach the ledger, and a job process holds
    the shipper's lease there again, instead of failing every round on the removed one."""
    logs = [site.home / f"{name}.log" for name in ("scheduler", "dag-processor")]
    seen = {path: path.stat().st_size for path in logs}
    lease = site.spool / ".airflow-shipper"
    # A job process holds the lease (only the holder touches the file again after making it;
    # just after a restart of the job processes the file may be an old one nobody holds).
    made = site.wait_for(lambda: lease.exists() and lease.stat().st_mtime_ns, "a lease file")
    site.wait_for(lambda: lease.stat().st_mtime_ns > made, "a shipper to touch its lease", timeout=60)
    shutil.rmtree(site.spool)
    site.trigger("fault_many", "gone-1")
    assert site.wait_for_run("fault_many", "gone-1") == "success"
    wait_for_tries(site, "fault_many", "gone-1")

    def fresh_lease() -> bool:
        try:
            return time.time() - lease.stat().st_mtime < 5
        except FileNotFoundError:
            return False

    site.wait_for(fresh_lease, "a shipper to hold the lease in the new spool", timeout=60)
    said = b""
    for path in logs:
        with open(path, "rb") as handle:
            handle.seek(seen[path])
            said += handle.read()
    assert b"lease file" in said and b"was removed" in said  # the holder let the old lease go
    assert said.count(b"the spool shipper failed") <= 1, said.decode(errors="replace")[-3000:]


# -- the ledger read-only while tasks finish -------------------------------------------------


def test_a_read_only_ledger_while_tasks_finish_keeps_the_records_in_the_spool(site):
    """The ledger's folder mounted read-only (as a full disk remounted read-only by the
    kernel, or an administrator's read-only bind): every task succeeds, nothing ships, and
    the machine's shipper ships every try once the folder is writable again."""
    folder = sqlite_path(site).parent
    for name in ("scheduler", "dag-processor"):  # nobody holds the ledger open for writing
        site.kill(name, signal.SIGKILL)
    job_logs = [site.home / f"{name}.log" for name in ("scheduler", "dag-processor")]
    seen = {path: path.stat().st_size for path in job_logs}  # what they logged before

    def said_read_only() -> bool:
        for path in job_logs:
            with open(path, "rb") as handle:
                handle.seek(seen[path])
                if b"read-only" in handle.read():
                    return True
        return False

    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        site.start("dag-processor", "scheduler")
        site.trigger("fault_many", "ro-1")
        assert site.wait_for_run("fault_many", "ro-1") == "success"
        assert [t.state for t in site.tries("fault_many", "ro-1")] == ["success"] * 3
        for index in range(3):
            text = hooks_done(site, "fault_many", "ro-1", f"step{index}")
            assert "could not record" not in text and "NOT recorded" not in text, text[-3000:]
        # The shipper says why nothing ships (at the scheduler's INFO level, not DEBUG), once.
        site.wait_for(said_read_only, "the shipper to say the ledger is read-only", timeout=60)
        status = run_cli("spool", "status", "--spool", site.spool, "--json", cwd=site.home, check_rc=0)
        assert sum(item.get("records", 0) for item in json.loads(status.stdout)) >= 3, status.stdout
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    wait_for_tries(site, "fault_many", "ro-1")  # shipped by the machine's shipper, none lost
    restart_jobs(site)  # fresh job processes for the tests after this one


# -- the LocalExecutor worker killed with SIGKILL mid-task -----------------------------------
def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def test_sigkill_of_the_worker_mid_task_leaves_no_success_record_for_the_killed_try(site):
    """The worker (the supervisor of the task process) dies; the task process lives on and
    finishes its work, but Airflow fails the try (no heartbeat) and retries it. The ledger
    must not say that try 1 succeeded."""
    pid_file = site.data / "victim.pid"
    pid_file.unlink(missing_ok=True)
    # For this run alone (the deployment's own is long). Not 8 s: at a load of 11 Airflow
    # failed try 1 for missed heartbeats before its callable had started (no pid file, and
    # try 2, which writes none, succeeded); the test then waits this long after the kill.
    with site.heartbeat_timeout(20):
        site.trigger("fault_worker_kill", "worker-1")
        pid = int(site.wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the task to start", timeout=120))
        supervisor = _parent_of(pid)
        os.kill(supervisor, signal.SIGKILL)
        assert site.wait_for_run("fault_worker_kill", "worker-1", timeout=240) == "success"  # try 2 succeeds
        tries = {t.try_number: t.state for t in site.tries("fault_worker_kill", "worker-1")}
        assert tries[2] == "success" and tries[1] != "success", tries  # Airflow failed the killed try
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # try 1's orphaned task process ends on its own
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(1)
    time.sleep(5)  # whatever it journaled is shipped within a few rounds
    found = by_try(records_of(site, "fault_worker_kill", "worker-1"))
    assert [r["status"] for r in found.get(("victim", 1), [])] in ([], ["failed"]), found.get(("victim", 1))
    assert [r["status"] for r in found[("victim", 2)]] == ["succeeded"]


def test_a_ledger_operator_marked_failed_ends_its_commands_children(site):
    """Marked failed through the REST API (the UI's "mark failed") while its command runs:
    Airflow's supervisor signals the task process, whose on_kill ends the command's own process
    group (the command runs in a session of its own, so that a timeout ends it too): the
    subshell it started never writes the declared output."""
    import urllib.request

    pid_file = site.data / "marked.pid"
    pid_file.unlink(missing_ok=True)
    site.trigger("fault_marked_failed", "marked-1")
    site.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the command's subshell", timeout=120)
    subshell = int(pid_file.read_text())
    request = urllib.request.Request(
        f"http://127.0.0.1:{site.api_port}/api/v2/dags/fault_marked_failed/dagRuns/marked-1/taskInstances/long",
        data=json.dumps({"new_state": "failed"}).encode(), method="PATCH",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
    assert site.wait_for_run("fault_marked_failed", "marked-1") == "failed"

    def gone() -> bool:  # ended (a zombie nobody reaps counts: it runs nothing)
        try:
            with open(f"/proc/{subshell}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    site.wait_for(gone, "the subshell to end with its try", timeout=60)
    time.sleep(3)
    assert not (site.data / "marked.txt").exists()
    # One record of the try reaches the ledger (before: the API server's report, kept in its
    # own spool segment, which nobody ships while it runs).
    record = wait_for_tries(site, "fault_marked_failed", "marked-1")[("long", 1)]
    assert record["status"] == "failed" and str(site.data / "marked.txt") not in record["outputs"], record


def test_a_try_marked_success_while_it_runs_vouches_for_no_file_it_did_not_write(site):
    """Marked success by hand (the UI's "mark success") while its command runs: Airflow ends
    the task process, and the try is 'success' in the metadata database, but the command never
    wrote its output. A file an earlier run left at the output's path must not be recorded as
    this try's product (a later strict check would then pass it)."""
    import urllib.request

    stale = site.data / "marked.txt"
    stale.write_text("left by an earlier run\n")
    pid_file = site.data / "marked.pid"
    pid_file.unlink(missing_ok=True)
    site.trigger("fault_marked_failed", "success-1")
    site.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the command's subshell", timeout=120)
    request = urllib.request.Request(
        f"http://127.0.0.1:{site.api_port}/api/v2/dags/fault_marked_failed/dagRuns/success-1/taskInstances/long",
        data=json.dumps({"new_state": "success"}).encode(), method="PATCH",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
    assert site.wait_for_run("fault_marked_failed", "success-1") == "success"
    text = hooks_done(site, "fault_marked_failed", "success-1", "long")
    record = wait_for_tries(site, "fault_marked_failed", "success-1")[("long", 1)]  # before: never shipped
    # The task process's own report: it was ended (failed); the file is not its product.
    assert record["extra"]["airflow"]["reported_by"] == "task" and record["status"] == "failed", (record, text[-2000:])
    assert stale.read_text() == "left by an earlier run\n"
    assert str(stale) not in record["outputs"], record
    stale.unlink()  # the test of a try marked failed (any order) expects neither file
    pid_file.unlink()


def test_a_try_marked_success_and_killed_before_it_reports_vouches_for_nothing(site):
    """As above, but the task ignores the signals that end it, so Airflow kills it with -9
    and it never reports: the scheduler's sweep records the try. It must not record it as
    succeeded with the file an earlier run left at its outlet (the try never wrote it)."""
    import urllib.request

    stale, pid_file = site.data / "stubborn.txt", site.data / "stubborn.pid"
    stale.write_text("left by an earlier run\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # an hour ago: before the try started
    pid_file.unlink(missing_ok=True)
    try:
        site.trigger("fault_marked_stubborn", "stubborn-1")
        pid = int(site.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the task", timeout=120))
        request = urllib.request.Request(
            f"http://127.0.0.1:{site.api_port}/api/v2/dags/fault_marked_stubborn/dagRuns/stubborn-1/taskInstances/"
            "stubborn", data=json.dumps({"new_state": "success"}).encode(), method="PATCH",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
        assert site.wait_for_run("fault_marked_stubborn", "stubborn-1") == "success"
        site.wait_for(lambda: not Path(f"/proc/{pid}").exists(), "Airflow to kill the task", timeout=120)
        record = wait_for_tries(site, "fault_marked_stubborn", "stubborn-1")[("stubborn", 1)]
        assert record["extra"]["airflow"]["reported_by"] == "scheduler", record
        assert record["status"] == "failed" and str(stale) not in record["outputs"], record
        assert "by hand" in record["extra"]["airflow"]["error"], record
    finally:
        stale.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)


# -- relative paths in a DAG -------------------------------------------------------------------
def test_relative_paths_of_a_ledger_operator_are_the_dag_files_folder(site):
    dags = Path(site.env["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags / "rel-data").mkdir(exist_ok=True)
    (dags / "rel-data" / "in.txt").write_text("relative input\n")
    site.trigger("fault_relative", "rel-1")
    assert site.wait_for_run("fault_relative", "rel-1") == "success", task_log(site, "fault_relative", "rel-1", "copy")[-3000:]
    assert (dags / "rel-data" / "out.txt").read_text() == "relative input\n"
    assert not (site.home / "rel-data").exists()  # the scheduler's (and its workers') working directory
    record = wait_for_tries(site, "fault_relative", "rel-1")[("copy", 1)]
    assert list(record["inputs"]) == [str(dags / "rel-data" / "in.txt")]
    assert list(record["outputs"]) == [str(dags / "rel-data" / "out.txt")]


def test_a_read_only_dag_folder_runs_the_command_in_a_folder_of_its_own(site):
    """A git DAG bundle's checkout (or any read-only DAG folder): a LedgerOperator's command
    that writes a scratch file relative to its working directory runs (before, it ran in the
    DAG folder and failed: Read-only file system); relative inputs are still the DAG
    folder's, and an output declared relative but written relative to the command's own
    folder fails the task saying so."""
    dags = Path(site.env["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags / "ro-data").mkdir(exist_ok=True)
    (dags / "ro-data" / "in.txt").write_text("b\na\n")
    subprocess.run(["mount", "--bind", str(dags), str(dags)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dags)], check=True)
        site.trigger("fault_ro_dags", "ro-dags-1")
        site.wait_for_run("fault_ro_dags", "ro-dags-1")
        states = {t.task_id: t.state for t in site.tries("fault_ro_dags", "ro-dags-1")}
        assert states == {"sort": "success", "relative_out": "failed"}, (
            states, task_log(site, "fault_ro_dags", "ro-dags-1", "sort")[-3000:])
        refused = task_log(site, "fault_ro_dags", "ro-dags-1", "relative_out")
        assert f"declared outputs not produced: {dags}/ro-data/out.txt" in refused, refused[-3000:]
        assert "The command wrote 'ro-data/out.txt' in its own temporary working directory" in refused, refused[-3000:]
        assert sorted(p.name for p in (dags / "ro-data").iterdir()) == ["in.txt"]
    finally:
        subprocess.run(["umount", "-l", str(dags)], check=False)
    assert (site.data / "ro-sorted.txt").read_text() == "a\nb\n"
    ran_in = Path((site.data / "ro-cwd.txt").read_text().strip())
    assert ran_in != dags and not ran_in.exists()  # a temporary folder of its own, removed afterwards
    records = wait_for_tries(site, "fault_ro_dags", "ro-dags-1")
    assert list(records[("sort", 1)]["inputs"]) == [str(dags / "ro-data" / "in.txt")]
    assert list(records[("sort", 1)]["outputs"]) == [str(site.data / "ro-sorted.txt")]


def test_file_uris_without_a_local_absolute_path_are_said(site):
    """'file://rel-host/x.csv' names host 'rel-host' (Airflow's reading, RFC 8089) and is not
    recorded; 'file:rel-x.csv' is Airflow's '/rel-x.csv'. Both said in the task log, by name
    (before: the first was skipped without a word, the second recorded as '/rel-x.csv' with
    nothing said)."""
    site.trigger("fault_uris", "uris-1")
    assert site.wait_for_run("fault_uris", "uris-1") == "success"
    text = hooks_done(site, "fault_uris", "uris-1", "write")
    assert "the file Asset 'file://rel-host/x.csv' is not recorded" in text, text[-3000:]
    assert "'rel-host' as the name of a host" in text, text[-3000:]
    assert "the file Asset 'file:rel-x.csv' is recorded as /rel-x.csv" in text, text[-3000:]
    record = wait_for_tries(site, "fault_uris", "uris-1")[("write", 1)]
    assert list(record["outputs"]) == [str(site.data / "uri-ok.txt")]
    assert record["extra"].get("missing_outputs") == ["/rel-x.csv"], record["extra"]


def test_relative_paths_are_resolved_against_the_file_that_makes_the_dag():
    """In process, without a deployment: the folder is the DAG's file's (here, this test
    file's), and so is a relative cwd; without one, the command runs in a temporary folder."""
    from airflow.sdk import DAG
    from lineage_ledger_airflow import LedgerOperator

    here = str(Path(__file__).resolve().parent)
    with DAG(dag_id="relative_in_process", schedule=None):
        op = LedgerOperator(task_id="t", inputs=["data/raw.csv"], outputs=["../out/clean.csv"], bash_command="true")
        elsewhere = LedgerOperator(task_id="u", inputs=["/abs/raw.csv"], cwd="sub", bash_command="true")
    assert op.inputs == [os.path.join(here, "data", "raw.csv")]
    assert op.outputs == [os.path.join(os.path.dirname(here), "out", "clean.csv")]
    assert [asset.uri for asset in op.inlets] == [f"file://{here}/data/raw.csv"]
    assert op.cwd is None and elsewhere.cwd == os.path.join(here, "sub")
    assert op.relative_outputs == {os.path.join(os.path.dirname(here), "out", "clean.csv"): "../out/clean.csv"}
    assert elsewhere.inputs == ["/abs/raw.csv"]


def test_a_relative_path_without_a_dag_is_refused_by_name():
    from lineage_ledger_airflow import LedgerOperator

    with pytest.raises(ValueError, match="'data/raw.csv' is relative, and no DAG is known"):
        LedgerOperator(task_id="lost", inputs=["data/raw.csv"], bash_command="true")
    assert LedgerOperator(task_id="fine", inputs=["/data/raw.csv"], bash_command="true").cwd is None
