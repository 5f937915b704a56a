"""An outside review (session 47) of the Snakemake plugin as a lab deploys it: a workflow shaped
like public bioinformatics ones, whose QC step reads files Snakemake writes beside a job's
outputs: its ``log:`` files (MultiQC reads tools' logs) and its ``benchmark:`` files (a
resources report). Through the real ``snakemake --logger ledger`` and ``verify-lineage``.

- A ``log:`` file that a downstream job reads, edited by hand with its mtime put back:
  ``rerun`` must run the job whose log it is (as for any output it
  wrote), so that the log is the job's product again. It forced the reader instead, as for a
  source: the reader read the edit again, nothing repaired it, and ``strict`` kept refusing.
- A ``benchmark:`` file is written by the job, like its outputs. No record listed it, so the
  report made from it traced back to it as a "(source)", and an edit made before the report
  first ran passed ``strict`` and ``verify-lineage``.

Both start from the same first run (the QC report made, the resources report not), made once
for the module and put back before each (``tests/support/first_run.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.first_run import FirstRun
from tests.support.snakemake import BIN, clean_env, require_snakemake, run

pytestmark = pytest.mark.slow

LOGGER = ("--logger", "ledger")

# Two samples "aligned" (split), each with a log and a benchmark file; a QC step that reads
# the logs, a resources report that reads the benchmarks.
QC_WORKFLOW = textwrap.dedent('''\
    SAMPLES = ["x", "y"]

    rule all:
        input: expand("aligned/{s}.txt", s=SAMPLES)

    rule align:
        input: "data/{s}.txt"
        output: "aligned/{s}.txt"
        log: "logs/align.{s}.log"
        benchmark: "benchmarks/align.{s}.tsv"
        shell: "sort -n {input} > {output}; echo aligned {wildcards.s} $(wc -l < {input}) > {log}"

    rule multiqc:
        input: expand("logs/align.{s}.log", s=SAMPLES)
        output: "qc/multiqc.txt"
        shell: "cat {input} > {output}"

    rule resources:
        input: expand("benchmarks/align.{s}.tsv", s=SAMPLES)
        output: "qc/resources.txt"
        shell: "cut -f1 {input} > {output}"
    ''')


def qc_workflow(tmp_path: Path) -> Path:
    workflow = tmp_path / "wf"
    (workflow / "data").mkdir(parents=True)
    (workflow / "data" / "x.txt").write_text("".join(f"{n}\n" for n in range(200, 0, -1)))
    (workflow / "data" / "y.txt").write_text("".join(f"{n}\n" for n in range(50, 0, -1)))
    (workflow / "Snakefile").write_text(QC_WORKFLOW)
    return workflow


def snakemake(workflow: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # (--logger takes several names: targets go before it)
    return run("snakemake", "--cores", "1", *args, *LOGGER, cwd=workflow)


def qc_report_made(workflow: Path) -> None:
    """The QC workflow's first run: both samples aligned (each with its log and benchmark
    file) and the QC report made from the logs; the resources report not made yet."""
    qc_workflow(workflow.parent)
    first = snakemake(workflow, "qc/multiqc.txt")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (workflow / "qc" / "resources.txt").exists()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    require_snakemake()
    return FirstRun(tmp_path_factory.mktemp("qc"), qc_report_made, project="wf")


@pytest.fixture
def qc_run(first_run, monkeypatch) -> Path:
    """The QC workflow as its first run left it, this test's own to edit and run again."""
    return first_run.put_back(monkeypatch)


