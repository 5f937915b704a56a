"""A hidden edit under the real scheduler: an intermediate file edited by hand (size and mtime
put back) whose ``ll_artifacts`` rows were deleted from the PostgreSQL ledger, met by a strict
pre-run check in a task process that LocalExecutor started, not in ``dag.test()``.

``tests/test_deleted_rows_engines.py`` shows it in process. Here the deployment of
``tests/support/airflow_deploy.py`` (scheduler, DAG processor and API server as separate
processes, PostgreSQL metadata database) runs three copies of one DAG, ``produce`` then
consumers of its file: ``checked`` (a strict ``LedgerOperator``), ``plain`` (a
``BashOperator`` with ``file://`` inlets) and ``mapped`` (the same, mapped over two commands),
the last two checked by the cluster policy under the deployment's ``[lineage_ledger] policy =
strict``. After a first run and a ``verify-lineage`` (which remembers the ledger's head and
its names in the deployment's state directory, as any reader there would), each copy runs
again without ``produce`` (it exits 99: skipped, so it neither rewrites nor vouches for the
file):

* ``rows_clean``: nothing changed; every consumer runs (the strict check passes a good file);
* ``rows_edited``: the file edited; every consumer refuses it as MODIFIED (the rows name its
  producer);
* ``rows_deleted``: the file edited and every row naming it deleted; every consumer refuses
  it as tampered ("left out record").

The ledger records each refused try once, as failed, listing the file as refused, not read.

With a mapped task in it, the DAG file did not load at all once the cluster policy was
installed (the policy read ``pre_execute`` of a ``MappedOperator``, which has none): fixed in
``policy.py``; :func:`test_the_cluster_policy_checks_a_mapped_task_through_its_hook` is that
regression without a deployment.

What notices the deleted rows is the names kept beside the verified tree
(``core/_log/names.py``). Run this file with ``LINEAGE_AUDIT_NAMES=0`` (passed on to every
process of the deployment and to ``verify-lineage``) and ``rows_deleted`` fails: the file
passes as a source nobody recorded and every consumer runs on the edit.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.airflow_deploy import BIN, Deployment
from tests.support.airflow_site import airflow_installed, private_airflow_home

private_airflow_home()  # the policy test imports Airflow: never with ~/airflow

pytestmark = pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)")

CASES = ("clean", "edited", "deleted")
#: The consumers of the intermediate and the file each writes.
CONSUMERS = {"checked": "checked.txt", "plain": "plain.txt", "mapped[0]": "mapped-0.txt", "mapped[1]": "mapped-1.txt"}

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


def note_hook(context):
    """The mapped task's own pre_execute hook: the cluster policy's check must run first, then this."""
    ti = context["ti"]
    with open(DATA / ti.dag_id.removeprefix("rows_") / "hook.txt", "a") as handle:
        handle.write(f"{ti.run_id} {ti.map_index}\\n")


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
        mapped = BashOperator.partial(
            task_id="mapped", trigger_rule="none_failed", inlets=[Asset(uri=f"file://{mid}")], pre_execute=note_hook,
        ).expand(bash_command=[f"cat '{mid}' > '{here}/mapped-{i}.txt'" for i in range(2)])
        produce >> [checked, plain, mapped]
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
    site.migrate()
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
    """The records of one DAG run by task (``task`` or ``task[map index]``), in ledger order."""
    rows = ledger_query(site, "SELECT body FROM ll_records WHERE run_id = %s ORDER BY seq", f"{dag_id}/{run_id}")
    found: dict[str, list[dict]] = {}
    for (body,) in rows:
        record = json.loads(bytes(body))
        found.setdefault(record["task_id"].rsplit("/", 1)[-1], []).append(record)
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
        site.trigger(f"rows_{case}", run_id, conf)
    return {case: site.wait_for_run(f"rows_{case}", run_id) for case in CASES}


def states(site: Deployment, dag_id: str, run_id: str) -> dict[str, str]:
    """Each task instance's state, by ``task`` or ``task[map index]``."""
    rows = site.query("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = %s AND run_id = %s",
                      dag_id, run_id)
    return {task if index < 0 else f"{task}[{index}]": state for task, index, state in rows}


def task_log(site: Deployment, dag_id: str, run_id: str, task: str) -> str:
    """Try 1's log, as Airflow's default log template places it."""
    task_id, _, index = task.rstrip("]").partition("[")
    where = site.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    if index:
        where = where / f"map_index={index}"
    return (where / "attempt=1.log").read_text(errors="replace")


