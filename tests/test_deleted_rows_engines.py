"""Index rows deleted behind the ledger's back, met by each engine's own pre-run check as
deployed: Parsl's memoizer, ``nextflow-ledger run -resume`` and Airflow's LedgerOperator.

The same shape each time (as ``tests/test_deleted_rows.py`` does for Snakemake): a two-step
chain is recorded; a run with nothing changed reuses its results as before; then the
intermediate file is edited with its mtime put back (the engine's own cache sees nothing)
and every ``ll_artifacts`` row naming it deleted, so that no record seems to know it. The
strict policy must refuse it as tampered, not take it for a source it never saw and reuse or
build on it. What notices is the names kept beside the verified tree (``core/_log/names.py``):
run this file with ``LINEAGE_AUDIT_NAMES=0`` and each of these cases fails.

Parsl also under ``warn``: the hidden edit is reused and logged, and the ``cached`` try then
recorded must not vouch for it, or the next strict run would pass it (a bug found here).

Under ``rerun`` a ledger that fails its own check cannot vouch for the files it was asked
about, so they count as changed: Parsl, Snakemake and nextflow-ledger run again the work
that made them, and the hidden edit is rewritten (before, each logged the error and reused
the edit). A back-end merely out of reach is not a failed check: under ``rerun`` it is only
logged (the Snakemake control). The Snakemake and Nextflow rerun cases tamper before any
check has remembered the ledger's head, so the first use's full audit catches the deleted
rows even without the names; the Parsl one needs the names, like the cases above.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests import test_airflow as airflow_tests  # sets a private AIRFLOW_HOME before Airflow is imported
from tests.support.airflow_site import airflow_installed
from tests.support.first_run import FirstRun
from tests.support.tamper import delete_rows, tamper_keep_size_and_mtime

#: The names switch, passed on to the engines' subprocesses (the helpers that start them drop
#: every LINEAGE_ setting of the caller), so that the whole run can be made without names.
NAMES_SWITCH = {k: v for k, v in os.environ.items() if k == "LINEAGE_AUDIT_NAMES"}


def recorded(db: Path) -> list[dict]:
    """Every record body in ledger order, read straight from the table: opening the ledger
    afresh would audit it, and the deleted rows fail that audit."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body FROM ll_records ORDER BY seq").fetchall()
    return [json.loads(bytes(body) if not isinstance(body, str) else body) for (body,) in rows]


# -- Parsl: the memoizer's check before reuse or launch ----------------------------------------

def _parsl_chain(workdir: Path, url: str, policy: str = "strict"):
    """generate (bash: seq > raw.txt) -> square (python: raw.txt -> squares.txt), the example's
    first two stages, with checkpoints and the strict policy; their AppFutures and run id."""
    from lineage_ledger_parsl import ParslLedger
    from parsl.data_provider.files import File

    from tests.support import parsl as support

    pipeline = support.load_pipeline()
    where = pipeline.paths(str(workdir))
    apps = pipeline.make_apps()
    config = pipeline.make_config(str(workdir), "threads", ParslLedger(url, policy=policy))
    with support.loaded(config) as dfk:  # cleanup flushes the capture: the records are in
        raw = apps.generate(20, outputs=[File(where["raw.txt"])])
        squares = apps.square(inputs=[raw.outputs[0]], outputs=[File(where["squares.txt"])])
        for future in (raw, squares):
            future.exception()  # wait; each test asserts what it expects of the outcome
        return raw, squares, dfk.run_id


