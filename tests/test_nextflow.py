"""nextflow-ledger with real Nextflow 25.04.4 runs (skipped, with the reason, where it is not built).

A JVM start costs seconds on a small machine, so the runs are few: one recorded example run,
shared by the read-only checks and (put back as it was, tests/support/first_run.py) the
tamper-and-resume sequence, and one run of a pipeline of failing, retried, containerised and
conda tasks, shared by the checks of each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from blake3 import blake3

from tests.support import nextflow as nf
from tests.support.first_run import FirstRun

pytestmark = pytest.mark.slow


def _by_name(records):
    named: dict[str, list[dict]] = {}
    for record in records:
        named.setdefault(record["task_name"], []).append(record)
    return named


TITLE = ("--title", "counted")


@pytest.fixture(scope="module")
def example_first_run(tmp_path_factory) -> tuple[FirstRun, subprocess.CompletedProcess[str]]:
    """The example run once through nextflow-ledger (``--title counted``), kept to be put back
    before each test that uses it: (the kept run, what the run said)."""
    nf.require_nextflow()
    said: list[subprocess.CompletedProcess[str]] = []

    def make(root: Path) -> None:
        here = nf.copy_example(root / "example")
        said.append(nf.run("nextflow-ledger", "run", "main.nf", *TITLE, cwd=here))
        assert said[0].returncode == 0, said[0].stdout + said[0].stderr

    return FirstRun(tmp_path_factory.mktemp("nf"), make, project="first"), said[0]


@pytest.fixture
def example_run(example_first_run, monkeypatch) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The example's launch directory as its first run left it, and what that run said."""
    first_run, result = example_first_run
    return first_run.put_back(monkeypatch) / "example", result


def test_every_task_and_publication_is_recorded(example_run):
    here, result = example_run
    assert "recorded 5 task try(s) and 3 publication(s)" in result.stderr
    named = _by_name(nf.records(here))
    assert sorted((name, len(rs)) for name, rs in named.items()) == [
        ("COUNT", 2), ("COUNT:publish", 2), ("REPORT", 1), ("REPORT:publish", 1), ("SPLIT", 2)]
    for task in named["SPLIT"] + named["COUNT"] + named["REPORT"]:
        workdir = Path(task["extra"]["workdir"])
        assert task["engine"] == "nextflow" and task["status"] == "succeeded"
        assert task["extra"]["exit_status"] == 0
        assert task["code_digest"] == blake3((workdir / ".command.sh").read_bytes()).hexdigest()
        assert task["parameters"]["params"] == {"title": "counted"}
        for path in task["outputs"]:
            assert Path(path).parent == workdir and not Path(path).is_symlink()
        for path in task["inputs"]:  # the real files behind the staged links
            assert not Path(path).is_symlink() and not Path(path).parent.samefile(workdir)
    split_inputs = sorted(p for t in named["SPLIT"] for p in t["inputs"])
    assert split_inputs == [str(here / "data" / "alpha.txt"), str(here / "data" / "beta.txt")]
    # COUNT read SPLIT's output in SPLIT's work directory: the lineage links up.
    split_outputs = {p for t in named["SPLIT"] for p in nf.files_written(t)}
    assert {p for t in named["COUNT"] for p in t["inputs"]} == split_outputs
    report = named["REPORT"][0]
    assert "sort" in report["extra"]["script"] and "# counted" in (here / "results" / "report.txt").read_text()
    published = named["REPORT:publish"][0]
    assert published["outputs"] == {str(here / "results" / "report.txt"): report["outputs"][
        str(Path(report["extra"]["workdir"]) / "report.txt")]}


def test_published_report_verifies_back_to_the_sources(example_run):
    here, _ = example_run
    result = nf.run("verify-lineage", "results/report.txt", "results/counts/alpha.count", cwd=here)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout and "data/alpha.txt" in result.stdout and "REPORT:publish" in result.stdout


#: The console script's own two lines, behind an audit hook that notes which of these modules
#: the wrapper had imported when it started Nextflow, and an exit hook for the whole run.
PROBE = """
import atexit, json, sys
WATCHED = ("lineage_ledger", "logging", "concurrent.futures", "dataclasses", "typing", "blake3", "sqlite3",
           "lineage_ledger_nextflow._log", "lineage_ledger_nextflow._tasks", "lineage_ledger_nextflow._preflight")
seen = {}
def hook(event, args):
    if event == "subprocess.Popen" and "at_start" not in seen:
        seen["at_start"] = [m for m in WATCHED if m in sys.modules]
sys.addaudithook(hook)
def done():
    seen["sqlalchemy"] = sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy")
    seen["lineage_ledger"] = "lineage_ledger" in sys.modules
    with open("probe.json", "w") as out:
        json.dump(seen, out)
atexit.register(done)
from lineage_ledger_nextflow.cli import main
sys.argv[0] = "nextflow-ledger"
main()
"""


