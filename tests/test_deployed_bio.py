"""The bioinformatics-shaped workflow (tests/support/bio_workflow: bwa, samtools, bcftools,
``directory()`` and ``temp()`` outputs, ``retries:``) used as a lab would use it, through the
real ``snakemake --logger ledger`` and the command-line tools.

What tests/test_snakemake_bio.py does not already cover: a try that fails and is retried
(both tries in the ledger, the lineage through the one that succeeded), an intermediate
file edited by hand (a BAM re-headered in place, its mtime put back) that ``strict`` refuses
and ``rerun`` redoes, along with the ``temp()`` file upstream of it, and ``verify-lineage``
of the final outputs and of the directory Snakemake emptied of its ``temp()`` files. The
first run (the retried call included) is made once for the module and put back before each
test (``tests/support/first_run.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support import bio_workflow
from tests.support.first_run import FirstRun
from tests.support.snakemake import require_snakemake, run

pytestmark = pytest.mark.slow

LOGGER = ("--logger", "ledger")


def tries(workflow: Path, run_id: str) -> list[dict]:
    listed = run_cli("log", "--run", run_id, "--json", cwd=workflow, check_rc=0)
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]


def verify(workflow: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--json", *targets, program="verify-lineage", cwd=workflow)


def statuses(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Every file the verification reached (targets and their lineage): path -> status."""
    found: dict[str, str] = {}

    def walk(node: dict) -> None:
        found[node["path"]] = node["status"]
        for child in node.get("inputs", []):
            walk(child)

    for target in json.loads(result.stdout)["targets"]:
        found[target["check"]["path"]] = target["check"]["status"]
        if target.get("lineage"):
            walk(target["lineage"])
    return found


def reheader_in_place(bam: Path, old: str, new: str) -> None:
    """A hand edit a lab makes: the read group's sample renamed with ``samtools reheader``,
    written over the BAM, its mtime put back (Snakemake then sees nothing)."""
    before = bam.stat()
    header = subprocess.run(["samtools", "view", "-H", str(bam)], capture_output=True, text=True, check=True).stdout
    edited = bam.with_suffix(".edited")
    with open(edited, "wb") as out:
        subprocess.run(["samtools", "reheader", "-", str(bam)], input=header.replace(old, new).encode(),
                       stdout=out, check=True)
    os.replace(edited, bam)
    os.utime(bam, ns=(before.st_atime_ns, before.st_mtime_ns))


def run_with_a_retried_call(workflow: Path) -> None:
    """The workflow prepared in ``workflow`` and run once (run id ``first``), its
    bcftools_call failing once (a transient failure after it wrote a VCF) and retried."""
    bio_workflow.prepare(workflow)
    (workflow / "fail-once").touch()
    first = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-run-id", "first", cwd=workflow)
    assert first.returncode == 0, first.stderr[-3000:]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    require_snakemake()
    bio_workflow.require_tools()
    return FirstRun(tmp_path_factory.mktemp("bio"), run_with_a_retried_call, project="wf")


@pytest.fixture
def workflow(first_run, monkeypatch) -> Path:
    """The workflow as its first run left it, this test's own to edit and run again."""
    return first_run.put_back(monkeypatch)


def test_retried_call_edited_bam_and_temp_files_as_a_lab_meets_them(workflow):
    # 1. bcftools_call failed once (a transient failure after it wrote a VCF) and was retried.
    recs = tries(workflow, "first")
    calls = sorted((r for r in recs if r["task_name"] == "bcftools_call"), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"]) for r in calls] == [(1, "failed"), (2, "succeeded")]
    vcf = str(workflow / "calls" / "all.vcf")
    assert calls[0]["outputs"] == {} and calls[0]["extra"]["declared_outputs"] == [vcf]
    assert calls[0]["extra"]["error"]["exit_status"] == 1
    assert [r["parameters"]["_resources"]["mem_mb"] for r in calls] == [200, 400]
    assert len(recs) == sum(bio_workflow.JOBS.values()) + 1  # every job, and the failed try
    # The report's lineage goes through the try that succeeded, never the failed one.
    why = run_cli("why", "results/report.txt", "--json", cwd=workflow, check_rc=0)
    assert calls[1]["id"] in why.stdout and calls[0]["id"] not in why.stdout

    # 2. The temp() BAMs are gone, deleted by Snakemake: the final outputs verify, the BAMs
    # show as gone (MISSING in the tree), never as changed.
    assert not (workflow / "mapped" / "A.bam").exists()
    final = verify(workflow, "results/report.txt", "calls/all.vcf", "qc/", "sorted/")
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr
    seen = statuses(final)
    temp_bams = {str(workflow / "mapped" / f"{s}.bam") for s in bio_workflow.SAMPLES}
    assert {seen[bam] for bam in temp_bams} == {"MISSING"}
    assert set(seen.values()) == {"OK", "MISSING"}, seen
    named = verify(workflow, "mapped/A.bam")  # asked for by name: gone, which is not "changed"
    assert named.returncode == 1 and statuses(named)[str(workflow / "mapped" / "A.bam")] == "MISSING"

    # 3. A sorted BAM (made from a temp() BAM) re-headered by hand, its mtime kept.
    bam = workflow / "sorted" / "A.bam"
    reheader_in_place(bam, "SM:A", "SM:A_fixed")
    plain = run("snakemake", "--cores", "2", cwd=workflow)
    assert plain.returncode == 0 and "Nothing to be done" in plain.stderr, plain.stderr[-3000:]
    caught = verify(workflow, "results/report.txt")
    assert caught.returncode == 1 and statuses(caught)[str(bam)] == "MODIFIED", caught.stdout[-3000:]
    strict = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert "refusing to run" in strict.stderr and f"{bam}: changed" in strict.stderr, strict.stderr[-3000:]
    assert "SM:A_fixed" in subprocess.run(["samtools", "view", "-H", str(bam)], capture_output=True, text=True,
                                          check=True).stdout  # nothing ran
    rerun = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "rerun",
                "--logger-ledger-run-id", "rerun", cwd=workflow)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = sorted((r["task_name"], r["parameters"]["_wildcards"].get("sample")) for r in tries(workflow, "rerun"))
    # The edited BAM's producer ran again, and the producer of its temp() input before it.
    assert ("samtools_sort", "A") in again and ("bwa_map", "A") in again, again
    assert ("report", None) in again and ("samtools_sort", "B") not in again, again
    assert "SM:A_fixed" not in subprocess.run(["samtools", "view", "-H", str(bam)], capture_output=True, text=True,
                                              check=True).stdout
    after = verify(workflow, "results/report.txt")
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr
    audit = run_cli(program="verify-lineage", cwd=workflow)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr


def test_verify_of_the_directory_snakemake_emptied_of_temp_files(workflow):
    """docs/directories.md: a directory under which records name files that are all gone is
    not an error; the note lists them. Snakemake removes ``mapped/`` itself once its temp()
    BAMs are deleted: the answer must not depend on whether the empty directory is left."""
    assert not (workflow / "mapped").exists()  # Snakemake removed it
    gone = run_cli("mapped", program="verify-lineage", cwd=workflow)
    (workflow / "mapped").mkdir()
    empty = run_cli("mapped", program="verify-lineage", cwd=workflow)
    assert empty.returncode == 0 and "2 file(s) that records name under mapped are not on disk" in empty.stdout
    assert (gone.returncode, gone.stdout.splitlines()[-4:]) == (empty.returncode, empty.stdout.splitlines()[-4:]), \
        (gone.returncode, gone.stdout, gone.stderr)
