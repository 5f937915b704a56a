"""Airflow 3 plugin against real Airflow: ``airflow db migrate`` on SQLite, ``dag.test()``
in this process and the ``airflow dags test`` command in a subprocess."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lineage_ledger import hash_file, open_ledger
from tests.conftest import run_cli
from tests.support.airflow_site import (
    AirflowSite,
    airflow_installed,
    end_in_process_airflow,
    make_site,
    openlineage_events,
    private_airflow_home,
)

private_airflow_home()  # before anything imports Airflow (issue 18: any test order, never ~/airflow)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]

TASKS = ("extract", "summarize", "report", "combine")


@pytest.fixture(scope="module")
def site() -> AirflowSite:
    """One migrated site for this module; the environment and logging are put back after it."""
    site = make_site(private_airflow_home())
    saved = {k: os.environ.get(k) for k in site.env}
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    saved_signals = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    os.environ.update(site.env)  # for dag.test() in this process; Airflow reads them on import
    yield site
    end_in_process_airflow(saved_signals)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # Airflow adds a stdout handler to the root logger and lowers its level; later tests
    # of other modules should not inherit that.
    root.handlers[:] = saved_logging[0]
    root.setLevel(saved_logging[1])


class Run:
    """One test's ledger, spool and data directory, as [lineage_ledger] settings."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path}/ledger.db"
        self.data = tmp_path / "data"
        self.vars = {
            "AIRFLOW__LINEAGE_LEDGER__URL": self.url,
            "AIRFLOW__LINEAGE_LEDGER__SPOOL": str(tmp_path / "spool"),
            "LINEAGE_EXAMPLE_DATA": str(self.data),
        }

    def records(self, task_prefix: str = "") -> list:
        with open_ledger(self.url, spool=self.vars["AIRFLOW__LINEAGE_LEDGER__SPOOL"]) as ledger:
            return [r for r in ledger.recent(10_000) if r.record.task_name.startswith(task_prefix)]


@pytest.fixture
def run(site, tmp_path, monkeypatch):
    from lineage_ledger_airflow import _tries

    current = Run(tmp_path)
    for key, value in current.vars.items():
        monkeypatch.setenv(key, value)
    yield current
    _tries.reset()  # ships what this process recorded and forgets the ledger


def by_task(records) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for entry in sorted(records, key=lambda r: (r.record.task_name, r.record.attempt)):
        grouped.setdefault(entry.record.task_name.split(".", 1)[1], []).append(entry.record)
    return grouped


def test_airflow_discovers_the_plugin_and_the_provider(site):
    plugins = site.cli("plugins", "--output", "json")
    assert plugins.returncode == 0, plugins.stderr
    assert "lineage_ledger" in plugins.stdout and "LedgerListener" in plugins.stdout
    assert plugins.stdout.count('"lineage_ledger"') == 1  # registered once, not once per metadata dir

    from airflow.configuration import conf
    from airflow.providers_manager import ProvidersManager

    assert "lineage-ledger-airflow" in ProvidersManager().providers
    assert conf.get("lineage_ledger", "policy") == "warn"  # the provider's config defaults
    assert conf.getfloat("lineage_ledger", "flush_timeout") == 5.0


