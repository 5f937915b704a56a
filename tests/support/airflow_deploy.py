"""A real Airflow 3 deployment on loopback, as users run one: ``airflow scheduler``,
``airflow dag-processor`` and ``airflow api-server`` as separate processes, LocalExecutor,
a PostgreSQL metadata database. Everything lives under one temporary ``AIRFLOW_HOME``.

Intervals are short (scheduler loop, DAG-folder scan, heartbeats) so a DAG run takes
seconds. The tests read Airflow's own view of what ran from the metadata database
(``task_instance`` and ``task_instance_history``) and compare it with the ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TEST_DAGS = Path(__file__).resolve().parent / "airflow_dags" / "deploy"
TERMINAL_RUN_STATES = ("success", "failed")
#: The scheduler fails a running try whose supervisor has not heartbeaten for this long. Long:
#: under a CI's load a busy task's supervisor (or the one api-server worker that takes its
#: heartbeats) can miss a few seconds, and 8 s here failed tries that would have passed. A
#: test of the timeout itself shortens it for its own run (:meth:`Deployment.heartbeat_timeout`).
HEARTBEAT_TIMEOUT_S = 120
#: How a scheduler started for a test of the heartbeat timeout runs its tries: heartbeats every
#: second and a check for missed ones every 2 s (as every deployment did before), so that under
#: load only the try the test silences outlives its 8 s, and is found soon after.
HEARTBEAT_TEST_ENV = {"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
                      "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Try:
    """One try of a task instance as the metadata database has it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    ti_id: str
    state: str | None
    operator: str | None

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number)


