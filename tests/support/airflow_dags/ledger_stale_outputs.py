"""Test DAG: failed tries, one that leaves an earlier run's outlet untouched and one that writes."""

from __future__ import annotations

import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset

DATA = Path(os.environ.get("LINEAGE_EXAMPLE_DATA", "/tmp/lineage-airflow-stale")).resolve()
DATA.mkdir(parents=True, exist_ok=True)
STALE, FRESH = DATA / "stale.txt", DATA / "fresh.txt"

with DAG(dag_id="ledger_stale_outputs", schedule=None, catchup=False) as dag:
    # Fails before writing: the stale.txt an earlier run left is not this try's output.
    quiet = BashOperator(task_id="fails_quietly", bash_command="exit 3",
                         outlets=[Asset(uri=f"file://{STALE}")])
    # Fails after writing: fresh.txt is its (failed) output.
    noisy = BashOperator(task_id="fails_after_writing", bash_command=f"echo partial > '{FRESH}'; exit 4",
                         outlets=[Asset(uri=f"file://{FRESH}")])