def edit_keeping_mtime(path: Path, text: str) -> None:
    """A hand edit that Snakemake cannot see: the file's times put back."""
    before = path.stat()
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def lineage_kinds(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Every file ``verify-lineage --json`` reached: path -> "produced" (a record made it) or
    "source"."""
    found: dict[str, str] = {}

    def walk(node: dict) -> None:
        found[node["path"]] = node["kind"]
        for child in node.get("inputs", []):
            walk(child)

    for target in json.loads(result.stdout)["targets"]:
        if target.get("lineage"):
            walk(target["lineage"])
    return found


def test_rerun_makes_an_edited_log_file_again_where_its_reader_only_read_the_edit(qc_run):
    workflow = qc_run
    log_file = workflow / "logs" / "align.x.log"
    recorded = log_file.read_text()
    edit_keeping_mtime(log_file, "aligned x 9999\n")  # a QC figure improved by hand

    rerun = snakemake(workflow, "--logger-ledger-policy", "rerun", "qc/multiqc.txt")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The job whose log it is ran again: the log is its product again, and so is the QC report.
    assert log_file.read_text() == recorded, rerun.stderr[-3000:]
    assert "aligned x 9999" not in (workflow / "qc" / "multiqc.txt").read_text()
    verified = run_cli("qc/multiqc.txt", program="verify-lineage", cwd=workflow)
    assert verified.returncode == 0, verified.stdout[-3000:]


def test_a_benchmark_file_is_recorded_as_its_jobs_product_and_an_edit_of_it_is_refused(qc_run):
    workflow = qc_run  # the samples aligned; the resources report not made yet
    benchmark = workflow / "benchmarks" / "align.y.tsv"
    # The benchmark is the align job's product, made from the data (not a source of its own).
    verified = run_cli("--json", benchmark, program="verify-lineage", cwd=workflow)
    assert verified.returncode == 0, verified.stdout[-3000:]
    reached = lineage_kinds(verified)
    assert reached[str(benchmark)] == "produced", reached
    assert reached[str(workflow / "data" / "y.txt")] == "source", reached

    # A figure improved by hand before the report is first made: strict refuses to make it.
    lines = benchmark.read_text().splitlines()
    edit_keeping_mtime(benchmark, "\n".join([lines[0], "0.0001" + lines[1][lines[1].index("\t"):]]) + "\n")
    refused = snakemake(workflow, "--logger-ledger-policy", "strict", "qc/resources.txt")
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "benchmarks/align.y.tsv" in refused.stderr
    assert not (workflow / "qc" / "resources.txt").exists()


# make waits for the test's word (so that the recording process can be stopped first); later
# runs after it and waits to be killed, as a batch system's time limit kills a whole job.
MAKE_THEN_KILLED = textwrap.dedent('''\
    rule all:
        input: "later.txt"

    rule make:
        input: "in.txt"
        output: "made.txt"
        shell: "for i in $(seq 600); do [ -e go.flag ] && break; sleep 0.1; done && tr a-z A-Z < {input} > {output}"

    rule later:
        input: "made.txt"
        output: "later.txt"
        shell: "touch later.flag && sleep 600 && touch {output}"

    rule use:
        input: "made.txt"
        output: "final.txt"
        shell: "cat {input} > {output}"
    ''')


def wait_until(condition, process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"snakemake ended before {what}"
        assert time.monotonic() < deadline, f"{what}: not in time"
        time.sleep(0.05)


def recording_process(process: subprocess.Popen[str]) -> psutil.Process | None:
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "snakemake_logger_plugin_ledger._sidecar" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def journaled_jobs(workflow: Path) -> int:
    return sum(text.count('"job":') for text in (
        p.read_text() for p in (workflow / ".lineage" / "snakemake-pending").glob("*.jsonl")))


def test_an_output_edited_after_a_killed_run_is_not_recorded_as_the_killed_jobs_product(tmp_path):
    require_snakemake()
    (tmp_path / "in.txt").write_text("reads\n")
    (tmp_path / "Snakefile").write_text(MAKE_THEN_KILLED)
    (tmp_path / "go.flag").touch()
    first = snakemake(tmp_path, "final.txt")  # the lab's first run: made.txt is make's product
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "go.flag").unlink()
    (tmp_path / "in.txt").write_text("more reads\n")  # new data: make runs again, and is killed
    process = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1", *LOGGER, "--logger-ledger-run-id", "killed"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True)
    try:
        found: list[psutil.Process | None] = []
        wait_until(lambda: found.append(recording_process(process)) or found[-1] is not None, process,
                   "the recording process started")
        found[-1].suspend()  # SIGSTOP: as a recording process still hashing a large BAM would be
        (tmp_path / "go.flag").touch()
        wait_until(lambda: (tmp_path / "later.flag").exists() and journaled_jobs(tmp_path) >= 1, process,
                   "make finished and was journaled")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # snakemake, its job and the recording process
        process.wait(timeout=30)

    # Before the next run, someone "fixes" the output of the job the kill cut short of a record.
    made = tmp_path / "made.txt"
    assert made.read_text() == "MORE READS\n"
    made.write_text("MORE READS, EDITED\n")
    ended = made.stat().st_mtime
    edited = ended + 5
    os.utime(made, (edited, edited))  # plainly after the job ended, as any edit is
    # Not in the future when the next run starts: Snakemake itself refuses an input newer than
    # the output a job just made ("clock skew"), as in a fresh-clone CI where the job ran at once.
    while time.time() < edited + 0.5:
        time.sleep(0.1)

    assert run("snakemake", "--unlock", cwd=tmp_path).returncode == 0
    resumed = snakemake(tmp_path, "--logger-ledger-run-id", "resumed", "--rerun-incomplete", "final.txt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "left by an interrupted run" in resumed.stderr
    # The recovered record of make leaves the edited file out (it names it in not_verified):
    # no record vouches for the edit, and what was made from it does not verify.
    with open_ledger(str(tmp_path / ".lineage" / "ledger.db")) as ledger:
        recovered = [e.record for e in ledger.run("killed") if e.record.task_name == "make"]
    assert len(recovered) == 1 and recovered[0].extra["recovered_after_interruption"] is True
    assert str(made) not in recovered[0].outputs
    assert recovered[0].extra["not_verified"] == [str(made)]
    assert list(recovered[0].extra["changed_after_interruption"]) == [str(made)]
    verified = run_cli("made.txt", "final.txt", program="verify-lineage", cwd=tmp_path)
    assert verified.returncode == 1, verified.stdout[-3000:]
    assert "made.txt" in verified.stdout and "no recorded task produced" in verified.stdout, verified.stdout
