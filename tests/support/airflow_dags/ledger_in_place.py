"""Test DAG: files updated in place, read with one digest and written with another."""

from __future__ import annotations

import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ.get("LINEAGE_EXAMPLE_DATA", "/tmp/lineage-airflow-in-place")).resolve()
DATA.mkdir(parents=True, exist_ok=True)
BASH_LOG, PYTHON_LOG = DATA / "bash.log", DATA / "python.log"
for log_file in (BASH_LOG, PYTHON_LOG):
    if not log_file.exists():
        log_file.write_text("first line\n")


def append_line(path: str) -> None:
    with open(path, "a") as handle:
        handle.write("appended by python\n")


with DAG(dag_id="ledger_in_place", schedule=None, catchup=False) as dag:
    BashOperator(
        task_id="append_bash",
        bash_command=f"echo 'appended by bash' >> '{BASH_LOG}'",
        inlets=[Asset(uri=f"file://{BASH_LOG}")], outlets=[Asset(uri=f"file://{BASH_LOG}")],
    )
    LedgerOperator(
        task_id="append_python",
        inputs=[PYTHON_LOG], outputs=[PYTHON_LOG],
        python_callable=append_line, op_kwargs={"path": str(PYTHON_LOG)},
    )
