"""Test DAG: a task that fails once and then succeeds, and one that fails every try."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset

DATA = Path(os.environ.get("LINEAGE_EXAMPLE_DATA", "/tmp/lineage-airflow-retries")).resolve()
DATA.mkdir(parents=True, exist_ok=True)
SEED, FLAKY_OUT, BROKEN_OUT = DATA / "seed.txt", DATA / "flaky.txt", DATA / "broken.txt"
if not SEED.exists():
    SEED.write_text("seed\n")

with DAG(dag_id="ledger_retries", schedule=None, catchup=False) as dag:
    # The first try leaves a marker and fails; the second finds it and succeeds.
    flaky = BashOperator(
        task_id="flaky",
        bash_command=f"if [ -e '{DATA}/tried' ]; then cp '{SEED}' '{FLAKY_OUT}'; else touch '{DATA}/tried'; exit 3; fi",
        inlets=[Asset(uri=f"file://{SEED}")], outlets=[Asset(uri=f"file://{FLAKY_OUT}")],
        retries=1, retry_delay=timedelta(0),
    )
    broken = BashOperator(
        task_id="broken",
        bash_command=f"echo partial > '{BROKEN_OUT}'; exit 7",
        inlets=[Asset(uri=f"file://{SEED}")], outlets=[Asset(uri=f"file://{BROKEN_OUT}")],
        retries=1, retry_delay=timedelta(0),
    )
    after_broken = BashOperator(task_id="after_broken", bash_command="true")
    broken >> after_broken
