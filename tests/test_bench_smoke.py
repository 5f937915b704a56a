"""The benchmark scripts still run against the current API (tiny sizes; figures not checked).

A script that starts one of the services the test processes take turns with (an Airflow
site, a Fabric network, a BAASH job, a Nextflow JVM: conftest's ``SERVICE_GROUPS``, named in
the script's name) is run by its own test, in that service's group (conftest's ``_work_unit``
reads the script in the test's id): it never runs beside another such service in the other
test process, nor beside a second script.

The others each keep about one core busy, so two run at a time, in the order their tests
will run (``session.items``, after pytest-randomly's shuffle), and each test waits for its
own. A test therefore waits no longer than its script takes, as when it ran the script
itself. Each script has a home and a state directory of its own, as each test has
(conftest's ``private_state``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import SERVICE_GROUPS

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
#: Run by their own tests, each in its service's group.
SERVICE_SCRIPTS = [script for script in SCRIPTS if any(service in script for service in SERVICE_GROUPS)]
#: Run two at a time by the module's runner.
OTHER_SCRIPTS = [script for script in SCRIPTS if script not in SERVICE_SCRIPTS]
#: Scripts at once: the machine's cores, at most two (the figures are not checked here).
JOBS = max(1, min(2, os.cpu_count() or 1))
#: Seconds one script may take, as before.
SCRIPT_TIMEOUT = 300
#: The scale benchmarks build their ledgers once into one cache directory in /tmp (by
#: default), with no lock: two of them at once would build (and remove) the same directory.
#: They take turns, and each keeps the cache the one before it built, as when all ran in turn.
SHARED_CACHE = frozenset(script for script in SCRIPTS if "lineage-bench-scale" in (BENCH / script).read_text())


def extra_args(script: str, home: Path) -> list[str]:
    """Flags after ``--quick --repeats 1`` for the scripts whose quick sizes are a minute of
    work here: bench_export's (2,000 and 10,000 records, each exported four ways in fresh
    processes) took 48 s, the longest but one. One run of 1,001 records takes the same paths
    (more than a PROV page of 200 tasks, more than one block of 1,000; a second, smaller size
    ran the same six processes again: 13.3 s of CPU with 201 and 1,001, 9.9 s with 1,001 alone,
    at load 8-9), in a ledger built in the script's own home rather than the shared /tmp cache
    (as on a fresh machine)."""
    if script == "bench_export.py":
        return ["--sizes", "1001", "--cache", str(home / "export-cache")]
    return []


def start_script(script: str, home: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """``script --quick --repeats 1`` in a process group of its own (a script that runs out of
    time goes with what it started), with ``home`` as its home and state directory."""
    env = {k: v for k, v in os.environ.items() if k != "LINEAGE_STATE_DIR"}
    env.update(extra_env or {})
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local" / "share"), XDG_STATE_HOME=str(home / "state"))
    command = [sys.executable, str(BENCH / script), "--quick", "--repeats", "1", *extra_args(script, home)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_script(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish_script(script: str, process: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for a script (killed after SCRIPT_TIMEOUT seconds) and return what it did."""
    try:
        out, err = process.communicate(timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_script(process)
        out, err = process.communicate()
        err += f"\n[bench smoke: {script} still running after {SCRIPT_TIMEOUT} s; killed]"
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    # Every script ends with its verdict; one that measures without a target says so.
    assert any(v in result.stdout for v in ("GOAL MET", "GOAL MISSED", "NO GOAL")), result.stdout


class Runner:
    """Runs the scripts ``JOBS`` at a time in the order given; ``result(script)`` waits for one."""

    def __init__(self, order: list[str], homes: dict[str, Path]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="bench-smoke")
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._closed = False
        self._cache_turn = threading.Lock()  # held by the SHARED_CACHE script that runs
        self._futures: dict[str, Future] = {script: self._pool.submit(self._run, script, homes[script])
                                            for script in order}

    def _run(self, script: str, home: Path) -> subprocess.CompletedProcess:
        if script in SHARED_CACHE:
            with self._cache_turn:
                return self._run_now(script, home)
        return self._run_now(script, home)

    def _run_now(self, script: str, home: Path) -> subprocess.CompletedProcess:
        with self._lock:
            if self._closed:
                raise RuntimeError("the bench smoke module ended before this script started")
            process = start_script(script, home)
            self._running.add(process)
        try:
            return finish_script(script, process)
        finally:
            with self._lock:
                self._running.discard(process)

    def result(self, script: str) -> subprocess.CompletedProcess:
        return self._futures[script].result(timeout=SCRIPT_TIMEOUT + 60)

    def close(self) -> None:
        """Nothing outlives the module: scripts not started are dropped, running ones killed."""
        with self._lock:
            self._closed = True
            for process in self._running:
                kill_script(process)
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def runner(request, tmp_path_factory):
    here = request.node.path
    order = []  # this module's tests, in the order the session runs them
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.path == here and callspec is not None and callspec.params.get("script") in OTHER_SCRIPTS:
            order.append(callspec.params["script"])
    order = list(dict.fromkeys(order))
    homes = {script: tmp_path_factory.mktemp(f"home-{script.removesuffix('.py')}") for script in order}
    runner = Runner(order, homes)
    yield runner
    runner.close()


@pytest.mark.slow
@pytest.mark.parametrize("script", OTHER_SCRIPTS)
def test_benchmark_runs_quick(script, runner):
    assert_ran(runner.result(script))


def service_env(script: str, request, tmp_path: Path) -> dict[str, str]:
    """What a service's script is given from the test process. bench_airflow.py: a metadata
    database already migrated, made from the template the Airflow tests in this process share
    (``Deployment.migrate``: the first migrates it, the others copy it in 0.1 s), in the
    session's PostgreSQL server, instead of a server of its own and ``airflow db migrate``
    (6.4 s of CPU, 18 s at load 7, and 4 s more to start and remove the server): what the
    script then runs, its whole deployment and both variants, is as before."""
    if script != "bench_airflow.py":
        return {}
    from tests.support.airflow_deploy import Deployment

    server = request.getfixturevalue("postgres_server")
    base = tmp_path / "metadata"
    site = Deployment(home=base / "home", metadata_dsn=server.create_database(), ledger_url=f"sqlite:///{base}/unused.db",
                      spool=base / "spool", data=base / "data")
    site.configure()
    site.migrate()
    return {"LINEAGE_BENCH_AIRFLOW_METADATA": site.metadata_dsn}


@pytest.mark.slow
@pytest.mark.timeout(SCRIPT_TIMEOUT + 60)
@pytest.mark.parametrize("script", SERVICE_SCRIPTS)
def test_service_benchmark_runs_quick(script, request, tmp_path):
    process = start_script(script, tmp_path, service_env(script, request, tmp_path))
    try:
        result = finish_script(script, process)
    finally:
        kill_script(process)  # what it started, whatever ended the test
    assert_ran(result)
