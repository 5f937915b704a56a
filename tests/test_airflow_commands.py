"""Tasks run by ``airflow`` commands in the command's own process: ``airflow tasks test`` (one
task run by hand, as a DAG's author does to try a task out or to remake one file) and
``airflow dags test`` with a task that overruns its ``execution_timeout``.

The task really runs and writes its outlets, so the ledger must hold it: else the file it
wrote reads as changed outside the workflow (``verify-lineage`` fails, and a strict consumer
refuses it). Airflow gives such a run no try of its own: on a temporary run (no run id given)
the try number is 0, which the plugin took for "never started"; on an existing run it is that
run's last try, whose record the plugin took it for. The site is the session's migrated
Airflow site (``tests/support/airflow_site.py``), the command a real ``airflow`` process.

A ``LedgerOperator`` command that overruns its ``execution_timeout`` fails its try; the
command's own children must end with it, as ``BashOperator``'s do. Before, only ``bash`` was
killed: a program it had started ran on and wrote the declared output after the try was
recorded failed, with ``outputs_not_written`` naming that very file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.airflow_site import AirflowSite, airflow_installed, make_site, private_airflow_home

private_airflow_home()  # before anything imports Airflow

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]

DAG_ID = "tasks_test_stamp"
DAG_FILE = f'''
import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ.get("LINEAGE_EXAMPLE_DATA", "/tmp/lineage-airflow-example")).resolve()

with DAG(dag_id="{DAG_ID}", schedule=None, catchup=False):
    # Each run writes other bytes: a file made again is told apart from the one before.
    BashOperator(task_id="stamp", outlets=[Asset(uri=f"file://{{DATA}}/stamp.txt")],
                 bash_command=f"mkdir -p '{{DATA}}' && date +%s%N > '{{DATA}}/stamp.txt'")

with DAG(dag_id="commands_policy", schedule=None, catchup=False):
    # A plain operator reading a file whose name is not UTF-8, under the cluster policy.
    BashOperator(task_id="read", inlets=[Asset(uri=f"file://{{DATA}}/in-%FF")],
                 outlets=[Asset(uri=f"file://{{DATA}}/read.txt")],
                 bash_command=f"cat '{{DATA}}'/in-$'\\\\xff' > '{{DATA}}/read.txt'")

with DAG(dag_id="commands_timeout", schedule=None, catchup=False):
    # A subshell the command starts (a process of its own) overruns the task's time.
    LedgerOperator(task_id="slow", outputs=[str(DATA / "late.txt")], execution_timeout=timedelta(seconds=2),
                   bash_command=f"mkdir -p '{{DATA}}'; (echo $BASHPID > '{{DATA}}/late.pid'; sleep 20; "
                                f"echo late > '{{DATA}}/late.txt'); echo done")
'''


@pytest.fixture(scope="module")
def site():
    site = make_site(private_airflow_home())
    dag_file = site.dags / f"{DAG_ID}.py"
    dag_file.write_text(DAG_FILE)
    yield site
    dag_file.unlink(missing_ok=True)


def settings(tmp_path: Path) -> dict[str, str]:
    return {"AIRFLOW__LINEAGE_LEDGER__URL": f"sqlite:///{tmp_path}/ledger.db",
            "AIRFLOW__LINEAGE_LEDGER__SPOOL": str(tmp_path / "spool"),
            "LINEAGE_EXAMPLE_DATA": str(tmp_path / "data"),
            "AIRFLOW__OPENLINEAGE__DISABLED": "True"}


def airflow(site: AirflowSite, env: dict[str, str], *args: str) -> str:
    result = site.cli(*args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def records(env: dict[str, str]) -> list:
    """The ledger's records as the command left them (the spool not replayed: it shipped them)."""
    with open_ledger(env["AIRFLOW__LINEAGE_LEDGER__URL"], spool=env["AIRFLOW__LINEAGE_LEDGER__SPOOL"],
                     replay=False) as ledger:
        return sorted((r.record for r in ledger.recent(100)), key=lambda r: r.ended)


def verified(env: dict[str, str], path: Path) -> int:
    return run_cli("--ledger", env["AIRFLOW__LINEAGE_LEDGER__URL"], str(path), program="verify-lineage",
                   cwd=path.parent).returncode