def verify(site: Deployment, *paths: Path) -> subprocess.CompletedProcess:
    """``verify-lineage`` in the deployment's environment (its state directory: the head and
    names it verifies are the ones the task processes' checks start from)."""
    return subprocess.run([str(BIN / "verify-lineage"), "--ledger", site.ledger_url, *map(str, paths)],
                          env=site.environ(), cwd=site.home, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.postgres
def test_strict_refuses_under_the_scheduler_an_edit_whose_rows_were_deleted(site):
    assert run_all(site, "first", {}) == dict.fromkeys(CASES, "success")
    mids = {case: site.data / case / "mid.txt" for case in CASES}
    outs = {case: [site.data / case / name for name in CONSUMERS.values()] for case in CASES}
    for case in CASES:
        wait_for_records(site, f"rows_{case}", "first", {"produce", *CONSUMERS})
        assert [p.read_text() for p in outs[case]] == ["value 41\n"] * len(CONSUMERS)
    # (The mapped tasks declare no outlets: their files are not in the ledger.)
    checked = verify(site, *(site.data / case / name for case in CASES for name in ("checked.txt", "plain.txt")))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    tamper_keep_size_and_mtime(mids["edited"])
    tamper_keep_size_and_mtime(mids["deleted"])
    deleted = ledger_query(site, "DELETE FROM ll_artifacts WHERE path = %s RETURNING role", str(mids["deleted"]))
    assert sorted(role for (role,) in deleted) == [0, 0, 0, 0, 1], deleted  # produce wrote it, 4 consumers read it
    written = {case: [p.stat().st_mtime_ns for p in outs[case]] for case in CASES}

    assert run_all(site, "second", {"produce": False}) == {"clean": "success", "edited": "failed", "deleted": "failed"}
    for case in CASES:
        assert states(site, f"rows_{case}", "second") == {
            "produce": "skipped", **dict.fromkeys(CONSUMERS, "success" if case == "clean" else "failed")}

    # The control: a strict check passes a file nothing changed; every consumer ran on it again.
    assert [p.stat().st_mtime_ns for p in outs["clean"]] != written["clean"]
    records = wait_for_records(site, "rows_clean", "second", set(CONSUMERS))
    assert [records[t]["status"] for t in CONSUMERS] == ["succeeded"] * len(CONSUMERS)
    # The mapped task's own hook ran after the policy's check passed, and not after a refusal.
    hooked = {case: sorted((site.data / case / "hook.txt").read_text().splitlines()) for case in CASES}
    assert hooked == {"clean": ["first 0", "first 1", "second 0", "second 1"],
                      "edited": ["first 0", "first 1"], "deleted": ["first 0", "first 1"]}

    # The edit alone: the rows name its producer, whose digest it no longer has.
    assert [p.stat().st_mtime_ns for p in outs["edited"]] == written["edited"], "a consumer ran on the edit"
    records = wait_for_records(site, "rows_edited", "second", set(CONSUMERS))
    for task in CONSUMERS:
        text = task_log(site, "rows_edited", "second", task)
        assert "lineage-ledger refused to run rows_edited." + task.partition("[")[0] in text, text[-3000:]
        assert f"{mids['edited']}: MODIFIED since it was last written" in text, text[-3000:]
        assert_refused(records[task], mids["edited"], "MODIFIED since it was last written")

    # The edit with its rows deleted: no row names the file any more, and only the names kept
    # beside the verified tree say which records did. Without them it passed as a source.
    assert [p.stat().st_mtime_ns for p in outs["deleted"]] == written["deleted"], "a consumer ran on the hidden edit"
    records = wait_for_records(site, "rows_deleted", "second", set(CONSUMERS))
    for task in CONSUMERS:
        text = task_log(site, "rows_deleted", "second", task)
        assert "lineage-ledger refused to run rows_deleted." + task.partition("[")[0] in text, text[-3000:]
        assert "left out record" in text and str(mids["deleted"]) in text, text[-3000:]
        assert "IndexTampered" in text, text[-3000:]  # the check's own error, chained
        assert_refused(records[task], mids["deleted"], "left out record")
    # Nor did the refusals give the file an index row again, with its edited digest.
    assert not ledger_query(site, "SELECT 1 FROM ll_artifacts WHERE path = %s", str(mids["deleted"]))


def test_the_cluster_policy_checks_a_mapped_task_through_its_hook():
    """A mapped task is a ``MappedOperator`` when the policy sees it, without ``pre_execute``:
    the policy raised AttributeError, and Airflow refused the DAG file. Now the check goes
    into the partial arguments' ``pre_execute`` hook, ahead of the DAG's own hook, and every
    unmapped operator carries it; mapped tasks without file inlets, and mapped
    LedgerOperators (which check for themselves), are left as they were."""
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG, Asset
    from lineage_ledger_airflow import LedgerOperator
    from lineage_ledger_airflow.policy import task_policy

    def own_hook(context):
        return None

    with DAG(dag_id="policy_mapped", schedule=None):
        checked = BashOperator.partial(task_id="checked", inlets=[Asset(uri="file:///data/in.txt")],
                                       pre_execute=own_hook).expand(bash_command=["true", "false"])
        bare = BashOperator.partial(task_id="bare").expand(bash_command=["true"])
        ledgered = LedgerOperator.partial(task_id="ledgered", inputs=["/data/in.txt"]).expand(bash_command=["true"])
    for task in (checked, bare, ledgered, checked):  # twice: DAG files are parsed again and again
        task_policy(task)
    hook = checked.partial_kwargs["pre_execute"]
    assert hook is not own_hook and hook.__wrapped__ is own_hook
    assert checked.unmap({"bash_command": "true"})._pre_execute_hook is hook  # what the task runner calls
    assert bare.partial_kwargs.get("pre_execute") is None
    assert ledgered.partial_kwargs.get("pre_execute") is None
