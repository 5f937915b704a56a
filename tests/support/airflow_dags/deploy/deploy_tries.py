"""Deployment test DAG: a retry, mapped tasks, an EmptyOperator, a failure that leaves an
earlier run's outlet alone, and the processes' pids (kill -9, heartbeat timeout)."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset

DATA = Path(os.environ.get("LINEAGE_EXAMPLE_DATA", "/tmp/lineage-airflow-deploy")).resolve()
SEED, PRODUCED, DOOMED = DATA / "seed.txt", DATA / "produced.txt", DATA / "doomed.txt"


def _file(path: Path) -> Asset:
    return Asset(uri=f"file://{path}")


with DAG(dag_id="deploy_tries", schedule=None, catchup=False) as tries:
    produce = BashOperator(
        task_id="produce", bash_command=f"cat '{SEED}' > '{PRODUCED}'; echo more >> '{PRODUCED}'",
        inlets=[_file(SEED)], outlets=[_file(PRODUCED)],
    )
    # Fails on its first try, succeeds on the second.
    flaky = BashOperator(
        task_id="flaky", bash_command="[ {{ ti.try_number }} -ge 2 ] || exit 3",
        inlets=[_file(PRODUCED)], retries=1, retry_delay=timedelta(0),
    )
    mapped = BashOperator.partial(task_id="mapped", bash_command="echo $N").expand(
        env=[{"N": "1"}, {"N": "2"}, {"N": "3"}])
    # Completed by the scheduler itself: no task process ever runs it.
    join = EmptyOperator(task_id="join")
    # Fails without writing its outlet, which an earlier run left behind.
    doomed = BashOperator(task_id="doomed", bash_command="exit 5", inlets=[_file(SEED)], outlets=[_file(DOOMED)])
    produce >> [flaky, mapped] >> join


def _sleep_on_first_try(ti, **_):
    if ti.try_number == 1:
        time.sleep(300)  # killed with kill -9 by the test


with DAG(dag_id="deploy_kill", schedule=None, catchup=False) as kill:
    PythonOperator(task_id="victim", python_callable=_sleep_on_first_try, retries=1, retry_delay=timedelta(0))


def _stop_the_supervisor(ti, **_):
    """Try 1 stops its supervisor (no more heartbeats) and waits until it runs again."""
    if ti.try_number == 1:
        os.kill(os.getppid(), signal.SIGSTOP)
        time.sleep(60)


with DAG(dag_id="deploy_heartbeat", schedule=None, catchup=False) as heartbeat:
    PythonOperator(task_id="silent", python_callable=_stop_the_supervisor, retries=1, retry_delay=timedelta(0))


with DAG(dag_id="deploy_many", schedule=None, catchup=False) as many:
    # Tasks finishing while the ledger is down or locked.
    for index in range(4):
        out = DATA / f"many-{index}.txt"
        BashOperator(task_id=f"step{index}", bash_command=f"echo {index} > '{out}'", outlets=[_file(out)])


with DAG(dag_id="deploy_bench", schedule=None, catchup=False) as bench:
    # bench/bench_airflow.py: short tasks, each reading one file and writing another (8, or
    # as many as its deployment's LINEAGE_BENCH_TASKS says: fewer in its --quick smoke run).
    for index in range(int(os.environ.get("LINEAGE_BENCH_TASKS", "8"))):
        out = DATA / f"bench-{index}.txt"
        BashOperator(task_id=f"t{index}", bash_command=f"cat '{SEED}' > '{out}'",
                     inlets=[_file(SEED)], outlets=[_file(out)])
