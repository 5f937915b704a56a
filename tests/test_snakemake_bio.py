"""A bioinformatics-shaped workflow (bwa, samtools, bcftools) through the real ``snakemake``.

tests/support/bio_workflow: 9 jobs on simulated reads, the bwa index and a QC directory per
sample as ``directory()`` outputs, a ``temp()`` BAM, a rule with ``retries``; its data
directory is a symbolic link, as a lab's shared data often is (issue 17). The first run is
made once for the module and put back before each test, the data store beside the workflow
included (``tests/support/first_run.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lineage_ledger import hash_file, open_ledger
from tests.support import bio_workflow
from tests.support.first_run import FirstRun
from tests.support.snakemake import require_snakemake, run

pytestmark = pytest.mark.slow


def records(workflow: Path, run_id: str) -> list:
    with open_ledger(str(workflow / ".lineage" / "ledger.db")) as ledger:
        return [entry.record for entry in ledger.run(run_id)]


def edit_keep_times(path: Path, text: str) -> None:
    """Append to a file inside a directory and put back the mtimes of the file and of the
    directory: neither Snakemake nor an mtime-based tool sees a change."""
    file_stat, dir_stat = path.stat(), path.parent.stat()
    with open(path, "a") as handle:
        handle.write(text)
    os.utime(path, ns=(file_stat.st_atime_ns, file_stat.st_mtime_ns))
    os.utime(path.parent, ns=(dir_stat.st_atime_ns, dir_stat.st_mtime_ns))


LOGGER = ("--logger", "ledger")


def run_in_a_lab(lab: Path) -> None:
    """The workflow in ``lab/wf``, its data in ``lab/store/v1`` behind the link ``wf/data``,
    run once with the ledger (run id ``first``)."""
    workflow = bio_workflow.prepare(lab / "wf", data_dir=lab / "store" / "v1")
    first = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-run-id", "first", cwd=workflow)
    assert first.returncode == 0, first.stderr[-3000:]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    require_snakemake()
    bio_workflow.require_tools()
    return FirstRun(tmp_path_factory.mktemp("bio"), run_in_a_lab, project="lab")


@pytest.fixture
def lab(first_run, monkeypatch) -> Path:
    """The lab as the first run left it, this test's own to edit and run again."""
    return first_run.put_back(monkeypatch)


def test_bio_workflow_records_directories_and_catches_an_edit_inside_one(lab):
    workflow = lab / "wf"

    # 1. Every job is recorded, directories included, with the digests of what is on disk.
    recs = records(workflow, "first")
    counts: dict[str, int] = {}
    for rec in recs:
        counts[rec.task_name] = counts.get(rec.task_name, 0) + 1
        assert rec.status == "succeeded", rec
    assert counts == bio_workflow.JOBS
    by_rule = {rec.task_name: rec for rec in recs}
    qc_records = [rec for rec in recs if rec.task_name == "index_and_qc"]
    qc_records.sort(key=lambda r: r.parameters["_wildcards"]["sample"])
    for sample, rec in zip(bio_workflow.SAMPLES, qc_records, strict=True):
        qc_dir = str(workflow / "qc" / sample)
        assert rec.outputs[qc_dir]["blake3"] == hash_file(qc_dir).blake3
        assert rec.outputs[qc_dir].get("type") == "dir"
    index_dir = str(workflow / "ref" / "bwa")
    assert by_rule["bwa_index"].outputs[index_dir]["blake3"] == hash_file(index_dir).blake3
    assert all(index_dir in rec.inputs for rec in recs if rec.task_name == "bwa_map")
    assert not (workflow / "mapped").exists() or not any((workflow / "mapped").iterdir())  # temp() BAMs gone
    assert by_rule["bcftools_call"].parameters["_resources"]["mem_mb"] == 200  # retries: 2, first attempt
    verify = run("verify-lineage", "--ledger", ".lineage/ledger.db", "results/report.txt", cwd=workflow)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "qc/A" in verify.stdout and "ref/bwa" in verify.stdout

    # 2. A file inside a QC directory edited, its and the directory's mtimes put back.
    flagstat = workflow / "qc" / "A" / "flagstat.txt"
    edit_keep_times(flagstat, "0 + 0 forged\n")
    edited = flagstat.read_bytes()
    plain = run("snakemake", "--cores", "2", cwd=workflow)
    assert plain.returncode == 0 and "Nothing to be done" in plain.stderr, plain.stderr[-3000:]
    verify = run("verify-lineage", "--ledger", ".lineage/ledger.db", "results/report.txt", cwd=workflow)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "flagstat.txt" in verify.stdout + verify.stderr
    strict = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert "refusing to run" in strict.stderr and f"{workflow / 'qc' / 'A'}: changed" in strict.stderr
    assert "flagstat.txt" in strict.stderr  # the file inside, by name
    assert flagstat.read_bytes() == edited  # nothing ran
    rerun = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "rerun",
                "--logger-ledger-run-id", "rerun", cwd=workflow)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert b"forged" not in flagstat.read_bytes()
    # The QC job of sample A and what is downstream of it ran again; sample B's did not.
    again = sorted((r.task_name, r.parameters["_wildcards"].get("sample")) for r in records(workflow, "rerun"))
    assert ("index_and_qc", "A") in again and ("report", None) in again
    assert ("index_and_qc", "B") not in again
    verify = run("verify-lineage", "--ledger", ".lineage/ledger.db", "results/report.txt", cwd=workflow)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_bio_workflow_verifies_after_its_data_link_moves(lab):
    """data/ is a symbolic link; the data moves and the link follows it: nothing changed."""
    workflow, store = lab / "wf", lab / "store" / "v1"
    assert (workflow / "data").readlink() == store
    moved = lab / "store" / "v2"
    shutil.move(str(store), str(moved))
    (workflow / "data").unlink()
    os.symlink(moved, workflow / "data")
    verify = run("verify-lineage", "--ledger", ".lineage/ledger.db", "results/report.txt", cwd=workflow)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    missing = [line for line in verify.stdout.splitlines() if "MISSING" in line]
    assert all("mapped/" in line for line in missing), missing  # only the temp() BAMs, deleted by design
    strict = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert strict.returncode == 0 and "Nothing to be done" in strict.stderr, strict.stderr[-3000:]