@dataclass
class Deployment:
    home: Path
    metadata_dsn: str  # postgresql://… of the metadata database
    ledger_url: str
    spool: Path
    data: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: Process groups started, killed with everything left in them at the end.
    groups: list[int] = field(default_factory=list)
    api_port: int = 0

    # -- set-up ----------------------------------------------------------------------
    def configure(self, extra: dict[str, str] | None = None) -> None:
        self._end_transactions_left_open()
        dags = self.home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        for dag_file in TEST_DAGS.glob("*.py"):
            shutil.copy(dag_file, dags / dag_file.name)
        self.api_port = free_port()
        sa_url = self.metadata_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        self.env = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sa_url,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": sa_url,  # psycopg 3 does both; no asyncpg
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": "lineage-ledger-tests-secret",
            # The REST API without a login (the default simple auth manager, every user an
            # admin): runs are triggered through it (``trigger``), on loopback only.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": "lineage-ledger-tests-jwt-secret-0123456789",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            # A scheduler killed with -9 may leave tasks it had queued that no worker took; its
            # successor resets them once the dead one has missed heartbeats for this long and
            # the orphan check runs. The defaults (30 s, then every 300 s) would outlast the
            # tests' 180 s wait for a run; 20 s leaves a loaded scheduler (heartbeat every
            # second) room before it could be taken for dead.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
            # A running try's supervisor heartbeats the api-server this often (Airflow's default):
            # each heartbeat is a request and a database write, and at 1 s one running task cost
            # about 2 CPU-s a minute (api-server, supervisor, PostgreSQL) beside a 120 s timeout.
            # A try marked failed or success by hand learns it at its next heartbeat. The tests of
            # the timeout itself heartbeat every second (HEARTBEAT_TEST_ENV).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5",
            # Every task process imports its DAG file before the try starts, within Airflow's
            # 30 s; past it the start fails ("Dag not found during start up"), the try is put up
            # for reschedule, which a plain operator never leaves, and its run hangs. The CI of
            # stop 51 (three test processes on two cores) took 30.3 s over deploy_tries.py and
            # failed a test so. The DAG processor's own limit must stay above the import's.
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "150",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "180",
            # A task process reports its state, then runs the listener's hooks, and Airflow
            # kills it 20 s after that report (task_success_overtime). The plugin's own work
            # there is designed to fit well inside (flush_timeout; the tests of a locked
            # ledger time the hooks themselves), but on a machine loaded as that CI was a
            # killed try leaves its record to the scheduler's sweep, which knows less of it
            # (a retried try's state, say), and the tests asserting the task's own record fail.
            "AIRFLOW__CORE__TASK_SUCCESS_OVERTIME": "60",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "3",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__OPENLINEAGE__DISABLED": "True",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # the log server a killed scheduler leaves behind keeps its port: one per deployment,
            # never the shared default 8793
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LINEAGE_LEDGER__URL": self.ledger_url,
            "AIRFLOW__LINEAGE_LEDGER__SPOOL": str(self.spool),
            "LINEAGE_EXAMPLE_DATA": str(self.data),
            "HOME": str(self.home),  # nothing of Airflow's may land in the real home
            **(extra or {}),
        }

    def _end_transactions_left_open(self) -> None:
        """The metadata database ends a session left idle inside a transaction for 30 s.

        LocalExecutor forks its workers with the scheduler's database connections still open
        in them (Airflow's fork hook disposes the pool with ``close=False``). When the
        scheduler alone is killed with -9 inside a transaction, its orphaned workers keep
        that connection's socket open, so PostgreSQL never sees it end, and the row locks it
        held stay: the next scheduler skips that DAG run (``FOR UPDATE SKIP LOCKED``) for
        good. That failed CI twice, a run "still running after 180 s". A server setting
        operators use for exactly this; Airflow itself never idles in a transaction that long."""
        import psycopg

        with psycopg.connect(self.metadata_dsn, autocommit=True) as conn:
            name = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = \'30s\'')

    def migrate(self) -> None:
        """``airflow db migrate`` the metadata database, once per PostgreSQL server.

        The first deployment on a server migrates its database and keeps a copy as a
        template; the next one's database is made from that template (0.1 s against 4 s for
        a fresh Airflow that migrates). The migrated rows name no path or setting of the
        deployment (pg_dump of two migrations differ only in their timestamps)."""
        import psycopg

        server, _, name = self.metadata_dsn.rpartition("/")
        template = _migrated_templates.get(server)
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            if template is not None and not conn.execute(  # a later server on the same port
                    "SELECT 1 FROM pg_database WHERE datname = %s", (template,)).fetchone():
                template = None
        if template is None:
            self.cli("db", "migrate")
            with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}_migrated" TEMPLATE "{name}"')
            _migrated_templates[server] = f"{name}_migrated"
            return
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}"')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        self._end_transactions_left_open()  # a database's settings are not copied from its template

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LINEAGE_"))}
        full.update(self.env)
        full.update(extra or {})
        return full

    def cli(self, *args: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BIN / "airflow"), *args], env=self.environ(), capture_output=True,
                                text=True, timeout=timeout, cwd=self.home)
        if check and result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def start(self, *components: str, extra_env: dict[str, str] | None = None) -> None:
        """Start ``scheduler``, ``dag-processor`` and/or ``api-server`` (all three by default).

        All are started before the api-server is waited for: each takes seconds to import
        Airflow and come up, and the DAG processor parses the DAG folder meanwhile (started
        once the api-server answered, the DAGs were parsed about 4 s later)."""
        names = components or ("api-server", "dag-processor", "scheduler")
        for name in names:
            log = open(self.home / f"{name}.log", "ab")
            args = [str(BIN / "airflow"), name]
            if name == "api-server":
                args += ["--port", str(self.api_port), "--host", "127.0.0.1"]
            self.processes[name] = subprocess.Popen(
                args, env=self.environ(extra_env), stdout=log, stderr=subprocess.STDOUT, cwd=self.home,
                start_new_session=True,  # its own process group: its workers die with it
            )
            log.close()
            self.groups.append(self.processes[name].pid)
        if "api-server" in names:
            self.wait_for_api()
            self.warm_execution_api()

    def warm_execution_api(self, timeout: float = 300.0) -> None:
        """Have the api-server build its task execution API now, while the DAG processor parses.

        Airflow's execution API (a Cadwyn app) builds its versioned routes on its first request,
        seconds of CPU: left to the first task of a module, it held that task's first call
        (``PATCH .../run``) for 29 s at load 11, past the supervisor's 5 s timeout (it sent it
        again and again), and the module's first run waited for it. Any request builds it; the
        health route reads nothing and changes nothing."""
        url = f"http://127.0.0.1:{self.api_port}/execution/health"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            assert response.status == 200, response.status

    @contextmanager
    def heartbeat_timeout(self, seconds: int = 8) -> Iterator[None]:
        """The scheduler started again with a short heartbeat timeout for the block (a test
        of what Airflow does when a try's heartbeats stop), and with the deployment's own
        after it: every other test's tries keep the long one."""
        self.kill("scheduler")
        self.start("scheduler", extra_env={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(seconds),
                                           **HEARTBEAT_TEST_ENV})
        try:
            yield
        finally:
            self.kill("scheduler")
            self.start("scheduler")

    def wait_for_api(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=3) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            process = self.processes["api-server"]
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the api-server did not come up:\n{self.log_tail('api-server')}")
            time.sleep(0.5)

    def kill(self, name: str, sig: int = signal.SIGKILL, *, group: bool = True) -> None:
        """Signal a component: its whole process group, or (``group=False``) its main process
        alone, as ``kill -9 PID`` does; its LocalExecutor workers then live on as orphans."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        try:
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for name in ("scheduler", "dag-processor", "api-server"):
            self.kill(name, signal.SIGKILL)  # nothing to keep: a graceful stop takes 20 s
        for pgid in self.groups:  # orphans of a component killed alone
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def try_log(self, dag_id: str, run_id: str, task_id: str, attempt: int, chars: int = 4000) -> str:
        """The end of one try's task log (what its supervisor and task process said), for a
        failure message: empty where there is none."""
        path = (self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                / f"attempt={attempt}.log")
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- the metadata database -------------------------------------------------------
    def query(self, sql: str, *params: Any) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.metadata_dsn, autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180.0) -> None:
        """Wait until the dag-processor has serialized these DAGs."""
        wanted = set(dag_ids)
        deadline = time.monotonic() + timeout
        while True:
            try:
                have = {row[0] for row in self.query("SELECT dag_id FROM serialized_dag")}
            except Exception:  # noqa: BLE001 - the table appears with the migration
                have = set()
            if wanted <= have:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"DAGs {sorted(wanted - have)} were not parsed:\n{self.log_tail('dag-processor')}")
            time.sleep(1)

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> None:
        """A manual run, no logical date, as ``airflow dags trigger DAG --run-id RUN`` makes
        it, through the api-server's REST API: the CLI starts a fresh Airflow each time
        (about 4 s a run, against 0.2 s here)."""
        body = json.dumps({"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/api/v2/dags/{dag_id}/dagRuns",
                                         data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=180) as response:
                created = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"triggering {dag_id}/{run_id} failed: {err.code} {err.read()[:2000]!r}") from None
        assert created["dag_run_id"] == run_id and created["dag_id"] == dag_id, created

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{dag_id}/{run_id} still {state} after {timeout} s:\n{self.log_tail('scheduler')}")
            time.sleep(0.25)  # one query: a run's end is seen within a quarter second, not a second

    def wait_for(self, predicate, what: str, timeout: float = 120.0, every: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log_tail('scheduler')}")
            time.sleep(every)

    def tries(self, dag_id: str, run_id: str) -> list[Try]:
        """Every try of the run that started (try_number >= 1): the finished ones archived in
        ``task_instance_history``, the last one in ``task_instance``."""
        rows = self.query(
            "SELECT dag_id, run_id, task_id, map_index, try_number, CAST(task_instance_id AS text), state, operator"
            " FROM task_instance_history WHERE dag_id = %s AND run_id = %s"
            " UNION ALL SELECT dag_id, run_id, task_id, map_index, try_number, CAST(id AS text), state, operator"
            " FROM task_instance WHERE dag_id = %s AND run_id = %s",
            dag_id, run_id, dag_id, run_id,
        )
        return sorted((Try(*row) for row in rows if row[4] >= 1), key=lambda t: t.key)

    def task_pid(self, dag_id: str, run_id: str, task_id: str) -> int | None:
        rows = self.query(
            "SELECT pid FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s AND state = 'running'",
            dag_id, run_id, task_id)
        return rows[0][0] if rows and rows[0][0] else None


#: A migrated metadata database per PostgreSQL server (``postgresql://user@host:port``), by name.
_migrated_templates: dict[str, str] = {}


def airflow_key(record) -> tuple[str, str, str, int, int]:
    facts = record.extra["airflow"]
    return (facts["dag_id"], facts["run_id"], facts["task_id"], int(facts["map_index"]), int(facts["try_number"]))
