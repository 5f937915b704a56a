"""A hidden edit under the real scheduler: an intermediate file edited by hand (size and mtime
put back) whose ``ll_artifacts`` rows were deleted from the PostgreSQL ledger, met by a strict
pre-run check in a task process that LocalExecutor started, not in ``dag.test()``.

``tests/test_deleted_rows_engines.py`` shows it in process. Here the deployment of
``tests/support/airflow_deploy.py`` (scheduler, DAG processor and API server as separate
processes, PostgreSQL metadata database) runs three copies of one DAG, ``produce`` then two
consumers of its file: ``checked`` (a strict ``LedgerOperator``) and ``plain`` (a
``BashOperator`` with ``file://`` inlets, checked by the cluster policy under the
deployment's ``[lineage_ledger] policy = strict``). After a first run and a
``verify-lineage`` (which remembers the ledger's head and its names in the deployment's
state directory, as any reader there would), each copy runs again without ``produce``
(it exits 99: skipped, so it neither rewrites nor vouches for the file):

* ``rows_clean``: nothing changed; both consumers run (the strict check passes a good file);
* ``rows_edited``: the file edited; both refuse it as MODIFIED (the rows name its producer);
* ``rows_deleted``: the file edited and every row naming it deleted; both refuse it as
  tampered ("left out record"), and the ledger records both tries as refused.

What notices the deleted rows is the names kept beside the verified tree
(``core/_log/names.py``). Run this file with ``LINEAGE_AUDIT_NAMES=0`` (passed on to every
process of the deployment and to ``verify-lineage``) and ``rows_deleted`` fails: the file
passes as a source nobody recorded and both consumers run on the edit.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.airflow_deploy import BIN, Deployment
from tests.support.airflow_site import airflow_installed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]

CASES = ("clean", "edited", "deleted")
CONSUMERS = ("checked", "plain")

# The DAG file, written into the deployment's own DAG folder (one file, three DAGs, each on
# a data directory of its own). Run 2 is triggered with {"produce": false}: ``produce`` then
# exits 99, which BashOperator takes for a skip; the consumers run after a skipped upstream.
DAG_FILE = '''
import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()

for case in ("clean", "edited", "deleted"):
    here = DATA / case
    mid, checked_out, plain_out = here / "mid.txt", here / "checked.txt", here / "plain.txt"
    with DAG(dag_id=f"rows_{case}", schedule=None, catchup=False, params={"produce": True}):
        produce = BashOperator(
            task_id="produce",
            bash_command="{% if params.produce %}printf 'value 41\\\\n' > '" + str(mid) + "'{% else %}exit 99{% endif %}",
            outlets=[Asset(uri=f"file://{mid}")],
        )
        checked = LedgerOperator(
            task_id="checked", inputs=[mid], outputs=[checked_out], policy="strict",
            bash_command=f"cat '{mid}' > '{checked_out}'", trigger_rule="none_failed",
        )
        plain = BashOperator(
            task_id="plain", bash_command=f"cat '{mid}' > '{plain_out}'", trigger_rule="none_failed",
            inlets=[Asset(uri=f"file://{mid}")], outlets=[Asset(uri=f"file://{plain_out}")],
        )
        produce >> [checked, plain]
'''

#: The names switch (see the module's docstring): the deployment drops the caller's LINEAGE_ settings.
NAMES_SWITCH = {k: v for k, v in os.environ.items() if k == "LINEAGE_AUDIT_NAMES"}


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres_server):
    base = tmp_path_factory.mktemp("airflow-deleted-rows")
    site = Deployment(home=base / "home", metadata_dsn=postgres_server.create_database(),
                      ledger_url=postgres_server.create_database(), spool=base / "spool", data=base / "data")
    for case in CASES:
        (site.data / case).mkdir(parents=True)
    site.configure({"XDG_STATE_HOME": str(base / "state"), "AIRFLOW__LINEAGE_LEDGER__POLICY": "strict",
                    **NAMES_SWITCH})
    dags = Path(site.env["AIRFLOW__CORE__DAGS_FOLDER"])
    for other in dags.glob("*.py"):  # the deployment tests' DAGs: not needed here, parsed for nothing
        other.unlink()
    (dags / "deleted_rows.py").write_text(DAG_FILE)
    config = site.home / "config"  # on the path of every Airflow process: the cluster policy
    config.mkdir(parents=True, exist_ok=True)
    (config / "airflow_local_settings.py").write_text("from lineage_ledger_airflow.policy import task_policy  # noqa: F401\n")
    site.cli("db", "migrate")
    site.start()
    try:
        site.wait_for_dags([f"rows_{case}" for case in CASES])
        yield site
    finally:
        site.stop()


def tamper_keep_size_and_mtime(path: Path) -> None:
    """Change one digit in place and put the mtime back: size and mtime say nothing changed."""
    stat = path.stat()
    content = path.read_bytes()
    assert content == b"value 41\n"
    path.write_bytes(b"value 42\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size


def ledger_query(site: Deployment, sql: str, *params) -> list[tuple]:
    """The ledger's tables read straight: opening the ledger would check it, and fail."""
    import psycopg

    with psycopg.connect(site.ledger_url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


def ledger_records(site: Deployment, dag_id: str, run_id: str) -> dict[str, list[dict]]:
    """The records of one DAG run by task id, in ledger order."""
    rows = ledger_query(site, "SELECT body FROM ll_records WHERE run_id = %s ORDER BY seq", f"{dag_id}/{run_id}")
    found: dict[str, list[dict]] = {}
    for (body,) in rows:
        record = json.loads(bytes(body))
        found.setdefault(record["extra"]["airflow"]["task_id"], []).append(record)
    return found


def wait_for_records(site: Deployment, dag_id: str, run_id: str, tasks: set[str]) -> dict[str, dict]:
    """The one record of each of ``tasks`` (the shipper in the scheduler ships the task
    processes' records every 2 s)."""
    found = site.wait_for(lambda: (have := ledger_records(site, dag_id, run_id)) and set(have) >= tasks and have,
                          f"the records of {dag_id}/{run_id}", timeout=90)
    assert {task: len(found[task]) for task in tasks} == dict.fromkeys(tasks, 1), found
    return {task: found[task][0] for task in tasks}


def assert_refused(record: dict, path: Path, because: str) -> None:
    """A try refused before it ran: failed, the reason given, and it vouches for no version
    of the file (it read nothing and wrote nothing; the file is named as refused)."""
    assert record["status"] == "failed" and because in record["extra"]["airflow"]["error"], record["extra"]
    assert record["inputs"] == {} and record["outputs"] == {}, record
    assert list(record["extra"]["refused_inputs"]) == [str(path)], record["extra"]


def run_all(site: Deployment, run_id: str, conf: dict) -> dict[str, str]:
    for case in CASES:
        site.cli("dags", "trigger", f"rows_{case}", "--run-id", run_id, "--conf", json.dumps(conf), timeout=180)
    return {case: site.wait_for_run(f"rows_{case}", run_id) for case in CASES}


def states(site: Deployment, dag_id: str, run_id: str) -> dict[str, str]:
    rows = site.query("SELECT task_id, state FROM task_instance WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
    return dict(rows)


def task_log(site: Deployment, dag_id: str, run_id: str, task_id: str) -> str:
    return (site.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
            / "attempt=1.log").read_text(errors="replace")


def verify(site: Deployment, *paths: Path) -> subprocess.CompletedProcess:
    """``verify-lineage`` in the deployment's environment (its state directory: the head and
    names it verifies are the ones the task processes' checks start from)."""
    return subprocess.run([str(BIN / "verify-lineage"), "--ledger", site.ledger_url, *map(str, paths)],
                          env=site.environ(), cwd=site.home, capture_output=True, text=True, timeout=120)


def test_strict_refuses_under_the_scheduler_an_edit_whose_rows_were_deleted(site):
    assert run_all(site, "first", {}) == dict.fromkeys(CASES, "success")
    mids = {case: site.data / case / "mid.txt" for case in CASES}
    outs = {case: [site.data / case / f"{task}.txt" for task in CONSUMERS] for case in CASES}
    for case in CASES:
        wait_for_records(site, f"rows_{case}", "first", {"produce", *CONSUMERS})
        assert [p.read_text() for p in outs[case]] == ["value 41\n"] * 2
    checked = verify(site, *(p for case in CASES for p in outs[case]))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    tamper_keep_size_and_mtime(mids["edited"])
    tamper_keep_size_and_mtime(mids["deleted"])
    deleted = ledger_query(site, "DELETE FROM ll_artifacts WHERE path = %s RETURNING role", str(mids["deleted"]))
    assert sorted(role for (role,) in deleted) == [0, 0, 1], deleted  # produce wrote it, both consumers read it
    written = {case: [p.stat().st_mtime_ns for p in outs[case]] for case in CASES}

    assert run_all(site, "second", {"produce": False}) == {"clean": "success", "edited": "failed", "deleted": "failed"}
    for case in CASES:
        assert states(site, f"rows_{case}", "second") == {
            "produce": "skipped", **dict.fromkeys(CONSUMERS, "success" if case == "clean" else "failed")}

    # The control: a strict check passes a file nothing changed; both consumers ran on it again.
    assert [p.stat().st_mtime_ns for p in outs["clean"]] != written["clean"]
    records = wait_for_records(site, "rows_clean", "second", set(CONSUMERS))
    assert [records[t]["status"] for t in CONSUMERS] == ["succeeded"] * 2

    # The edit alone: the rows name its producer, whose digest it no longer has.
    assert [p.stat().st_mtime_ns for p in outs["edited"]] == written["edited"], "a consumer ran on the edit"
    records = wait_for_records(site, "rows_edited", "second", set(CONSUMERS))
    for task in CONSUMERS:
        text = task_log(site, "rows_edited", "second", task)
        assert "lineage-ledger refused to run rows_edited." + task in text, text[-3000:]
        assert f"{mids['edited']}: MODIFIED since it was last written" in text, text[-3000:]
        assert_refused(records[task], mids["edited"], "MODIFIED since it was last written")

    # The edit with its rows deleted: no row names the file any more, and only the names kept
    # beside the verified tree say which records did. Without them it passed as a source.
    assert [p.stat().st_mtime_ns for p in outs["deleted"]] == written["deleted"], "a consumer ran on the hidden edit"
    records = wait_for_records(site, "rows_deleted", "second", set(CONSUMERS))
    for task in CONSUMERS:
        text = task_log(site, "rows_deleted", "second", task)
        assert "lineage-ledger refused to run rows_deleted." + task in text, text[-3000:]
        assert "left out record" in text and str(mids["deleted"]) in text, text[-3000:]
        assert "IndexTampered" in text, text[-3000:]  # the check's own error, chained
        assert_refused(records[task], mids["deleted"], "left out record")
    # Nor did the refusals give the file an index row again, with its edited digest.
    assert not ledger_query(site, "SELECT 1 FROM ll_artifacts WHERE path = %s", str(mids["deleted"]))
