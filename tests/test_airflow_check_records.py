"""What an Airflow try's record says when the pre-run check could not vouch for its inputs.

The shape of ``tests/test_deleted_rows_engines.py``'s Airflow case: a DAG runs, a strict run
with nothing changed passes, then a file its checked tasks read is edited with its size and
mtime put back, and every index row naming it deleted. The next run (nothing rewrites the
file) meets a ledger that fails its own check (``IndexTampered``), under each policy:

* ``strict``: the try is refused; its record says so in fields, as Parsl's does
  (``refused_by``, ``check_failed``, ``not_verified``), not only inside the error text.
* ``warn`` and ``rerun``: the task runs on the file; its record says the check failed and
  lists neither the unverified input nor what the task wrote from it (``not_verified``): a
  record naming the edited file as read, with its current digest, or the outputs made from
  it, would let a later check accept the hidden edit and what came of it.

Each case then runs the DAG under ``strict`` again, which must still refuse: the run before
laundered nothing. Two DAGs, each with the cluster policy put on every task in this process
(as ``airflow_local_settings.py`` would), so that a plain ``BashOperator`` and a
``LedgerOperator`` are checked side by side: the example DAG, whose ``raw.csv`` has a
producer (``summarize`` and ``report`` read it), and a DAG whose tasks read a source nobody
produced (``plain`` and ``ledgered``). For the source, a warn or rerun run that listed the
edit as read made the next strict run pass it (both cases failed that way before).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import test_airflow as airflow_tests  # sets a private AIRFLOW_HOME before Airflow is imported
from tests.support.airflow_site import airflow_installed
from tests.support.tamper import delete_rows, tamper_keep_size_and_mtime

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]

site = airflow_tests.site
run = airflow_tests.run


def _with_policy(dag):
    """The cluster policy on every task, as ``airflow_local_settings.py`` would put it."""
    from lineage_ledger_airflow.policy import task_policy

    for task in dag.tasks:
        task_policy(task)
    return dag


def _example(site, run):
    """The example DAG (extract -> summarize, report -> combine), loaded afresh."""
    return _with_policy(site.load_dag("lineage_example").dag)


#: Two tasks reading a source nobody produced: a plain BashOperator and a LedgerOperator. A
#: source is where a read is all that vouches for the file: a record naming the hidden edit as
#: read made it the version the next check compares with, and the strict run after a warn
#: run passed it (the example's raw.csv has a producer, whose record the names still miss).
SOURCES_DAG = """
import os
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()
src, plain, ledgered = (DATA / n for n in ("src.txt", "plain.txt", "ledgered.txt"))
with DAG(dag_id="check_records", schedule=None, catchup=False) as dag:
    BashOperator(task_id="plain", bash_command=f"cp '{src}' '{plain}'",
                 inlets=[Asset(uri=f"file://{src}")], outlets=[Asset(uri=f"file://{plain}")])
    LedgerOperator(task_id="ledgered", inputs=[src], outputs=[ledgered], bash_command=f"cp '{src}' '{ledgered}'")
    BashOperator.partial(task_id="mapped", inlets=[Asset(uri=f"file://{src}")]).expand(
        bash_command=[f"cp '{src}' '{DATA}/mapped-{i}.txt'" for i in range(2)])
"""


def _sources(site, run):
    """The DAG above, written into the site's DAG folder (dag.test() runs serialized DAGs)."""
    dag_file = site.dags / "check_records.py"
    if not dag_file.exists() or dag_file.read_text() != SOURCES_DAG:  # the site may outlive a session
        dag_file.write_text(SOURCES_DAG)
    src = run.data / "src.txt"
    if not src.exists():
        run.data.mkdir(parents=True, exist_ok=True)
        src.write_text("".join(f"line {i}\n" for i in range(50)))
    return _with_policy(site.load_dag("check_records").dag)


#: Per DAG: how it is made, what a run after the first marks success (so that nothing
#: rewrites the edited file), the file edited, and each checked consumer with its output.
CASES = {
    "example": (_example, "extract", "raw.csv", {"summarize": "counts.txt", "report": "report.txt"}),
    "sources": (_sources, None, "src.txt", {"plain": "plain.txt", "ledgered": "ledgered.txt"}),
}
#: The sources DAG's mapped task (checked through its partial ``pre_execute`` hook): the files
#: its two instances write, undeclared (mapped outlets would be the same for every instance).
MAPPED = ("mapped-0.txt", "mapped-1.txt")


def _tries_of(run, dag_id: str, dag_run: int) -> dict:
    return airflow_tests.by_task(airflow_tests.dag_runs(run, f"{dag_id}.")[dag_run])


def _assert_refused_unverified(record, edited: Path) -> None:
    assert record.status == "failed"
    assert record.extra["refused_by"] == "strict"
    assert record.extra["check_failed"].startswith("IndexTampered: "), record.extra["check_failed"]
    assert record.extra["not_verified"] == [str(edited)]
    assert record.inputs == {} and record.outputs == {}  # it read nothing and vouches for nothing
    assert str(edited) in record.extra["refused_inputs"]


