"""The Airflow plugin under the real scheduler (LocalExecutor) where a task's files, its DAG's
folder or its command's working directory have names that are not UTF-8 (on Linux a name is
bytes: ``out-\\xff``).

A record names files by their paths, as text, so such a file can be in no record. What a user
expects: the task runs as it would without the plugin (the plugin never crashes the host), the
task log says once, by name, which files are not recorded and why, the record of the try holds
the rest and lists what it left out (``extra["not_utf8_files"]``), and ``strict`` (a policy)
refuses before the command runs, saying why. A command's working directory is named by no
record, so its name does not matter.

The deployment is the one of ``tests/support/airflow_deploy.py`` with an SQLite ledger; the
helpers that read its records are ``tests/test_airflow_scheduler_faults.py``'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.support.airflow_deploy import Deployment
from tests.support.airflow_site import airflow_installed, private_airflow_home
from tests.test_airflow_scheduler_faults import hooks_done, task_log, wait_for_tries

private_airflow_home()  # the in-process tests import Airflow: never with ~/airflow

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]

BAD = b"\xff"  # a byte that is never UTF-8

# One DAG a file: a DAG file that fails to import breaks every DAG in it.
DAG_FILES = {
    "nu_plain.py": r'''
import os
from pathlib import Path
from urllib.parse import quote

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()

with DAG(dag_id="nu_plain", schedule=None, catchup=False):
    # The URI of a file whose name is not UTF-8 is its bytes percent-encoded (Asset URIs are ASCII).
    BashOperator(task_id="write", outlets=[Asset(uri=f"file://{DATA}/plain-ok.txt"),
                                            Asset(uri="file://" + quote(os.fsencode(DATA) + b"/plain-\xff"))],
                 bash_command=f"echo ok > '{DATA}/plain-ok.txt' && echo bad > '{DATA}'/plain-$'\\xff'")
''',
    "nu_op_warn.py": r'''
import os
from pathlib import Path

from airflow.sdk import DAG
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()

with DAG(dag_id="nu_op_warn", schedule=None, catchup=False):
    LedgerOperator(task_id="write", policy="warn",
                   outputs=[str(DATA / "op-ok.txt"), os.fsdecode(os.fsencode(DATA) + b"/op-\xff")],
                   bash_command=f"echo ok > '{DATA}/op-ok.txt' && echo bad > '{DATA}'/op-$'\\xff'")
''',
    "nu_op_strict.py": r'''
import os
from pathlib import Path

from airflow.sdk import DAG
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()

with DAG(dag_id="nu_op_strict", schedule=None, catchup=False):
    LedgerOperator(task_id="write", policy="strict", retries=2,
                   outputs=[str(DATA / "strict-ok.txt"), os.fsdecode(os.fsencode(DATA) + b"/strict-\xff")],
                   bash_command=f"echo ok > '{DATA}/strict-ok.txt' && echo bad > '{DATA}'/strict-$'\\xff'")
''',
    "nu_op_cwd.py": r'''
import os
from pathlib import Path

from airflow.sdk import DAG
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()

with DAG(dag_id="nu_op_cwd", schedule=None, catchup=False):
    # The command's working directory is named by no record.
    LedgerOperator(task_id="write", policy="strict", outputs=[str(DATA / "cwd-out.txt")],
                   cwd=os.fsdecode(os.fsencode(DATA) + b"/cwd-\xff"),
                   bash_command=f"echo scratch > scratch.txt && cp scratch.txt '{DATA}/cwd-out.txt'")
''',
    "nu_ledger.py": r'''
import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()

with DAG(dag_id="nu_ledger", schedule=None, catchup=False):
    BashOperator(task_id="plain", outlets=[Asset(uri=f"file://{DATA}/ledger-plain.txt")],
                 bash_command=f"echo ok > '{DATA}/ledger-plain.txt'")
    LedgerOperator(task_id="strict", policy="strict", outputs=[str(DATA / "ledger-strict.txt")],
                   bash_command=f"echo ok > '{DATA}/ledger-strict.txt'")
''',
}


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres_server):
    base = tmp_path_factory.mktemp("airflow-not-utf8")
    (base / "ledger").mkdir()
    site = Deployment(home=base / "home", metadata_dsn=postgres_server.create_database(),
                      ledger_url=f"sqlite:///{base}/ledger/ledger.db", spool=base / "spool", data=base / "data")
    site.data.mkdir(parents=True)
    os.mkdir(os.fsencode(site.data) + b"/cwd-" + BAD)
    site.configure({"XDG_STATE_HOME": str(base / "state")})
    dags = Path(site.env["AIRFLOW__CORE__DAGS_FOLDER"])
    for other in dags.glob("*.py"):  # the deployment tests' DAGs: not needed here
        other.unlink()
    for name, text in DAG_FILES.items():
        (dags / name).write_text(text)
    open_ledger(site.ledger_url, spool=str(base / "empty-spool")).close()
    site.migrate()
    site.start()
    try:
        site.wait_for_dags(["nu_plain"])
        yield site
    finally:
        site.stop()


#: The runs of the tests of one task each, by DAG: triggered together once the site is up, so
#: that the scheduler runs them side by side (PARALLELISM 4) rather than one test's after another's.
TOGETHER = {"nu_plain": "plain-1", "nu_op_warn": "warn-1", "nu_op_strict": "strict-1", "nu_op_cwd": "cwd-1"}


@pytest.fixture(scope="module")
def runs(site) -> dict[str, str]:
    """Each of those runs' end state, by DAG: all have ended (a test that starts the scheduler
    again finds none of them in flight)."""
    site.wait_for_dags(TOGETHER, timeout=120)
    for dag_id, run_id in TOGETHER.items():
        site.trigger(dag_id, run_id)
    return {dag_id: site.wait_for_run(dag_id, run_id) for dag_id, run_id in TOGETHER.items()}


def raw(site: Deployment, name: bytes) -> bytes:
    """The path of a file under the data folder, as bytes."""
    return os.fsencode(site.data) + b"/" + name


def shown(site: Deployment, name: bytes) -> str:
    """How a record writes that path: each byte that is not UTF-8 as ``\\xNN``."""
    return os.fsencode(site.data).decode() + "/" + name.decode("utf-8", "backslashreplace")


def logged(text: str) -> str:
    """``text`` as a task log (JSON lines) holds it: a backslash doubled."""
    return json.dumps(text)[1:-1]


def said_once(text: str, what: str) -> list[str]:
    lines = [line for line in text.splitlines() if what in line]
    assert len(lines) == 1, (what, lines, text[-4000:])
    return lines


def test_a_plain_operators_outlet_that_is_not_utf8_is_said_and_left_out(site, runs):
    assert runs["nu_plain"] == "success"
    assert os.path.exists(raw(site, b"plain-" + BAD))
    text = hooks_done(site, "nu_plain", "plain-1", "write")
    said_once(text, "not valid UTF-8")
    assert logged(shown(site, b"plain-" + BAD)) in text and "Traceback" not in text, text[-4000:]
    record = wait_for_tries(site, "nu_plain", "plain-1")[("write", 1)]
    assert record["status"] == "succeeded"
    assert list(record["outputs"]) == [str(site.data / "plain-ok.txt")]
    assert "missing_outputs" not in record["extra"], record["extra"]  # never a file it does not name
    assert record["extra"]["not_utf8_files"] == {"inputs": [], "outputs": [shown(site, b"plain-" + BAD)]}
    assert "not_utf8_files" in record["extra"]["escaped"]


def test_a_ledger_operator_output_that_is_not_utf8_runs_under_warn_and_is_said(site, runs):
    assert runs["nu_op_warn"] == "success"
    assert os.path.exists(raw(site, b"op-" + BAD))
    text = hooks_done(site, "nu_op_warn", "warn-1", "write")
    said_once(text, "not valid UTF-8")
    assert logged(shown(site, b"op-" + BAD)) in text and "Traceback" not in text, text[-4000:]
    record = wait_for_tries(site, "nu_op_warn", "warn-1")[("write", 1)]
    assert record["status"] == "succeeded"
    assert list(record["outputs"]) == [str(site.data / "op-ok.txt")]
    assert record["extra"]["not_utf8_files"] == {"inputs": [], "outputs": [shown(site, b"op-" + BAD)]}


def test_strict_refuses_a_ledger_operator_whose_output_cannot_be_recorded(site, runs):
    assert runs["nu_op_strict"] == "failed"
    tries = site.tries("nu_op_strict", "strict-1")
    assert [(t.task_id, t.try_number, t.state) for t in tries] == [("write", 1, "failed")]  # no retries
    assert not os.path.exists(raw(site, b"strict-" + BAD)) and not (site.data / "strict-ok.txt").exists()
    text = hooks_done(site, "nu_op_strict", "strict-1", "write")
    assert "lineage-ledger refused to run nu_op_strict.write" in text, text[-4000:]
    assert logged(shown(site, b"strict-" + BAD)) in text and "not valid UTF-8" in text, text[-4000:]
    record = wait_for_tries(site, "nu_op_strict", "strict-1")[("write", 1)]
    assert record["status"] == "failed" and record["extra"]["refused_by"] == "strict"
    assert list(record["outputs"]) == []
    assert record["extra"]["not_utf8_files"] == {"inputs": [], "outputs": [shown(site, b"strict-" + BAD)]}


def test_a_working_directory_that_is_not_utf8_does_not_matter(site, runs):
    assert runs["nu_op_cwd"] == "success", task_log(site, "nu_op_cwd", "cwd-1", "write")[-4000:]
    assert os.path.exists(raw(site, b"cwd-" + BAD + b"/scratch.txt"))
    record = wait_for_tries(site, "nu_op_cwd", "cwd-1")[("write", 1)]
    assert record["status"] == "succeeded" and list(record["outputs"]) == [str(site.data / "cwd-out.txt")]
    assert "not_utf8_files" not in record["extra"]


def test_relative_paths_in_a_dag_folder_that_is_not_utf8_are_left_out_not_refused(tmp_path):
    """In process: Airflow 3.3's own DAG processor dies on a DAG file in such a folder (its
    message to the parsing child cannot encode the path), so no deployment runs one; the
    operator made for such a DAG is still made, and knows which of its files it cannot record."""
    from airflow.sdk import DAG
    from lineage_ledger_airflow import LedgerOperator

    folder = os.fsdecode(os.fsencode(tmp_path) + b"/dags-" + BAD)
    dag = DAG(dag_id="nu_folder", schedule=None)
    dag.fileloc = folder + "/nu_folder.py"
    with dag:
        task = LedgerOperator(task_id="copy", inputs=["in.txt"], outputs=[str(tmp_path / "out.txt")],
                              bash_command="true")
    assert task.inputs == [folder + "/in.txt"]
    assert task.inlets[0].uri == f"file://{tmp_path}/dags-%FF/in.txt"  # an Asset URI is ASCII


@pytest.mark.usefixtures("runs")  # ended: the scheduler started again below kills none of them in flight
def test_a_ledger_whose_path_is_not_utf8_is_said_once_and_strict_refuses(site):
    """The scheduler (and so every task process it starts) names a ledger whose path is not
    UTF-8: the default one under an AIRFLOW_HOME whose name is not, say. Nothing can be
    recorded; each process says so once, the tasks run, and strict refuses."""
    bad = os.fsdecode(os.fsencode(site.home.parent) + b"/ledger-" + BAD)
    site.wait_for_dags(["nu_ledger"], timeout=60)
    site.kill("scheduler")
    try:
        seen = (site.home / "scheduler.log").stat().st_size
        site.start("scheduler", extra_env={"AIRFLOW__LINEAGE_LEDGER__URL": f"sqlite:///{bad}/ledger.db"})
        site.trigger("nu_ledger", "ledger-1")
        assert site.wait_for_run("nu_ledger", "ledger-1") == "failed"
        states = {t.task_id: t.state for t in site.tries("nu_ledger", "ledger-1")}
        assert states == {"plain": "success", "strict": "failed"}, states
        assert (site.data / "ledger-plain.txt").exists() and not (site.data / "ledger-strict.txt").exists()
        plain = hooks_done(site, "nu_ledger", "ledger-1", "plain")
        said_once(plain, "nothing is recorded")
        assert logged("ledger-\\xff/ledger.db is at a path that is not valid UTF-8") in plain, plain[-4000:]
        assert "NOT recorded" not in plain and "Traceback" not in plain, plain[-4000:]
        strict = hooks_done(site, "nu_ledger", "ledger-1", "strict")
        assert "lineage-ledger refused to run nu_ledger.strict: nothing can be recorded" in strict, strict[-4000:]
        with open(site.home / "scheduler.log", "rb") as handle:
            handle.seek(seen)
            scheduler = handle.read().decode(errors="replace")
        # Once by the scheduler, and at most once by each of the two task processes (whose
        # first lines, before their task log opens, land in the scheduler's log).
        assert 1 <= scheduler.count("nothing is recorded") <= 3, scheduler[-4000:]
        assert "NOT recorded" not in scheduler and "Traceback" not in scheduler, scheduler[-4000:]
        assert not os.path.lexists(bad)  # nothing was made for it
    finally:
        site.kill("scheduler")
        site.start("scheduler")


def test_a_file_uri_keeps_the_bytes_of_a_name_that_is_not_utf8():
    """In process: the URI LedgerOperator makes of such a name is ASCII (as Airflow keeps it), and
    reads back as the same bytes, never U+FFFD; a name given as bytes is the same file."""
    from airflow.sdk import Asset
    from lineage_ledger_airflow._assets import file_paths, file_uri, local_path, not_utf8_paths

    name = os.fsdecode(b"/data/r\xc3\xa9sum\xc3\xa9-\xff.csv")  # UTF-8 and one byte that is not
    uri = file_uri(name)
    assert uri == "file:///data/résumé-%FF.csv" and uri == file_uri(os.fsencode(name))
    assert os.fsencode(local_path(uri)) == b"/data/r\xc3\xa9sum\xc3\xa9-\xff.csv"
    asset = Asset(uri=uri)
    assert file_paths([asset]) == [] and not_utf8_paths([asset]) == [name]