def test_example_dag_every_task_recorded_with_digests(site, run):
    from lineage_ledger_airflow import _tries

    module = site.load_dag("lineage_example")
    dagrun = module.dag.test()
    assert dagrun.state == "success"
    _tries.reset()

    tasks = by_task(run.records("lineage_example."))
    assert sorted(tasks) == sorted(TASKS)
    files = {name: run.data / name for name in ("source.csv", "raw.csv", "counts.txt", "report.txt", "final.txt")}
    digest = {name: hash_file(path).blake3 for name, path in files.items()}
    for name in TASKS:
        (record,) = tasks[name]
        assert record.status == "succeeded" and record.attempt == 1
        assert record.run_id == f"lineage_example/{dagrun.run_id}"
        assert record.extra["airflow"]["dag_id"] == "lineage_example"
        assert record.extra["airflow"]["task_id"] == name and record.extra["airflow"]["try_number"] == 1
        assert record.started <= record.ended and record.code_digest
    # The plain BashOperator: its file:// inlets and outlets hashed by the listener.
    bash = tasks["summarize"][0]
    assert bash.extra["airflow"]["operator"].endswith("BashOperator")
    assert dict(bash.inputs) == {str(files["raw.csv"]): {"blake3": digest["raw.csv"], "size": files["raw.csv"].stat().st_size}}
    assert bash.outputs[str(files["counts.txt"])]["blake3"] == digest["counts.txt"]
    assert tasks["extract"][0].inputs[str(files["source.csv"])]["blake3"] == digest["source.csv"]
    assert tasks["combine"][0].outputs[str(files["final.txt"])]["blake3"] == digest["final.txt"]

    verified = run_cli("--ledger", run.url, files["final.txt"], program="verify-lineage", cwd=run.data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "summarize" in verified.stdout and "extract" in verified.stdout

    # LedgerOperator put the digest into its asset event's extra.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        extras = session.scalars(
            select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == f"file://{files['report.txt']}", AssetEvent.source_run_id == dagrun.run_id)
        ).all()
    assert [e["blake3"] for e in extras] == [digest["report.txt"]]

    # OpenLineage saw the content version of every file the LedgerOperator read and wrote.
    complete = [e for e in openlineage_events(site)
                if e.get("eventType") == "COMPLETE" and e["job"]["name"] == "lineage_example.report"
                and e["run"]["facets"].get("airflow", {}).get("taskInstance", {}).get("dag_run_id", dagrun.run_id) == dagrun.run_id]
    assert complete, "no OpenLineage COMPLETE event for the report task"
    versions = {d["name"]: d["facets"]["version"]["datasetVersion"] for d in complete[-1]["outputs"] + complete[-1]["inputs"]}
    assert versions[str(files["report.txt"])] == f"blake3:{digest['report.txt']}"
    assert versions[str(files["raw.csv"])] == f"blake3:{digest['raw.csv']}"


def tamper(path: Path) -> None:
    with path.open("a") as handle:
        handle.write("sample-999999,1\n")  # an edit outside the workflow


def test_tampered_intermediate_strict_ledger_operator_fails_before_running(site, run, monkeypatch):
    from lineage_ledger_airflow import _tries

    assert site.load_dag("lineage_example").dag.test().state == "success"
    raw, report = run.data / "raw.csv", run.data / "report.txt"
    report_before = report.stat().st_mtime_ns
    tamper(raw)

    # The next run reuses extract's output (marked success, not rerun): strict refuses.
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")
    second = site.load_dag("lineage_example").dag.test(mark_success_pattern="extract")
    assert second.state == "failed"
    assert report.stat().st_mtime_ns == report_before, "the strict LedgerOperator ran anyway"
    _tries.reset()
    runs = dag_runs(run, "lineage_example.")
    assert len(runs) == 2
    tasks = by_task(runs[1])
    assert "extract" not in tasks  # marked success, not run: nothing to record
    (refused,) = tasks["report"]
    error = refused.extra["airflow"]["error"]
    assert refused.status == "failed" and str(raw) in error and "MODIFIED" in error
    assert refused.inputs == {} and str(raw) in refused.extra["refused_inputs"]  # it read nothing
    assert refused.outputs == {} and str(report) in refused.extra["outputs_not_written"]  # nor wrote
    # Without the policy the plain BashOperator cannot refuse: it ran on the edited file.
    (ran,) = tasks["summarize"]
    assert ran.status == "succeeded" and ran.inputs[str(raw)]["blake3"] == hash_file(raw).blake3
    assert "combine" not in tasks  # upstream failed: never ran, never recorded


def test_warn_and_rerun_run_on_changed_inputs_and_say_so(site, run, monkeypatch):
    from lineage_ledger_airflow import _tries

    assert site.load_dag("lineage_example").dag.test().state == "success"
    raw = run.data / "raw.csv"
    tamper(raw)
    for policy in ("warn", "rerun"):
        monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", policy)
        assert site.load_dag("lineage_example").dag.test(mark_success_pattern="extract").state == "success"
    _tries.reset()
    runs = dag_runs(run, "lineage_example.")
    assert len(runs) == 3
    for entries, policy in zip(runs[1:], ("warn", "rerun"), strict=True):
        (report,) = by_task(entries)["report"]
        # It ran on the edited file, said so, and listed it as read.
        assert report.status == "succeeded" and report.extra["policy"] == policy
        assert report.extra["modified_inputs"] == [str(raw)]
        assert report.inputs[str(raw)]["blake3"] == hash_file(raw).blake3
    # verify-lineage still sees that the consumed version was never produced.
    verified = run_cli("--ledger", run.url, run.data / "final.txt", program="verify-lineage", cwd=run.data)
    assert verified.returncode == 1 and "raw.csv" in verified.stdout, verified.stdout + verified.stderr


