"""Test DAG: file:// Assets naming directories (issue 17): a BashOperator writes a directory
of per-sample files, a strict LedgerOperator reads it, another LedgerOperator writes one."""

from __future__ import annotations

import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ.get("LINEAGE_EXAMPLE_DATA", "/tmp/lineage-airflow-directories")).resolve()
DATA.mkdir(parents=True, exist_ok=True)
QC, SUMMARY, INDEX = DATA / "qc", DATA / "summary.txt", DATA / "index"


def summarize(qc: str, out: str) -> None:
    lines = [f"{name}: {(Path(qc) / name).read_text().strip()}" for name in sorted(os.listdir(qc))]
    Path(out).write_text("\n".join(lines) + "\n")


def build_index(summary: str, index: str) -> None:
    os.makedirs(index, exist_ok=True)
    for line in Path(summary).read_text().splitlines():
        name, value = line.split(": ", 1)
        (Path(index) / name).write_text(value + "\n")


with DAG(dag_id="ledger_directories", schedule=None, catchup=False) as dag:
    qc = BashOperator(
        task_id="qc",
        bash_command=f"mkdir -p '{QC}' && for s in A B C; do echo \"reads=$s\" > '{QC}'/$s.txt; done",
        outlets=[Asset(uri=f"file://{QC}")],
    )
    report = LedgerOperator(
        task_id="report", inputs=[QC], outputs=[SUMMARY], policy="strict",
        python_callable=summarize, op_kwargs={"qc": str(QC), "out": str(SUMMARY)},
    )
    index = LedgerOperator(  # a directory as a LedgerOperator's declared output
        task_id="index", inputs=[SUMMARY], outputs=[INDEX],
        python_callable=build_index, op_kwargs={"summary": str(SUMMARY), "index": str(INDEX)},
    )
    qc >> report >> index
