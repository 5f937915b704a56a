"""An outside review of the trust the Airflow and Nextflow plugins' pre-run checks give, made as
an attacker who can write the ledger file and the data (not the user's state directory) and as
a new user would: real ``dag.test()`` runs of the example DAG (the fixture the Airflow tests
use), real ``nextflow-ledger run ... -resume`` runs, the Airflow shipper on real spool files.

Each test names one bug found (committed as a strict xfail where the fix lay in the core, whose
mark went with the fix), or what held up (kept so that it stays so). About 45 s on this 2-core
machine at a load of 2, 70 s at 3 to 4: a ``dag.test()`` is 1 to 2.5 s, a Nextflow run 2 to 4 s.

Tried and held (not all kept as tests): an index row's digest edited to the edited file's
(Airflow and Nextflow refuse the file as MODIFIED, with the digest of the proved record, not the
row's), a row's role or seq edited (Nextflow: IndexTampered, warn leaves the file out of its
records), a consistent rewrite of a block below the remembered head and an older copy shorter
than it (both engines: strict refuses, HistoryRewritten; warn runs and its records wait in the
spool; ``verify-lineage`` says the same), the ledger deleted after a verified run (both refuse),
an input replaced by a symlink to a file with the same bytes (strict runs) or other bytes
(strict refuses), a file edited inside a directory input (``tests/test_airflow.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow
from tests import test_airflow as airflow_tests  # sets a private AIRFLOW_HOME before Airflow is imported
from tests.conftest import run_cli
from tests.support.airflow_site import airflow_installed
from tests.support.factories import make_record
from tests.support.tamper import tamper_keep_size_and_mtime
from tests.test_outside_review_s36 import _rewrite_last_block

pytestmark = pytest.mark.slow
needs_airflow = pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)")

# The module-wide Airflow site and each test's own ledger, spool and data directory.
site = airflow_tests.site
run = airflow_tests.run


def _sqlite(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _spool_status(spool: str, cwd: Path) -> str:
    return run_cli("spool", "status", "--spool", spool, cwd=cwd, check_rc=0).stdout


# -- Airflow: the machine's shipper -------------------------------------------------------------

@needs_airflow
def test_the_airflow_shipper_says_why_records_wait_on_a_rewritten_history(tmp_path, monkeypatch, caplog):
    """Bug (fixed in ``_shipper.ship``): the shipper that a scheduler runs every 2 s met a
    ledger whose history was rewritten since this account verified it (``HistoryRewritten``,
    the core's refusal to append to it) and logged it at DEBUG only, as it logs a locked
    ledger: under the scheduler's INFO log the records waited in the spool for ever and
    nothing said why. It must say so once, at ERROR, and keep the records."""
    from lineage_ledger_airflow import _shipper

    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__URL", url)
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__SPOOL", spool)
    now = utcnow()
    with open_ledger(url, spool=spool) as ledger:  # two blocks, verified: this account remembers the head
        for i in range(2):
            ledger.append_records([make_record(i, run_id="r").stored()])
        ledger.tree_head()
    _rewrite_last_block(tmp_path, str(_sqlite(url)))
    task = TaskCapture(url, engine="airflow", spool=spool, ship=False)  # a task process that ended
    task.record_now(TaskRun(task_id="c", task_name="c", status="succeeded", started=now, ended=now, run_id="late"))
    task.close(timeout=0)

    shipper = _shipper._Shipper()
    logger = logging.getLogger("lineage_ledger.airflow")  # Airflow's logging set-up may not propagate it
    logger.addHandler(caplog.handler)
    try:
        for _ in range(2):  # two rounds of the shipper
            assert shipper.sync_waiting() == 1
            shipper.ship()
    finally:
        logger.removeHandler(caplog.handler)
        shipper._reopen()
    # Each record once: where Airflow's logging set-up lets the logger propagate, caplog's own
    # handler has it too (the same record object), as when another test ran first.
    said = list({id(r): r for r in caplog.records
                 if r.levelno >= logging.WARNING and "HistoryRewritten" in r.getMessage()}.values())
    assert len(said) == 1, [r.getMessage() for r in caplog.records]  # before: DEBUG only, every round
    assert "1 record(s) wait" in _spool_status(spool, tmp_path)  # kept for after the repair


# -- Airflow: the pre-run check and verify-lineage on the example DAG (dag.test()) --------------

@needs_airflow
def test_a_symlink_swap_of_an_intermediate_is_not_laundered_for_verify_lineage(site, run, monkeypatch):
    """Bug (fixed in the core's lineage walk, ``core/_ledger/lineage.py``): ``raw.csv``
    (written by ``extract``) is replaced by a symbolic link to a file with
    other bytes. The strict LedgerOperator refuses it, naming raw.csv, and a ``warn`` run says
    it ran on a changed file, as after an edit in place. But after the warn run (or any run of
    the plain BashOperator that reads it, which no policy checks) ``verify-lineage report.txt``
    says "verified": the report's record lists ``other.csv`` (the link's target, a "source")
    and ``raw.csv`` only as its alias, and the walk never compares the alias with extract's
    output. After an edit in place the same check fails with LineageBroken (raw.csv "consumed
    as ..., but no recorded task produced that version"). The same holds for nextflow-ledger:
    a work output replaced by a link to other bytes, a ``warn -resume`` that reruns its reader,
    then ``verify-lineage results/q.txt`` verified (tried, not kept: 4 Nextflow runs)."""
    from lineage_ledger_airflow import _tries

    assert site.load_dag("lineage_example").dag.test().state == "success"
    raw, other = run.data / "raw.csv", run.data / "other.csv"
    shutil.copy2(raw, other)
    tamper_keep_size_and_mtime(other)
    raw.unlink()
    os.symlink(other, raw)
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "warn")
    assert site.load_dag("lineage_example").dag.test(mark_success_pattern="extract").state == "success"
    _tries.reset()
    (warned,) = airflow_tests.by_task(airflow_tests.dag_runs(run, "lineage_example.")[1])["report"]
    assert warned.extra["modified_inputs"] == [str(raw)]  # the plugin saw the change
    verified = run_cli("--ledger", run.url, run.data / "report.txt", program="verify-lineage", cwd=run.data)
    assert verified.returncode == 1 and "raw.csv" in verified.stdout, verified.stdout  # exit 0, "verified"


#: A LedgerOperator writes a file whose name holds '#', another (strict) reads it.
ODD_NAMES_DAG = """
import os
from pathlib import Path

from airflow.sdk import DAG
from lineage_ledger_airflow import LedgerOperator

DATA = Path(os.environ["LINEAGE_EXAMPLE_DATA"]).resolve()
made, used = DATA / "sample#1.csv", DATA / "used.txt"
with DAG(dag_id="odd_names", schedule=None, catchup=False) as dag:
    make = LedgerOperator(task_id="make", outputs=[made], bash_command=f"echo 'reads 41' > '{made}'")
    use = LedgerOperator(task_id="use", inputs=[made], outputs=[used], policy="strict",
                         bash_command=f"cat '{made}' > '{used}'")
    make >> use
"""


@needs_airflow
def test_a_file_whose_name_holds_a_hash_sign_is_recorded_and_checked(site, run):
    """Bug (fixed in ``_assets.file_uri``): LedgerOperator made its Assets' URIs as
    ``"file://" + path``, and Airflow drops what follows a '#' (or '?') of a URI as its
    fragment (query): ``sample#1.csv`` became the inlet and outlet ``file://.../sample``. The
    listener, which records a try from its Assets, hashed that missing path, so no record
    named ``sample#1.csv``; the strict reader's check then found it in no record and passed
    it, edited. (A '%' in a name was read back unquoted: another file.)"""
    from lineage_ledger_airflow import _tries

    dag_file = site.dags / "odd_names.py"
    if not dag_file.exists() or dag_file.read_text() != ODD_NAMES_DAG:
        dag_file.write_text(ODD_NAMES_DAG)
    run.data.mkdir(parents=True, exist_ok=True)
    made, used = run.data / "sample#1.csv", run.data / "used.txt"
    assert site.load_dag("odd_names").dag.test().state == "success"
    _tries.reset()
    (maker,) = airflow_tests.by_task(run.records("odd_names."))["make"]
    assert str(made) in maker.outputs, maker.outputs  # before: {} and missing_outputs .../sample
    tamper_keep_size_and_mtime(made)
    before = used.stat().st_mtime_ns
    assert site.load_dag("odd_names").dag.test(mark_success_pattern="make").state == "failed"
    assert used.stat().st_mtime_ns == before, "the strict reader ran on the edited file"


@needs_airflow
def test_a_strict_refusal_of_a_directory_names_the_files_inside(site, run, monkeypatch):
    """Bug (fixed in ``_checks._explain``): a file edited inside ``qc`` (a directory Asset,
    recorded with its manifest) and another slipped into it are refused by the strict
    LedgerOperator, but its error said only "qc: MODIFIED since it was last written by record
    ...": the plugin's own wording of the check left out what the core found inside (which
    files changed, appeared or disappeared), which docs/airflow.md promises ("the error names
    every changed file") and ``verify-lineage`` prints."""
    from lineage_ledger_airflow import _tries

    assert site.load_dag("ledger_directories").dag.test().state == "success"
    qc = run.data / "qc"
    before = qc.stat()
    tamper_keep_size_and_mtime(qc / "B.txt")
    (qc / "D.txt").write_text("reads=D\n")
    os.utime(qc, ns=(before.st_atime_ns, before.st_mtime_ns))
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")
    assert site.load_dag("ledger_directories").dag.test(mark_success_pattern="qc").state == "failed"
    _tries.reset()
    (refused,) = airflow_tests.by_task(airflow_tests.dag_runs(run, "ledger_directories.")[-1])["report"]
    error = refused.extra["airflow"]["error"]
    assert "changed: B.txt" in error and "appeared: D.txt" in error, error


@needs_airflow
def test_airflow_a_rewritten_history_strict_refuses_and_warn_keeps_its_records(site, run, monkeypatch):
    """Held up: the example DAG recorded and verified (``verify-lineage``), then the ledger's
    last block rewritten consistently. The strict LedgerOperator refuses before it runs, its
    error naming HistoryRewritten; a ``warn`` run succeeds, the DAG is not held up, and the
    records the core will not append to a rewritten history wait in the spool;
    ``verify-lineage`` agrees that the history was rewritten."""
    from lineage_ledger_airflow import _tries

    assert site.load_dag("lineage_example").dag.test().state == "success"
    _tries.reset()
    final = run.data / "final.txt"
    assert run_cli("--ledger", run.url, final, program="verify-lineage", cwd=run.data).returncode == 0
    _rewrite_last_block(run.data.parent, str(_sqlite(run.url)))
    report = run.data / "report.txt"
    before = report.stat().st_mtime_ns
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "strict")
    assert site.load_dag("lineage_example").dag.test(mark_success_pattern="extract").state == "failed"
    assert report.stat().st_mtime_ns == before, "the strict LedgerOperator ran on a rewritten history"
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__POLICY", "warn")
    assert site.load_dag("lineage_example").dag.test(mark_success_pattern="extract").state == "success"
    _tries.reset()
    spool = run.vars["AIRFLOW__LINEAGE_LEDGER__SPOOL"]
    # strict: summarize, the refused report; warn: summarize, report, combine.
    assert "5 record(s) wait" in _spool_status(spool, run.data)
    audit = run_cli("--ledger", run.url, final, program="verify-lineage", cwd=run.data)
    assert audit.returncode == 1 and "HistoryRewritten" in audit.stdout, audit.stdout


# -- Nextflow: nextflow-ledger's check before -resume -------------------------------------------

def _nextflow_pipeline(tmp_path: Path, published: bool = True) -> Path:
    """P (src.txt -> p.txt) then Q (p.txt -> q.txt), ``tests/test_engines_warn_records``'s
    pipeline (``--b N`` changes Q's script only), recorded once; the ledger's path."""
    from tests.support import nextflow as nf
    from tests.test_engines_warn_records import PIPELINE

    nf.require_nextflow()
    (tmp_path / "main.nf").write_text(PIPELINE if published else PIPELINE.replace("publishDir 'results', mode: 'copy'", ""))
    (tmp_path / "src.txt").write_text("some text 1\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    return tmp_path / ".lineage" / "ledger.db"


def _work_file(tmp_path: Path, name: str, last_line: str) -> Path:
    (found,) = [p for p in (tmp_path / "work").glob(f"*/*/{name}")
                if not p.is_symlink() and p.read_text().endswith(last_line)]
    return found


def test_nextflow_strict_resume_notices_a_ledger_rolled_back_past_the_last_run(tmp_path):
    """Bug (fixed in the core: the account that appends a block remembers it): a strict
    ``-resume --b 2`` checks the ledger (its head, the first run's block, is
    remembered), runs Q again and appends its record. The attacker puts back the copy of the
    ledger taken before that run (a backup, an rsync) and edits the new ``q.txt`` in its work
    directory (size and mtime kept). The next strict ``-resume --b 2`` reuses Q on the edited
    file, exit 0: the copy ends exactly at the remembered head, and ``q.txt`` is in no record
    of it, which the check does not report. ``verify-lineage`` of that file says UNRECORDED.
    (With Q's ``publishDir`` the run is refused, but for the published copy, which the run
    being rolled back rewrote: "changed since the last recorded run", the wrong cause.)"""
    from tests.support import nextflow as nf

    db = _nextflow_pipeline(tmp_path, published=False)
    shutil.copy(db, tmp_path / "backup.db")
    second = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", "--b", "2", cwd=tmp_path)
    assert second.returncode == 0 and "Submitted process > Q" in second.stdout, second.stdout + second.stderr
    q_txt = _work_file(tmp_path, "q.txt", "2\n")
    tamper_keep_size_and_mtime(q_txt)
    for leftover in ("ledger.db-wal", "ledger.db-shm"):
        (db.parent / leftover).unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", db)
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", "--b", "2", cwd=tmp_path)
    unrecorded = nf.run("verify-lineage", str(q_txt), cwd=tmp_path)
    # The writer's own blocks are remembered now: the rollback is named, not only the file.
    assert unrecorded.returncode == 1 and "shrank" in unrecorded.stdout, unrecorded.stdout
    assert strict.returncode == 1, strict.stdout + strict.stderr  # exit 0: Q reused on the edited q.txt
    assert "HistoryRewritten" in strict.stderr, strict.stderr


def test_nextflow_a_rewritten_history_strict_refuses_and_warn_keeps_its_records(tmp_path):
    """Held up: the ledger verified (``verify-lineage``), then its last block rewritten
    consistently (ids and root recomputed). A strict ``-resume`` refuses before Nextflow
    starts, naming HistoryRewritten; a ``warn -resume`` runs (Q again), says it, and the
    records it cannot append to a rewritten history stay in the spool, said so in its last
    line; ``verify-lineage`` agrees."""
    from tests.support import nextflow as nf

    db = _nextflow_pipeline(tmp_path)
    q_txt = _work_file(tmp_path, "q.txt", "1\n")
    assert nf.run("verify-lineage", str(q_txt), cwd=tmp_path).returncode == 0  # its head is remembered
    _rewrite_last_block(tmp_path, str(db))
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=tmp_path)
    assert strict.returncode == 1 and "Launching" not in strict.stdout, strict.stdout + strict.stderr
    assert "refusing to run" in strict.stderr and "HistoryRewritten" in strict.stderr, strict.stderr
    warned = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "warn", "--b", "2", cwd=tmp_path)
    assert warned.returncode == 0 and "Submitted process > Q" in warned.stdout, warned.stdout + warned.stderr
    assert "HistoryRewritten" in warned.stderr and "some wait in the spool" in warned.stderr, warned.stderr
    waiting = nf.run("lineage-ledger", "spool", "status", cwd=tmp_path)
    assert "2 record(s) wait" in waiting.stdout, waiting.stdout + waiting.stderr  # Q's try and its publication
    audit = nf.run("verify-lineage", str(tmp_path / "results" / "q.txt"), cwd=tmp_path)
    assert audit.returncode == 1 and "HistoryRewritten" in audit.stdout, audit.stdout