def test_ledger_operator_refuses_bad_arguments(site):
    from lineage_ledger_airflow import LedgerOperator

    with pytest.raises(ValueError, match="exactly one"):
        LedgerOperator(task_id="neither", inputs=["/tmp/a"], outputs=["/tmp/b"])
    with pytest.raises(ValueError, match="exactly one"):
        LedgerOperator(task_id="both", python_callable=print, bash_command="true")
    with pytest.raises(ValueError, match="policy"):
        LedgerOperator(task_id="policy", bash_command="true", policy="lenient")
    op = LedgerOperator(task_id="ok", inputs=["/data/in.csv"], outputs=["/data/out.csv"], bash_command="true")
    assert [a.uri for a in op.inlets] == ["file:///data/in.csv"]
    assert [a.uri for a in op.outlets] == ["file:///data/out.csv"]


def test_tampered_intermediate_cluster_policy_fails_plain_bash_operator(site, run, tmp_path):
    from lineage_ledger_airflow import _tries

    assert site.load_dag("lineage_example").dag.test().state == "success"
    _tries.reset()  # the command below is another process: let it find everything shipped
    raw, counts, report = run.data / "raw.csv", run.data / "counts.txt", run.data / "report.txt"
    before = {p: p.stat().st_mtime_ns for p in (counts, report)}
    tamper(raw)

    settings_dir = tmp_path / "local_settings"
    settings_dir.mkdir()
    (settings_dir / "airflow_local_settings.py").write_text(
        "from lineage_ledger_airflow.policy import task_policy  # noqa: F401\n")
    env = {**run.vars, "AIRFLOW__LINEAGE_LEDGER__POLICY": "strict", "PYTHONPATH": str(settings_dir),
           "AIRFLOW__OPENLINEAGE__DISABLED": "True"}  # its events are another test's (1.5-4 of 17-22 CPU-s)
    second = site.cli("dags", "test", "lineage_example", "--mark-success-pattern", "extract", env=env)
    assert second.returncode != 0
    assert str(raw) in second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in (counts, report)} == before, "a task ran on the edited file"
    runs = dag_runs(run, "lineage_example.")
    assert len(runs) == 2
    tasks = by_task(runs[1])
    for name in ("summarize", "report"):
        (refused,) = tasks[name]
        assert refused.status == "failed" and str(raw) in refused.extra["airflow"]["error"], name
    assert tasks["summarize"][0].extra["airflow"]["operator"].endswith("BashOperator")


def dag_runs(run: Run, prefix: str) -> list[list]:
    """The records of each DAG run, oldest run first."""
    grouped: dict[str, list] = {}
    for entry in run.records(prefix):
        grouped.setdefault(entry.record.run_id, []).append(entry)
    return sorted(grouped.values(), key=lambda entries: min(e.record.started for e in entries))


def test_retried_and_failed_tasks_recorded_once_per_try(site, run):
    from lineage_ledger_airflow import _tries

    module = site.load_dag("ledger_retries")
    dagrun = module.dag.test()
    assert dagrun.state == "failed"
    _tries.flush_before_exit  # noqa: B018 - (kept importable for the subprocess below)
    _tries.reset()

    def tries() -> dict[str, list[tuple[int, str, str]]]:
        return {name: [(r.attempt, r.status, r.extra["airflow"]["state"]) for r in records]
                for name, records in by_task(run.records("ledger_retries.")).items()}

    expected = {
        "flaky": [(1, "failed", "up_for_retry"), (2, "succeeded", "success")],
        "broken": [(1, "failed", "up_for_retry"), (2, "failed", "failed")],
    }
    assert tries() == expected
    broken = by_task(run.records("ledger_retries."))["broken"]
    assert all(r.outputs[str(run.data / "broken.txt")]["size"] == len("partial\n") for r in broken)
    assert "exit code 7" in broken[0].extra["airflow"]["error"] or "7" in broken[0].extra["airflow"]["error"]

    # The API server reports a failure again when a task instance is marked failed: in
    # another process, through Airflow's own code path. Same tries: nothing new recorded.
    script = textwrap.dedent(f"""
        from airflow.api_fastapi.core_api.services.public.task_instances import _emit_state_listener_hooks
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select
        with create_session() as session:
            tis = session.scalars(select(TaskInstance).where(
                TaskInstance.dag_id == "ledger_retries", TaskInstance.run_id == {dagrun.run_id!r})).all()
            assert {{ti.task_id for ti in tis}} == {{"flaky", "broken", "after_broken"}}
            _emit_state_listener_hooks(tis, "failed")
        from lineage_ledger_airflow import _tries
        _tries.reset()
        print("reported", len(tis))
    """)
    env = {k: v for k, v in os.environ.items()}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "reported 3" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]
    assert tries() == expected