def test_nextflow_starts_before_the_wrapper_imports_and_sqlite_needs_no_sqlalchemy(tmp_path):
    """The JVM's start (seconds) overlaps the wrapper's imports instead of waiting for them, and
    recording into an SQLite ledger does not import SQLAlchemy (#20's overhead)."""
    (tmp_path / "main.nf").write_text("process ONE {\n  output: path 'one.txt'\n  script: 'echo 1 > one.txt'\n}\n"
                                      "workflow {\n  ONE()\n}\n")
    result = subprocess.run([sys.executable, "-c", PROBE, "run", "main.nf"], cwd=tmp_path, env=nf.env(tmp_path),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recorded 1 task try(s)" in result.stderr
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["at_start"] == [] and probe["lineage_ledger"] is True
    assert probe["sqlalchemy"] == []
    assert [r["task_name"] for r in nf.records(tmp_path)] == ["ONE"]


def test_tampered_work_output_plain_resume_strict_and_rerun(example_run, tmp_path):
    here, _ = example_run  # the example run once through nextflow-ledger
    count = next(p for p in (here / "work").glob("*/*/alpha.count") if not p.is_symlink())
    reference = tmp_path / "mtime"
    shutil.copy2(count, reference)
    size = count.stat().st_size
    count.write_text(count.read_text().replace("9", "8"))  # same size, different bytes
    shutil.copystat(reference, count)
    assert count.stat().st_size == size

    plain = nf.run("nextflow", "run", "main.nf", *TITLE, "-resume", cwd=here)  # Nextflow alone: the cache is reused
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "Cached process > COUNT (alpha)" in plain.stdout and "Submitted process" not in plain.stdout

    report_before = (here / "results" / "report.txt").read_bytes()
    strict = nf.run("nextflow-ledger", "run", "main.nf", *TITLE, "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "refusing to run" in strict.stderr and str(count) in strict.stderr
    assert "Launching" not in strict.stdout  # nothing ran
    assert (here / "results" / "report.txt").read_bytes() == report_before

    rerun = nf.run("nextflow-ledger", "run", "main.nf", *TITLE, "-resume", "--ledger-policy", "rerun", cwd=here)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Submitted process > COUNT (alpha)" in rerun.stdout
    assert "Cached process > COUNT (beta)" in rerun.stdout and "Cached process > SPLIT (alpha)" in rerun.stdout
    assert "alpha\t9" in count.read_text()  # recomputed in place
    kept = list((here / ".lineage" / "nextflow" / "quarantine").glob("*/work/*/*/alpha.count"))
    assert len(kept) == 1 and "alpha\t8" in kept[0].read_text()  # the changed file is kept aside
    verified = nf.run("verify-lineage", "results/report.txt", str(count), cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # A published copy edited the same way: strict names it; rerun runs its task and publishes afresh.
    published = here / "results" / "counts" / "beta.count"
    shutil.copy2(published, reference)
    published.write_text(published.read_text().replace("15", "51"))
    shutil.copystat(reference, published)
    strict = nf.run("nextflow-ledger", "run", "main.nf", *TITLE, "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1 and str(published) in strict.stderr and str(count) not in strict.stderr
    rerun = nf.run("nextflow-ledger", "run", "main.nf", *TITLE, "-resume", "--ledger-policy", "rerun", cwd=here)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Submitted process > COUNT (beta)" in rerun.stdout and "Cached process > COUNT (alpha)" in rerun.stdout
    assert published.read_text() == "beta\t15\n"
    verified = nf.run("verify-lineage", "results/report.txt", str(published), cwd=here)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_failed_and_retried_tasks_are_recorded_with_their_exit_status(mixed_run):
    here, named = mixed_run
    [broken] = named["BROKEN"]
    assert broken["status"] == "failed" and broken["extra"]["exit_status"] == 7
    assert "broken on purpose" in broken["extra"]["stderr_tail"]
    assert broken["extra"]["error_action"] == "IGNORE" and nf.files_written(broken) == {}
    tries = sorted(named["FLAKY"], key=lambda r: r["attempt"])
    assert [(t["attempt"], t["status"], t["extra"]["exit_status"]) for t in tries] == [
        (1, "failed", 3), (2, "succeeded", 0)]
    assert tries[0]["extra"]["error_action"] == "RETRY"
    assert tries[0]["extra"]["workdir"] != tries[1]["extra"]["workdir"]
    [(path, entry)] = nf.files_written(tries[1]).items()
    assert path.endswith("flaky.txt") and entry["blake3"] == blake3(b"second try works\n").hexdigest()
    assert os.path.isfile(path)
    [published] = named["FLAKY:publish"]  # from the try that worked
    target = str(here / "results" / "flaky.txt")
    assert Path(target).is_symlink() and published["inputs"] == {path: entry}
    link = published["outputs"][target]  # the core notes what a symbolic link stands for
    assert (link["blake3"], link["size"], link.get("alias_of")) == (entry["blake3"], entry["size"], path)
    assert published["extra"]["published"] == {target: "SYMLINK"}
    verified = nf.run("verify-lineage", "results/flaky.txt", cwd=here)
    assert verified.returncode == 0 and "FLAKY:publish" in verified.stdout, verified.stdout + verified.stderr


#: A container and a conda environment, both left to Nextflow's own wrapper (.command.run).
ENVIRONMENTS_PIPELINE = """
process BOXED {
  container 'quay.io/biocontainers/samtools:1.17--h00cdaf9_0'
  errorStrategy 'ignore'
  script: 'echo boxed'
}
process ENV {
  conda "${projectDir}/envs/tools"
  errorStrategy 'ignore'
  script: 'echo env'
}
workflow {
  BOXED()
  ENV()
}
"""
ENVIRONMENTS_CONFIG = """
docker.enabled = true
conda.enabled = true
trace.enabled = true
trace.file = 'trace.tsv'
trace.fields = 'task_id,hash,name,status,exit,container'
"""


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """One run of the failing pipeline's tasks and the containerised and conda ones, side by
    side (the container and conda settings touch only the tasks that name an image or an
    environment): (its launch directory, its records by task name). Its tests only read it."""
    nf.require_nextflow()
    here = tmp_path_factory.mktemp("mixed")
    (here / "main.nf").write_text(nf.FAILING_PIPELINE.replace("workflow {\n", "workflow {\n  BOXED()\n  ENV()\n")
                                  + ENVIRONMENTS_PIPELINE.split("workflow {")[0])
    (here / "nextflow.config").write_text(ENVIRONMENTS_CONFIG)
    (here / "envs" / "tools").mkdir(parents=True)  # a prebuilt environment's path: Nextflow builds nothing
    result = nf.run("nextflow-ledger", "run", "main.nf", cwd=here)
    assert result.returncode == 0, result.stdout + result.stderr  # 'ignore' lets the run finish
    return here, _by_name(nf.records(here))


def test_container_and_conda_env_as_nextflow_wrote_them(mixed_run):
    """The image and the environment come from the wrapper script the real Nextflow writes; the
    image must be what Nextflow's own trace file says. No docker daemon or conda is needed: a try
    that cannot start its container or environment fails (ignored), its wrapper is the same.
    (A task really running in a container is not tested here.)"""
    here, named = mixed_run
    env_dir = here / "envs" / "tools"
    rows = (here / "trace.tsv").read_text().splitlines()
    trace = {row["name"]: row for row in (dict(zip(rows[0].split("\t"), line.split("\t"), strict=True)) for line in rows[1:])}
    [boxed], [conda] = named["BOXED"], named["ENV"]
    assert trace["BOXED"]["container"] == "quay.io/biocontainers/samtools:1.17--h00cdaf9_0"
    assert boxed["extra"]["container"] == boxed["environment"]["container"] == trace["BOXED"]["container"]
    assert boxed["extra"]["conda_env"] is None
    assert conda["extra"]["conda_env"] == conda["environment"]["conda_env"] == str(env_dir)
    assert conda["extra"]["container"] is None and trace["ENV"]["container"] == "-"


INSTALL = nf.ROOT / "plugins" / "nextflow" / "tools" / "install-nextflow.sh"


def test_install_script_reuses_the_cached_build():
    launcher = nf.require_nextflow()
    result = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == str(launcher)
    assert "fetching" not in result.stderr  # nothing downloaded or rebuilt


def test_install_script_without_maven_says_so(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "sed", "head", "dirname", "mktemp", "date", "cat"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bare / tool)
    env = {"PATH": str(bare), "HOME": str(tmp_path), "LINEAGE_LEDGER_NEXTFLOW_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([str(bare / "bash"), str(INSTALL)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "no Maven" in result.stderr or "no Java 17..24" in result.stderr, result.stderr
    assert not (tmp_path / "cache" / "nextflow-25.04.4").exists()