#: D writes a directory, E reads every file in it (a glob, as pipelines over per-sample files do).
DIRECTORY_PIPELINE = """
params.e = 1
process D {
  publishDir 'results', mode: 'copy'
  output:
  path 'outdir'
  script:
  \"\"\"
  mkdir -p outdir/sub
  echo alpha 1 > outdir/a.txt
  echo beta 1 > outdir/sub/b.txt
  \"\"\"
}
process E {
  input:
  path d
  output:
  path 'e.txt'
  script:
  \"\"\"
  cat ${d}/*.txt ${d}/sub/*.txt > e.txt
  echo ${params.e} >> e.txt
  \"\"\"
}
workflow {
  D() | E
}
"""


def test_nextflow_strict_resume_refuses_a_file_slipped_into_a_cached_output_directory(tmp_path):
    """Bug (fixed in ``_appeared``, called by ``cli._check_resume``): D's directory output is
    recorded file by file (the wrapper lists what the task wrote); the check before ``-resume`` rehashes those
    files only. A file the attacker adds to ``outdir/sub`` (the directories' mtimes put back)
    is in no record, so it was not reported: a strict ``-resume --e 2`` reused D, ran E on
    the slipped-in file, exit 0, and E's record lists it as a source that ``verify-lineage``
    accepts. The wrapper knows every file D wrote; one in D's work directory that it did not
    write changed outside the workflow. Likewise a file removed from the directory: Nextflow
    checks only that ``outdir`` is there, and E ran without it (fixed in ``_appeared._vanished``).
    (Editing a file inside the directory was refused.)"""
    from tests.support import nextflow as nf

    nf.require_nextflow()
    (tmp_path / "main.nf").write_text(DIRECTORY_PIPELINE)
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (sub,) = [p for p in (tmp_path / "work").glob("*/*/outdir/sub") if not p.parent.is_symlink()]  # not E's link
    times = [(d, d.stat()) for d in (sub.parent, sub)]
    slipped, removed = sub / "c.txt", sub.parent / "a.txt"
    slipped.write_text("gamma 666\n")
    removed.unlink()
    for directory, before in times:
        os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))
    published = tmp_path / "results" / "outdir"
    tamper_keep_size_and_mtime(published / "sub" / "b.txt")
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", "--e", "2", cwd=tmp_path)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # exit 0: E ran on c.txt, without a.txt
    assert "refusing to run" in strict.stderr and "Launching" not in strict.stdout, strict.stdout + strict.stderr
    assert f"{slipped}: appeared" in strict.stderr and f"{removed}: vanished" in strict.stderr, strict.stderr
    # The published copy is recorded as a directory: the refusal names the file inside it that
    # changed (fixed in _preflight.describe; it named the directory only).
    assert f"{published}: changed" in strict.stderr and "changed: sub/b.txt" in strict.stderr, strict.stderr
    # Under rerun, D (whose directory it is) is moved aside and runs again: E reads what D wrote.
    rerun = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "rerun", "--e", "2", cwd=tmp_path)
    assert rerun.returncode == 0 and "Submitted process > D" in rerun.stdout, rerun.stdout + rerun.stderr
    assert not slipped.exists() and removed.exists()
    assert "666" not in _work_file(tmp_path, "e.txt", "2\n").read_text()