def test_a_task_run_by_airflow_tasks_test_is_recorded(site, tmp_path):
    env = settings(tmp_path)
    airflow(site, env, "tasks", "test", DAG_ID, "stamp")
    stamp = tmp_path / "data" / "stamp.txt"
    assert stamp.exists()
    [record] = records(env)
    assert record.status == "succeeded" and list(record.outputs) == [str(stamp)]
    assert record.attempt == 1 and record.extra["airflow"]["test_mode"] is True
    assert verified(env, stamp) == 0


def test_airflow_tasks_test_on_an_existing_run_is_a_record_of_its_own(site, tmp_path):
    env = settings(tmp_path)
    airflow(site, env, "dags", "test", DAG_ID, "2026-01-01")
    stamp = tmp_path / "data" / "stamp.txt"
    [first] = records(env)
    assert verified(env, stamp) == 0
    before = stamp.read_bytes()
    run_id = first.extra["airflow"]["run_id"]
    airflow(site, env, "tasks", "test", DAG_ID, "stamp", run_id)
    assert stamp.read_bytes() != before  # made again
    again = records(env)
    assert [r.extra["airflow"].get("test_mode", False) for r in again] == [False, True], again
    assert again[1].extra["airflow"]["run_id"] == run_id and again[1].id != first.id
    assert verified(env, stamp) == 0  # the file as the test run made it is vouched for
    # and a second one is a record of its own too
    airflow(site, env, "tasks", "test", DAG_ID, "stamp", run_id)
    assert len(records(env)) == 3 and verified(env, stamp) == 0
    assert os.path.exists(stamp)


def test_a_timed_out_commands_children_end_with_its_try(site, tmp_path):
    env = settings(tmp_path)
    result = site.cli("dags", "test", "commands_timeout", env=env)
    assert result.returncode != 0  # the run failed
    assert "AirflowTaskTimeout" in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    late = tmp_path / "data" / "late.txt"
    [record] = records(env)
    assert record.status == "failed" and record.extra["outputs_not_written"] == [str(late)]
    # The program would have written the file 20 s after it started: wait that long and more,
    # or until the subshell that would write it (its pid written first) has ended: then
    # nothing can write it any more.
    pid_file = tmp_path / "data" / "late.pid"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not late.exists() and _running(pid_file):
        time.sleep(0.2)
    assert not late.exists(), "the timed-out command's child wrote its output after the try was recorded failed"


def _running(pid_file: Path) -> bool:
    """Whether the process whose pid ``pid_file`` holds still runs (a zombie has ended); True
    while the file is not there or not complete, so that only the deadline ends the wait."""
    try:
        with open(f"/proc/{int(pid_file.read_text())}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except ValueError:
        return True
    except FileNotFoundError:
        return not pid_file.exists()


@pytest.mark.parametrize("policy", ["strict", "warn"])
def test_the_cluster_policy_and_an_inlet_whose_name_is_not_utf8(site, tmp_path, policy):
    """Under the cluster policy, strict refuses a plain operator whose inlet no record can name,
    before its command runs, naming the file; warn runs it, and its record lists the file in
    not_utf8_files."""
    env = settings(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    with open(os.fsencode(data) + b"/in-\xff", "w") as handle:
        handle.write("input\n")
    settings_dir = tmp_path / "local_settings"
    settings_dir.mkdir()
    (settings_dir / "airflow_local_settings.py").write_text(
        "from lineage_ledger_airflow.policy import task_policy  # noqa: F401\n")
    env.update({"AIRFLOW__LINEAGE_LEDGER__POLICY": policy, "PYTHONPATH": str(settings_dir)})
    result = site.cli("dags", "test", "commands_policy", env=env)
    said = result.stdout + result.stderr
    shown = f"{data}/in-\\xff"
    [record] = records(env)
    assert record.extra["not_utf8_files"] == {"inputs": [shown], "outputs": []}
    if policy == "strict":
        assert result.returncode != 0 and "lineage-ledger refused to run commands_policy.read" in said, said[-3000:]
        assert not (data / "read.txt").exists()
        assert record.status == "failed" and record.extra["refused_by"] == "strict"
    else:
        assert result.returncode == 0, said[-3000:]
        assert (data / "read.txt").read_text() == "input\n"
        assert record.status == "succeeded" and list(record.outputs) == [str(data / "read.txt")]