def test_a_failed_try_lists_only_the_outlets_it_wrote(site, run):
    """An outlet an earlier run left is not a failed try's product (issue 16): listed, it would
    make verify-lineage call an intact file "produced by a failed task"."""
    from lineage_ledger_airflow import _tries

    run.data.mkdir(parents=True, exist_ok=True)
    stale = run.data / "stale.txt"
    stale.write_text("made by an earlier run\n")
    module = site.load_dag("ledger_stale_outputs")
    assert module.dag.test().state == "failed"
    _tries.reset()
    tasks = by_task(run.records("ledger_stale_outputs."))
    (quiet,), (noisy,) = tasks["fails_quietly"], tasks["fails_after_writing"]
    assert quiet.status == noisy.status == "failed"
    assert quiet.outputs == {} and quiet.extra["outputs_not_written"] == [str(stale)]
    assert noisy.outputs[str(run.data / "fresh.txt")]["size"] == len("partial\n")
    assert "outputs_not_written" not in noisy.extra


def _next_tries_supervised(site: AirflowSite, steps: list[tuple[str, str]]) -> str:
    """A script for a child process: ``lineage_example`` run in-process (``dag.test()``: the
    process records), then for each ``(code, task_id)`` of ``steps``: ``code``, then one more
    try of ``task_id`` queued and run through Airflow's own supervisor, a forked task process
    that ends with ``os._exit``. It prints "supervised TASK_ID exit code N run RUN_ID" for
    each and leaves with ``os._exit`` (the last one's N)."""
    script = textwrap.dedent(f"""
        import importlib.util, os
        from sqlalchemy import select
        spec = importlib.util.spec_from_file_location("next_try_dag", {str(site.dags / "lineage_example.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dagrun = module.dag.test()
        assert dagrun.state == "success", dagrun.state
        from airflow.executors.workloads import BundleInfo
        from airflow.models.taskinstance import TaskInstance
        from airflow.sdk.api.datamodels._generated import TaskInstance as WorkloadTI
        from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor, supervise_task
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        def next_try(task_id):
            with create_session() as session:
                ti = session.scalars(select(TaskInstance).where(
                    TaskInstance.dag_id == "lineage_example", TaskInstance.run_id == dagrun.run_id,
                    TaskInstance.task_id == task_id)).one()
                ti.try_number += 1
                ti.state = TaskInstanceState.QUEUED
                session.commit()
                workload_ti = WorkloadTI(id=ti.id, task_id=ti.task_id, dag_id=ti.dag_id, run_id=ti.run_id,
                                         try_number=ti.try_number, map_index=ti.map_index,
                                         dag_version_id=ti.dag_version_id)
            # Airflow's in-process Execution API stands in for the API server (as in dag.test()).
            client = InProcessTestSupervisor._api_client(module.dag)
            code = supervise_task(ti=workload_ti, bundle_info=BundleInfo(name="dags-folder"),
                                  dag_rel_path="lineage_example.py", token="", client=client)
            print("supervised", task_id, "exit code", code, "run", dagrun.run_id, flush=True)
            return code
    """)
    for code, task_id in steps:
        script += code + f"code = next_try({task_id!r})\n"
    return script + "os._exit(code)\n"