def _statuses(url: str, run_id: str, tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """The statuses the ledger holds for each task of run ``run_id``, once it holds a record of
    each of ``tasks``. The DataFlowKernel's cleanup waits a few seconds for the recording
    process to ship; under load it may leave the records to land a little later (nothing is
    lost: they are on their way through the spool), so the records are waited for."""
    from lineage_ledger import open_ledger

    deadline = time.monotonic() + 120
    while True:
        found: dict[str, list[str]] = {}
        with open_ledger(url) as ledger:
            for entry in ledger.run(run_id):
                found.setdefault(entry.record.task_name, []).append(entry.record.status)
        if set(tasks) <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_parsl_strict_memoizer_refuses_an_intermediate_whose_rows_were_deleted(workdir):
    pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
    pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")
    from lineage_ledger import IndexTampered, open_ledger

    url = f"sqlite:///{workdir / 'ledger.db'}"
    raw_txt, squares_txt = workdir / "raw.txt", workdir / "squares.txt"
    generate, square, first = _parsl_chain(workdir, url)
    assert square.result() == 20
    assert _statuses(url, first, ("generate", "square")) == {"generate": ["succeeded"], "square": ["succeeded"]}

    # The control: nothing changed, both results come from the checkpoint as before.
    generate, square, control = _parsl_chain(workdir, url)
    assert square.result() == 20
    assert generate.task_record["from_memo"] and square.task_record["from_memo"]
    assert _statuses(url, control, ("generate", "square")) == {"generate": ["cached"], "square": ["cached"]}

    tamper_keep_size_and_mtime(raw_txt)
    delete_rows(workdir / "ledger.db", raw_txt)
    squares_before = squares_txt.stat().st_mtime_ns
    generate, square, third = _parsl_chain(workdir, url)
    # Without the names, raw.txt looked like a source nobody recorded: generate's result was
    # reused from the checkpoint and square ran on the edited file (a miss: its digest changed).
    with pytest.raises(IndexTampered, match="left out record"):
        generate.result()
    assert square.exception() is not None  # its dependency failed: it never ran
    assert squares_txt.stat().st_mtime_ns == squares_before
    assert _statuses(url, third, ("generate",)) == {"generate": ["failed"]}  # the refused try, recorded as such
    with open_ledger(url) as ledger:
        (refused,) = [e.record for e in ledger.run(third)]
    assert refused.extra["refused_by"] == "strict" and "IndexTampered" in refused.extra["check_failed"]
    assert refused.outputs == {} and refused.extra["not_verified"] == [str(raw_txt)]  # vouches for nothing


def test_parsl_warn_reuses_but_its_cached_record_does_not_vouch_for_the_hidden_edit(workdir, caplog):
    """Under warn, a check that finds the index tampered is logged and the cached result
    reused; the ``cached`` try it records must not list the files it could not check, or
    their edited bytes would get a producer, and the next strict run would pass them."""
    pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
    pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")
    from lineage_ledger import IndexTampered, open_ledger

    url = f"sqlite:///{workdir / 'ledger.db'}"
    raw_txt = workdir / "raw.txt"
    assert _parsl_chain(workdir, url, "warn")[1].result() == 20
    tamper_keep_size_and_mtime(raw_txt)
    delete_rows(workdir / "ledger.db", raw_txt)
    generate, _, second = _parsl_chain(workdir, url, "warn")
    assert generate.result() == 0 and generate.task_record["from_memo"]  # warn: reused, and said so
    assert any("left out record" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    with open_ledger(url) as ledger:
        (cached,) = [e.record for e in ledger.run(second) if e.record.task_name == "generate"]
    assert cached.status == "cached" and str(raw_txt) not in cached.outputs, cached.outputs
    assert cached.extra["not_verified"] == [str(raw_txt)] and "IndexTampered" in cached.extra["check_failed"]
    generate, _, _ = _parsl_chain(workdir, url, "strict")
    with pytest.raises(IndexTampered, match="left out record"):
        generate.result()


def test_parsl_rerun_runs_again_a_task_whose_files_a_tampered_ledger_cannot_vouch_for(workdir, caplog):
    """Under rerun, a ledger that fails its own check cannot vouch for the task's files, so
    they count as changed: the cached result is ignored and the task runs again, rewriting
    the hidden edit; its record then lists its files, as after any real run."""
    pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
    pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")
    from lineage_ledger import hash_file, open_ledger

    url = f"sqlite:///{workdir / 'ledger.db'}"
    raw_txt = workdir / "raw.txt"
    assert _parsl_chain(workdir, url, "rerun")[1].result() == 20
    made = raw_txt.read_bytes()
    tamper_keep_size_and_mtime(raw_txt)
    delete_rows(workdir / "ledger.db", raw_txt)
    generate, square, second = _parsl_chain(workdir, url, "rerun")
    # Before: the error was logged and generate's checkpointed result reused on the edit.
    assert generate.result() == 0 and not generate.task_record["from_memo"]
    assert square.result() == 20
    assert raw_txt.read_bytes() == made  # regenerated
    assert any("left out record" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    with open_ledger(url) as ledger:
        (ran,) = [e.record for e in ledger.run(second) if e.record.task_name == "generate"]
    assert ran.status == "succeeded", ran.status
    assert ran.outputs[str(raw_txt)]["blake3"] == hash_file(str(raw_txt)).blake3, ran.outputs
    assert ran.extra["rerun_because_not_verified"] == [str(raw_txt)]
    assert "IndexTampered" in ran.extra["check_failed"]
    generate, square, _ = _parsl_chain(workdir, url, "strict")  # the rerun's record is one a check trusts
    assert generate.result() == 0 and generate.task_record["from_memo"] and square.result() == 20


# -- Nextflow: nextflow-ledger's check before -resume ------------------------------------------

def _nextflow(program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """As ``tests.support.nextflow.run``, with the names switch passed on."""
    from tests.support import nextflow as nf

    command = str(nf.require_nextflow()) if program == "nextflow" else str(nf.BIN / program)
    return subprocess.run([command, *args], cwd=cwd, env=nf.env(cwd, **NAMES_SWITCH), capture_output=True,
                          text=True, timeout=180)


def _first_nextflow_run(here: Path) -> None:
    from tests.support import nextflow as nf

    here.rmdir()  # made by FirstRun; the example's copy makes it
    nf.copy_example(here)
    first = _nextflow("nextflow-ledger", "run", "main.nf", cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr


@pytest.fixture(scope="module")
def nextflow_first(tmp_path_factory) -> FirstRun:
    """The example's first run through nextflow-ledger, made once (tests/support/first_run.py)."""
    from tests.support import nextflow as nf

    nf.require_nextflow()
    return FirstRun(tmp_path_factory.mktemp("nextflow"), _first_nextflow_run, project="example")


@pytest.fixture
def nextflow_example(nextflow_first, monkeypatch) -> Path:
    """The Nextflow example as its first run left it, its state included."""
    return nextflow_first.put_back(monkeypatch)


@pytest.mark.slow
def test_nextflow_strict_resume_refuses_a_work_output_whose_rows_were_deleted(nextflow_example):
    here = nextflow_example
    # The control: a strict -resume with nothing changed reuses every task.
    control = _nextflow("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert control.returncode == 0, control.stdout + control.stderr
    assert "Cached process > SPLIT (alpha)" in control.stdout and "Submitted process" not in control.stdout

    # SPLIT's output in its work directory, which COUNT (alpha) reads through a staged link.
    words = next(p for p in (here / "work").glob("*/*/alpha.words") if not p.is_symlink())
    tamper_keep_size_and_mtime(words)
    delete_rows(here / ".lineage" / "ledger.db", words)
    report_before = (here / "results" / "report.txt").read_bytes()
    strict = _nextflow("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    # Without the names, alpha.words passed as a source nobody recorded, and Nextflow reused
    # SPLIT and COUNT (their cache keys hold the inputs' path, size and mtime) on the edit.
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "refusing to run" in strict.stderr and "left out record" in strict.stderr, strict.stderr
    assert "Launching" not in strict.stdout  # Nextflow never started
    assert (here / "results" / "report.txt").read_bytes() == report_before


@pytest.mark.slow
def test_nextflow_rerun_resume_runs_again_the_tasks_a_tampered_ledger_cannot_vouch_for(nextflow_example):
    """Under rerun, the files the ledger was asked about count as changed when it fails its
    own check: the tasks that made them (or read them, for a source) have their work
    directories moved aside and run again, so the hidden edit is rewritten."""
    from lineage_ledger import hash_file

    here = nextflow_example
    db = here / ".lineage" / "ledger.db"
    first_records = len(recorded(db))

    words = next(p for p in (here / "work").glob("*/*/alpha.words") if not p.is_symlink())
    made = words.read_bytes()
    tamper_keep_size_and_mtime(words)
    delete_rows(here / ".lineage" / "ledger.db", words)
    rerun = _nextflow("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "rerun", cwd=here)
    # Before: logged, and Nextflow reused SPLIT (alpha) and everything after it on the edit.
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "IndexTampered" in rerun.stderr, rerun.stderr
    assert "Submitted process > SPLIT (alpha)" in rerun.stdout, rerun.stdout
    assert words.read_bytes() == made  # run again in the same place
    quarantine = here / ".lineage" / "nextflow" / "quarantine"
    kept = [p for p in quarantine.glob("*/work/*/*/alpha.words") if not p.is_symlink()]  # not COUNT's link
    assert len(kept) == 1 and kept[0].read_bytes() != made  # the edited file, kept aside
    new = recorded(db)[first_records:]
    split = [r for r in new if str(words) in r["outputs"]]
    assert split and split[-1]["status"] == "succeeded", [(r["task_name"], r["status"]) for r in new]
    assert split[-1]["outputs"][str(words)]["blake3"] == hash_file(str(words)).blake3


# -- Snakemake: the policy hook's check between building the DAG and scheduling ------------------

@pytest.mark.slow
def test_snakemake_rerun_regenerates_an_intermediate_whose_rows_were_deleted(tmp_path):
    """``--logger-ledger-policy rerun``: the ledger fails its own check, so every file it was
    asked about counts as changed and Snakemake's DAG (not the ledger) names their producers
    (for sources: their readers), which are forced as for a changed file."""
    from lineage_ledger import hash_file
    from tests.support.snakemake import require_snakemake
    from tests.support.snakemake import run as snakemake_run
    from tests.test_snakemake import POLICY

    require_snakemake()
    (tmp_path / "Snakefile").write_text(POLICY)
    (tmp_path / "src.txt").write_text("some text\n")
    first = snakemake_run("snakemake", "--cores", "1", "--logger", "ledger", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    b = tmp_path / "b.txt"
    made = b.read_bytes()
    tamper_keep_size_and_mtime(b)
    delete_rows(tmp_path / ".lineage" / "ledger.db", b)
    rerun = snakemake_run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "rerun",
                          "--logger-ledger-run-id", "again", cwd=tmp_path)
    # Before: logged ("running without the rerun policy") and "Nothing to be done" on the edit.
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "IndexTampered" in rerun.stderr, rerun.stderr[-3000:]
    assert b.read_bytes() == made  # regenerated
    again = {r["task_name"]: r for r in recorded(tmp_path / ".lineage" / "ledger.db") if r["run_id"] == "again"}
    assert again["b"]["status"] == "succeeded", again
    assert again["b"]["outputs"][str(b)]["blake3"] == hash_file(str(b)).blake3
    assert str(tmp_path / "c.txt") in again["c"]["outputs"]  # and what was built on it


@pytest.mark.slow
def test_snakemake_rerun_with_a_ledger_out_of_reach_still_only_logs(tmp_path):
    """The control: a back-end that cannot be reached has not failed a check; under rerun
    the run goes on as before, forcing nothing (its records wait in the spool)."""
    from tests.support.snakemake import require_snakemake
    from tests.support.snakemake import run as snakemake_run
    from tests.test_snakemake import POLICY

    require_snakemake()
    pytest.importorskip("psycopg", reason="a PostgreSQL URL needs lineage-ledger[postgres]")
    (tmp_path / "Snakefile").write_text(POLICY)
    (tmp_path / "src.txt").write_text("some text\n")
    first = snakemake_run("snakemake", "--cores", "1", cwd=tmp_path)  # no ledger: Snakemake alone
    assert first.returncode == 0, first.stderr[-3000:]
    c = tmp_path / "c.txt"
    c_before = c.stat().st_mtime_ns
    rerun = snakemake_run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "rerun",
                          "--logger-ledger-url", "postgresql://nobody@127.0.0.1:1/ledger", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "could not check files against the ledger" in rerun.stderr, rerun.stderr[-3000:]
    assert "Nothing to be done" in rerun.stderr, rerun.stderr[-3000:]
    assert c.stat().st_mtime_ns == c_before


# -- Airflow: LedgerOperator's check (_checks.check_inputs) under dag.test() ----------------------

# The module-wide Airflow site (its metadata database migrated once) and a ledger, spool and
# data directory of each test's own: tests/test_airflow.py's fixtures, used here as they are.
site = airflow_tests.site
run = airflow_tests.run


@pytest.mark.slow
@pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)")
def test_airflow_strict_ledger_operator_refuses_an_input_whose_rows_were_deleted(site, run, monkeypatch):
    from lineage_ledger_airflow import _tries

    assert site.load_dag("lineage_example").dag.test().state == "success"
    raw, report = run.data / "raw.csv", run.data / "report.txt"

    # The control: strict, nothing changed; extract's output reused (marked success), all ran.
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")
    assert site.load_dag("lineage_example").dag.test(mark_success_pattern="extract").state == "success"

    tamper_keep_size_and_mtime(raw)
    delete_rows(Path(run.url.removeprefix("sqlite:///")), raw)
    report_before = report.stat().st_mtime_ns
    third = site.load_dag("lineage_example").dag.test(mark_success_pattern="extract")
    _tries.reset()
    assert third.state == "failed"
    assert report.stat().st_mtime_ns == report_before, "the strict LedgerOperator ran on the edited file"
    runs = airflow_tests.dag_runs(run, "lineage_example.")
    assert len(runs) == 3
    (refused,) = airflow_tests.by_task(runs[2])["report"]
    error = refused.extra["airflow"]["error"]
    assert refused.status == "failed" and "left out record" in error, error