@pytest.mark.parametrize("dag_name", sorted(CASES))
@pytest.mark.parametrize("policy", ["strict", "warn", "rerun"])
def test_a_failed_check_is_recorded_and_launders_nothing(site, run, monkeypatch, policy, dag_name):
    from lineage_ledger_airflow import _tries

    from lineage_ledger import ArtifactMismatch, verify_before_run

    make, skip, name, consumers = CASES[dag_name]
    first = make(site, run).test()
    assert first.state == "success"
    dag_id = first.dag_id
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")  # the control: nothing changed
    assert make(site, run).test(mark_success_pattern=skip).state == "success"
    _tries.reset()
    edited = run.data / name
    tamper_keep_size_and_mtime(edited)
    delete_rows(Path(run.url.removeprefix("sqlite:///")), edited)
    outputs = {task: run.data / output for task, output in consumers.items()}

    before = {task: path.stat().st_mtime_ns for task, path in outputs.items()}
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", policy)
    third = make(site, run).test(mark_success_pattern=skip)
    assert third.state == ("failed" if policy == "strict" else "success")
    after = {task: path.stat().st_mtime_ns for task, path in outputs.items()}
    for task in outputs:  # strict refused; warn and rerun ran on the edited file, as they say
        assert (after[task] == before[task]) == (policy == "strict"), task
    if dag_name == "sources":
        copies = [(run.data / name).read_bytes() == edited.read_bytes() for name in MAPPED]
        assert copies == [policy != "strict"] * len(MAPPED)

    # A later strict run still refuses the hidden edit: the run above laundered nothing.
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")
    fourth = make(site, run).test(mark_success_pattern=skip)
    _tries.reset()
    assert fourth.state == "failed", f"the strict run after {policy} ran on the hidden edit"
    for task, out in outputs.items():
        assert out.stat().st_mtime_ns == after[task], f"{task} ran on the hidden edit after {policy}"
        _assert_refused_unverified(_tries_of(run, dag_id, 3)[task][0], edited)
    if dag_name == "sources":
        mapped = _tries_of(run, dag_id, 3)["mapped"]
        assert len(mapped) == len(MAPPED)
        for record in mapped:
            _assert_refused_unverified(record, edited)
        # The mapped instances under the policy: no outlets, so only the input is named.
        for record in _tries_of(run, dag_id, 2)["mapped"]:
            if policy == "strict":
                _assert_refused_unverified(record, edited)
            else:
                assert record.status == "succeeded" and record.inputs == {} and record.outputs == {}
                assert record.extra["not_verified"] == [str(edited)] and record.extra["policy"] == policy

    # What the records of the run under the policy say.
    tries = _tries_of(run, dag_id, 2)
    for task, out in outputs.items():
        (record,) = tries[task]
        if policy == "strict":
            _assert_refused_unverified(record, edited)
            continue
        assert record.status == "succeeded" and record.extra["policy"] == policy, task
        assert record.extra["check_failed"].startswith("IndexTampered: "), record.extra["check_failed"]
        # Neither the unverified input nor what was made of it is vouched for; both named.
        assert record.inputs == {} and record.outputs == {}, task
        assert record.extra["not_verified"] == sorted([str(edited), str(out)]), task
        assert set(record.extra["not_verified_digests"]["outputs"]) == {str(out)}
        assert "refused_by" not in record.extra
        if policy == "rerun":
            assert record.extra["rerun_because_not_verified"] == [str(edited)]
        else:
            assert "rerun_because_not_verified" not in record.extra
        if dag_name == "sources":
            # The copy differs from what the control run wrote, and nothing vouches for it.
            with pytest.raises(ArtifactMismatch):
                verify_before_run(run.url, [str(out)], "strict")


def test_warn_on_a_changed_input_records_it_but_a_strict_refusal_says_so_in_fields(site, run, monkeypatch):
    """The other outcome of the check, a file changed outside the workflow (the ledger
    itself intact): warn lists it as read and names it in ``modified_inputs`` (a read does
    not vouch for a produced file, so nothing is laundered), and the strict refusal after
    it says ``refused_by`` and names the file in ``modified_inputs`` too."""
    from lineage_ledger_airflow import _tries

    from lineage_ledger import hash_file

    assert site.load_dag("lineage_example").dag.test().state == "success"
    raw = run.data / "raw.csv"
    with raw.open("a") as handle:
        handle.write("sample-999999,1\n")
    for policy in ("warn", "strict"):
        monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", policy)
        site.load_dag("lineage_example").dag.test(mark_success_pattern="extract")
    _tries.reset()
    (warned,), (refused,) = _tries_of(run, "lineage_example", 1)["report"], _tries_of(run, "lineage_example", 2)["report"]
    assert warned.status == "succeeded" and warned.extra["modified_inputs"] == [str(raw)]
    assert warned.inputs[str(raw)]["blake3"] == hash_file(raw).blake3 and "check_failed" not in warned.extra
    assert refused.status == "failed" and refused.extra["refused_by"] == "strict"
    assert refused.extra["modified_inputs"] == [str(raw)] and refused.inputs == {}
    assert "check_failed" not in refused.extra and "not_verified" not in refused.extra