@pytest.fixture(scope="module")
def supervised(site, tmp_path_factory) -> tuple[Run, subprocess.CompletedProcess]:
    """One child process for the next tries that Airflow's supervisor forks (a fresh Airflow
    in a child costs more than the tries: one child serves both tests below): after its
    ``dag.test()`` of ``lineage_example`` (the child records), ``raw.csv`` is edited and the
    policy made strict, and the strict ``report`` task's next try is forked and refused; then,
    the policy back to warn, ``summarize``'s next try is forked, and the child leaves with
    ``os._exit`` (that try's exit code) right after it."""
    current = Run(tmp_path_factory.mktemp("supervised"))
    edit = (f"with open({str(current.data / 'raw.csv')!r}, 'a') as handle:\n"
            "    handle.write('edited,by,hand\\n')\n"
            "os.environ['AIRFLOW__LINEAGE_LEDGER__POLICY'] = 'strict'\n")
    script = _next_tries_supervised(site, [(edit, "report"),
                                           ("os.environ['AIRFLOW__LINEAGE_LEDGER__POLICY'] = 'warn'\n", "summarize")])
    # OpenLineage's emitting worker processes would outlive an os._exit and hold the pipes open.
    env = {**os.environ, **current.vars, "AIRFLOW__OPENLINEAGE__DISABLED": "true"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    return current, result


def _said(result: subprocess.CompletedProcess, task_id: str) -> str:
    """The child's line about ``task_id``'s supervised try, or the end of its output."""
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"supervised {task_id} exit code ")]
    assert len(lines) == 1, result.stdout[-2000:] + result.stderr[-4000:]
    return lines[0]


def test_records_survive_os_exit_of_the_task_process(site, supervised):
    """Task processes end with ``os._exit``: no thread is joined, no atexit handler runs.

    A child process runs the DAG in-process (``dag.test()``), then queues one more try of
    ``summarize`` and runs it through Airflow's own supervisor: a forked task process that
    ends with ``os._exit``. Then the child itself leaves with ``os._exit(0)``.
    The supervised try must be in the ledger already (shipped before its process ended);
    the in-process tries must come back from the spool when the ledger is opened again.
    (The child forked ``report``'s refused try before: see the ``supervised`` fixture.)
    """
    run, result = supervised
    assert result.returncode == 0 and _said(result, "summarize").startswith("supervised summarize exit code 0 "), \
        result.stdout[-2000:] + result.stderr[-4000:]

    spool = run.vars["AIRFLOW__LINEAGE_LEDGER__SPOOL"]
    with open_ledger(run.url, spool=spool, replay=False) as ledger:  # before any replay
        shipped = [r.record for r in ledger.recent(100) if r.record.task_name == "lineage_example.summarize"]
    assert [(r.attempt, r.status, r.extra["airflow"]["reported_by"]) for r in shipped if r.attempt == 2] == [
        (2, "succeeded", "task")]
    tasks = by_task(run.records("lineage_example."))  # opens with replay: the spool comes back
    assert sorted(tasks) == sorted(TASKS)
    assert [r.attempt for r in tasks["summarize"]] == [1, 2]
    assert [r.attempt for r in tasks["report"]] == [1, 2]
    assert all(len(tasks[name]) == 1 for name in ("extract", "combine"))


def test_a_task_process_forked_from_a_process_that_recorded_keeps_its_refusal(site, supervised):
    """A task process forked from one that had recorded tries (a LocalExecutor worker the
    scheduler spawned after its end-of-run sweep, as CI met it twice in the deployment
    tests) forgot what its own try had noted before its first record: the refusal of a
    strict check (``refused_by``, ``modified_inputs``) and the inputs hashed at its start.
    The forked child took the parent's tries for its own at its first use of the capture and
    dropped them all, its own included. Here the parent records through ``dag.test()``, then
    Airflow's supervisor forks the strict ``report`` task's next try after ``raw.csv`` was
    edited (the first fork of the ``supervised`` fixture's child); its record must say it was
    refused and why."""
    run, result = supervised
    said = _said(result, "report")
    tasks = by_task(r for r in run.records("lineage_example.") if r.record.run_id.endswith(said.rsplit(" run ", 1)[1]))
    assert [r.attempt for r in tasks["report"]] == [1, 2]
    refused = tasks["report"][1]
    raw = str(run.data / "raw.csv")
    assert refused.status == "failed" and refused.extra["airflow"]["reported_by"] == "task", refused.extra
    assert refused.extra.get("refused_by") == "strict", refused.extra
    assert refused.extra["modified_inputs"] == [raw]


