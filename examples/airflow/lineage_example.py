"""Example DAG: LedgerOperator tasks and a plain BashOperator, all in the ledger.

    source.csv --extract (LedgerOperator, shell)--> raw.csv
    raw.csv --summarize (plain BashOperator, file:// inlets/outlets)--> counts.txt
    raw.csv --report (LedgerOperator, Python)--> report.txt
    counts.txt + report.txt --combine (LedgerOperator, Python)--> final.txt

The data directory is $LINEAGE_EXAMPLE_DATA (default /tmp/lineage-airflow-example); the
DAG writes source.csv there if it is missing. Run it with::

    airflow dags test lineage_example
    verify-lineage --ledger "$AIRFLOW_HOME/lineage/ledger.db" /tmp/lineage-airflow-example/final.txt
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ.get("LINEAGE_EXAMPLE_DATA", "/tmp/lineage-airflow-example")).resolve()
SOURCE, RAW, COUNTS, REPORT, FINAL = (DATA / n for n in ("source.csv", "raw.csv", "counts.txt", "report.txt", "final.txt"))
ROWS = int(os.environ.get("LINEAGE_EXAMPLE_ROWS", "1000"))


def make_source() -> None:
    """The raw data a real pipeline would receive; written once, then left alone."""
    DATA.mkdir(parents=True, exist_ok=True)
    if not SOURCE.exists():
        lines = [f"sample-{(i * 7919) % ROWS:06d},{(i * 104729) % 997}" for i in range(ROWS)]
        SOURCE.write_text("id,value\n" + "\n".join(lines) + "\n")


def write_report(raw: str, report: str) -> int:
    values = [int(line.split(",")[1]) for line in Path(raw).read_text().splitlines()[1:] if line]
    Path(report).write_text(f"rows {len(values)}\nsum {sum(values)}\nmax {max(values, default=0)}\n")
    return len(values)


def combine(counts: str, report: str, final: str) -> None:
    Path(final).write_text("== counts ==\n" + Path(counts).read_text() + "== report ==\n" + Path(report).read_text())


make_source()

with DAG(dag_id="lineage_example", schedule=None, catchup=False, tags=["lineage-ledger"]) as dag:
    extract = LedgerOperator(
        task_id="extract",
        inputs=[SOURCE], outputs=[RAW],
        bash_command=f"(head -n 1 '{SOURCE}' && tail -n +2 '{SOURCE}' | sort) > '{RAW}'",
    )
    summarize = BashOperator(
        task_id="summarize",
        bash_command=f"cut -d, -f2 '{RAW}' | tail -n +2 | sort -n | uniq -c | wc -l > '{COUNTS}'",
        inlets=[Asset(uri=f"file://{RAW}")], outlets=[Asset(uri=f"file://{COUNTS}")],
    )
    report = LedgerOperator(
        task_id="report",
        inputs=[RAW], outputs=[REPORT],
        python_callable=write_report, op_kwargs={"raw": str(RAW), "report": str(REPORT)},
    )
    final = LedgerOperator(
        task_id="combine",
        inputs=[COUNTS, REPORT], outputs=[FINAL],
        python_callable=combine, op_kwargs={"counts": str(COUNTS), "report": str(REPORT), "final": str(FINAL)},
    )
    extract >> [summarize, report] >> final