def test_touch_r_edit_is_hashed_again_not_taken_from_the_digest_memo(site, run, monkeypatch):
    """A consumer reuses its producer's digest only while the file's signature is unchanged.

    An in-place edit of the same size with the mtime put back (``touch -r``) keeps size,
    mtime and inode but not ctime: the next run must hash the file again and record the
    edited content, and a strict LedgerOperator must still refuse it.
    """
    from lineage_ledger_airflow import _tries

    assert site.load_dag("lineage_example").dag.test().state == "success"
    assert _tries.memo().hits >= 2  # summarize and report took raw.csv's digest from extract
    raw = run.data / "raw.csv"
    before = raw.stat()
    produced = hash_file(raw).blake3
    content = raw.read_bytes()
    flipped = b"9" if content[-2:-1] != b"9" else b"8"
    with raw.open("r+b") as handle:  # same size, same inode
        handle.seek(len(content) - 2)
        handle.write(flipped)
    os.utime(raw, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = raw.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert after.st_ctime_ns != before.st_ctime_ns
    edited = hash_file(raw).blake3
    assert edited != produced

    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")
    second = site.load_dag("lineage_example").dag.test(mark_success_pattern="extract")
    assert second.state == "failed"
    _tries.reset()
    tasks = by_task(dag_runs(run, "lineage_example.")[1])
    (ran,) = tasks["summarize"]  # the plain BashOperator ran on the edit and recorded it
    assert ran.inputs[str(raw)]["blake3"] == edited
    (refused,) = tasks["report"]
    assert refused.status == "failed" and str(raw) in refused.extra["airflow"]["error"]


def test_file_updated_in_place_keeps_its_read_and_written_digests_apart(site, run):
    from blake3 import blake3
    from lineage_ledger_airflow import _tries

    module = site.load_dag("ledger_in_place")
    first = {name: (run.data / name).read_bytes() for name in ("bash.log", "python.log")}
    assert module.dag.test().state == "success"
    _tries.reset()
    tasks = by_task(run.records("ledger_in_place."))
    for task, name in (("append_bash", "bash.log"), ("append_python", "python.log")):
        (record,) = tasks[task]
        path = str(run.data / name)
        assert record.inputs[path] == {"blake3": blake3(first[name]).hexdigest(), "size": len(first[name])}, task
        assert record.outputs[path] == {"blake3": hash_file(path).blake3, "size": os.path.getsize(path)}, task
        assert record.inputs[path] != record.outputs[path]


def test_file_assets_naming_directories_recorded_and_checked(site, run, monkeypatch):
    """Issue 17: a file:// Asset may name a directory. Its record holds the manifest's digest;
    a file edited inside it (mtime put back) is named by verify-lineage and refused by strict."""
    from lineage_ledger_airflow import _tries

    module = site.load_dag("ledger_directories")
    assert module.dag.test().state == "success"
    _tries.reset()
    qc, summary = run.data / "qc", run.data / "summary.txt"
    tasks = by_task(run.records("ledger_directories."))
    (producer,), (consumer,) = tasks["qc"], tasks["report"]
    whole = hash_file(qc)
    assert producer.outputs[str(qc)]["blake3"] == whole.blake3 and producer.outputs[str(qc)].get("type") == "dir"
    assert consumer.inputs[str(qc)]["blake3"] == whole.blake3
    (indexer,) = tasks["index"]
    index = run.data / "index"
    assert indexer.outputs[str(index)] == hash_file(index).entry() and sorted(os.listdir(index)) == ["A.txt", "B.txt", "C.txt"]
    verified = run_cli("--ledger", run.url, summary, program="verify-lineage", cwd=run.data)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    edited = qc / "B.txt"
    before = edited.stat()
    edited.write_text("reads=X\n")  # same size
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    failed = run_cli("--ledger", run.url, qc, program="verify-lineage", cwd=run.data)
    assert failed.returncode == 1 and "B.txt" in failed.stdout, failed.stdout + failed.stderr

    summary_before = summary.stat().st_mtime_ns
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")
    refused = site.load_dag("ledger_directories").dag.test(mark_success_pattern="qc")
    assert refused.state == "failed"
    assert summary.stat().st_mtime_ns == summary_before, "the strict LedgerOperator ran on the edited directory"
    _tries.reset()
    runs = dag_runs(run, "ledger_directories.")
    (refusal,) = by_task(runs[-1])["report"]
    assert str(qc) in refusal.extra["airflow"]["error"] and refusal.inputs == {}
