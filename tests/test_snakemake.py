"""The Snakemake plugin through the real ``snakemake`` and ``snakemake-ledger`` commands.

The example workflow (examples/snakemake: 12 jobs, wildcards, a temp() file, a run: block,
a script with params, a log file) is recorded once per module and then tampered with, in
the order a user would meet these situations.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from blake3 import blake3

from lineage_ledger import hash_file, open_ledger
from tests.conftest import run_cli
from tests.support.first_run import FirstRun
from tests.support.snakemake import BIN, clean_env, copy_example, require_snakemake, run
from tests.test_export import export_everything
from tests.test_export_engines import run_ids

pytestmark = pytest.mark.slow

SAMPLES = ("alpha", "beta", "gamma")
RULES = {"normalize": 3, "count": 3, "stats": 3, "merge": 1, "report": 1, "all": 1}


def records(workflow: Path, run_id: str):
    ledger = open_ledger(str(workflow / ".lineage" / "ledger.db"))
    try:
        return [r.record for r in ledger.run(run_id)]
    finally:
        ledger.close()


def tamper_keep_mtime(path: Path, extra: str) -> None:
    """Edit a file and put its old mtime back: Snakemake's own checks see nothing."""
    stat = path.stat()
    with open(path, "a") as handle:
        handle.write(extra)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def recorded_example(directory: Path) -> Path:
    """A fresh copy of the example, run once with the ledger (run id ``first``)."""
    require_snakemake()
    copy_example(directory)
    result = run("snakemake", "--cores", "2", "--logger", "ledger", "--logger-ledger-run-id", "first",
                 cwd=directory)
    assert result.returncode == 0, result.stderr[-3000:]
    return directory


def _recorded_in(directory: Path) -> None:
    directory.rmdir()  # made by FirstRun; copy_example makes it
    recorded_example(directory)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    """The example recorded once per module (tests/support/first_run.py), kept as it was."""
    require_snakemake()
    return FirstRun(tmp_path_factory.mktemp("snakemake"), _recorded_in, project="example")


@pytest.fixture
def recorded(first_run, monkeypatch):
    """The recorded example, for the tests that only read it."""
    return first_run.put_back(monkeypatch)


@pytest.fixture
def workflow(first_run, monkeypatch):
    """The recorded example, put back for this test alone: it may edit files and run again."""
    return first_run.put_back(monkeypatch)


class TestExampleRun:
    """Each test stands alone, in any order: the two that only read share one recorded run
    (``recorded``); those that edit files or run again record their own (``workflow``)."""

    def test_every_job_is_recorded_with_correct_digests(self, recorded):
        workflow = recorded
        recs = records(workflow, "first")
        by_rule: dict[str, list] = {}
        for rec in recs:
            by_rule.setdefault(rec.task_name, []).append(rec)
        assert {name: len(v) for name, v in by_rule.items()} == RULES
        assert all(rec.status == "succeeded" and rec.engine == "snakemake" for rec in recs)
        for rec in recs:
            for path, entry in rec.outputs.items():
                if os.path.exists(path):  # temp files are gone; checked through their consumers
                    assert hash_file(path).blake3 == entry["blake3"], path
        for sample in SAMPLES:
            source = workflow / "data" / f"{sample}.txt"
            temp = str(workflow / "work" / f"{sample}.norm.txt")
            upper = source.read_bytes().upper()
            normalize = next(r for r in by_rule["normalize"] if r.parameters["_wildcards"] == {"sample": sample})
            count = next(r for r in by_rule["count"] if r.parameters["_wildcards"] == {"sample": sample})
            # The temp() file was deleted before the count job's record was written: its
            # digest comes from the normalize record, and both equal the real bytes.
            assert not os.path.exists(temp)
            assert normalize.outputs[temp]["blake3"] == blake3(upper).hexdigest()
            assert count.inputs[temp] == normalize.outputs[temp]
            assert "unhashed_inputs" not in count.extra
            assert normalize.inputs[str(source)]["blake3"] == hash_file(source).blake3
            assert temp in normalize.extra["temp_files"]
            # The script rule: params, and the digest of the script's source as its code.
            assert {k: v for k, v in count.parameters.items() if not k.startswith("_")} == {
                "min_length": 3, "label": sample.upper()}
            assert count.extra["code_kind"] == "script"
            assert count.code_digest == blake3((workflow / "scripts" / "count.py").read_bytes()).hexdigest()
            assert normalize.extra["shellcmd"].startswith("tr ")
            # The rule's command as written: the same for every sample (issue 17).
            assert normalize.code_digest == blake3(b"tr '[:lower:]' '[:upper:]' < {input} > {output}").hexdigest()
        stats = by_rule["stats"][0]
        assert stats.extra["code_kind"] == "run" and len(stats.code_digest) == 64
        merge = by_rule["merge"][0]
        assert str(workflow / "logs" / "merge.log") in merge.outputs  # log files are recorded
        assert merge.parameters["_threads"] == 1 and "tmpdir" in merge.parameters["_resources"]

    def test_verify_lineage_prints_the_tree_back_to_the_sources(self, recorded):
        result = run("verify-lineage", "--ledger", ".lineage/ledger.db", "results/report.txt", cwd=recorded)
        assert result.returncode == 0, result.stdout + result.stderr
        for sample in SAMPLES:
            assert f"data/{sample}.txt" in result.stdout
            assert f"results/{sample}.counts.tsv" in result.stdout
        assert "(source)" in result.stdout and "verified" in result.stdout

    def test_the_example_runs_exports_pass_their_validators(self, recorded, tmp_path):
        """Every export format of the example's run, through the CLI, checked by its validator
        (tests/test_export_engines.py does the same for the Parsl and Airflow examples)."""

        def cli(*args, **kw):
            return run_cli(*args, cwd=recorded, **kw)

        runs = run_ids(cli)
        assert list(runs) == ["first"]
        export_everything(cli, tmp_path, "--run", "first", tasks=runs["first"], provn=False)

    def test_an_edited_intermediate_is_caught_and_rerun(self, workflow):
        counts = workflow / "results" / "beta.counts.tsv"
        tamper_keep_mtime(counts, "EDITED\t1000\n")
        edited = counts.read_bytes()

        plain = run("snakemake", "--cores", "1", cwd=workflow)
        assert plain.returncode == 0 and "Nothing to be done" in plain.stdout + plain.stderr

        strict = run("snakemake-ledger", "--cores", "1", "--ledger-policy", "strict", cwd=workflow)
        assert strict.returncode == 1, strict.stderr[-3000:]
        assert str(counts) in strict.stderr and "refusing to run" in strict.stderr
        assert counts.read_bytes() == edited  # nothing ran

        rerun = run("snakemake-ledger", "--cores", "2", "--ledger-policy", "rerun",
                    "--logger-ledger-run-id", "rerun", cwd=workflow)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert b"EDITED" not in counts.read_bytes()
        rerun_rules = sorted(r.task_name for r in records(workflow, "rerun"))
        # The producer of the edited file, its temp input's producer, and everything downstream.
        assert rerun_rules == ["all", "count", "merge", "normalize", "report", "stats"]
        verify = run("verify-lineage", "--ledger", ".lineage/ledger.db", cwd=workflow)
        assert verify.returncode == 0, verify.stdout + verify.stderr

    def test_an_edited_source_is_refused_by_strict(self, workflow):
        source = workflow / "data" / "gamma.txt"
        source.write_text(source.read_text() + "a new line\n")
        # From the parent directory: --ledger is relative to where the command starts, the
        # workflow's files to --directory.
        strict = run("snakemake-ledger", "--cores", "1", "--directory", workflow.name,
                     "--snakefile", f"{workflow.name}/Snakefile", "--ledger-policy", "strict",
                     "--ledger", f"{workflow.name}/.lineage/ledger.db", cwd=workflow.parent)
        assert strict.returncode == 1, strict.stderr[-3000:]
        assert f"{source}: changed since the last recorded run" in strict.stderr
        warn = run("snakemake-ledger", "--cores", "2", "--ledger-policy", "warn",
                   "--logger-ledger-run-id", "after-edit", cwd=workflow)
        assert warn.returncode == 0, warn.stderr[-3000:]
        assert str(source) in warn.stderr  # warned, then ran
        consumer = next(r for r in records(workflow, "after-edit") if r.task_name == "normalize")
        assert consumer.inputs[str(source)]["blake3"] == hash_file(source).blake3

    def test_a_dry_run_records_nothing(self, tmp_path):
        require_snakemake()
        workflow = copy_example(tmp_path / "example")  # never run: every job would run
        dry = run("snakemake", "-n", "--cores", "1", "--logger", "ledger",
                  "--logger-ledger-run-id", "dry", cwd=workflow)
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert "normalize" in dry.stdout + dry.stderr  # it would have run jobs
        assert not (workflow / ".lineage" / "ledger.db").exists()  # not even a ledger was made
        assert not (workflow / "results").exists()


def test_snakemake_help_lists_the_ledger_logger(tmp_path):
    require_snakemake()
    result = run("snakemake", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "--logger {ledger}" in result.stdout or "ledger" in result.stdout.split("--logger ")[1][:60]
    assert "--logger-ledger-url" in result.stdout and "SNAKEMAKE_LOGGER_LEDGER_URL" in result.stdout
    assert "--logger-ledger-policy" in result.stdout and "SNAKEMAKE_LOGGER_LEDGER_POLICY" in result.stdout


FAILING = """
rule all:
    input: "done.txt"

rule ok:
    output: "ok.txt"
    shell: "echo fine > {output}"

rule broken:
    input: "ok.txt"
    output: "done.txt"
    log: "broken.log"
    shell: "echo about to fail > {log}; exit 3"
"""


def test_a_failing_job_is_recorded_as_failed_and_a_profile_turns_the_plugin_on(tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text(FAILING)
    # A workflow profile next to the Snakefile is read by default: no --logger flag needed.
    profile = tmp_path / "profiles" / "default"
    profile.mkdir(parents=True)
    (profile / "config.yaml").write_text("logger: [ledger]\nlogger-ledger-run-id: failing\n")
    result = run("snakemake", "--cores", "2", cwd=tmp_path)
    assert result.returncode != 0
    by_rule = {r.task_name: r for r in records(tmp_path, "failing")}
    assert set(by_rule) == {"ok", "broken"}
    assert by_rule["ok"].status == "succeeded"
    broken = by_rule["broken"]
    assert broken.status == "failed"
    assert str(tmp_path / "ok.txt") in broken.inputs
    assert broken.outputs[str(tmp_path / "broken.log")]["blake3"] == blake3(b"about to fail\n").hexdigest()
    assert broken.extra["declared_outputs"] == [str(tmp_path / "done.txt")]
    assert list(broken.outputs) == [str(tmp_path / "broken.log")]  # a failed try vouches for its log only


SLOW = """
N = config.get("jobs", 40)

rule all:
    input: expand("out/{i}.txt", i=range(N))

rule make:
    output: "out/{i}.txt"
    shell: "sleep 0.3; echo {wildcards.i} > {output}"
"""


def start_slow_run(tmp_path: Path, run_id: str, jobs: int = 40) -> subprocess.Popen[str]:
    """The SLOW workflow (``jobs`` jobs of 0.3 s) under the ledger logger, in its own process
    group, stderr piped."""
    require_snakemake()
    (tmp_path / "Snakefile").write_text(SLOW)
    return subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "2", "--logger", "ledger", "--logger-ledger-run-id", run_id,
         "--config", f"jobs={jobs}"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_ctrl_c_as_at_a_terminal,
    )


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child: SIGINT back to its default. A test run started in the background
    (``nohup make test &``) ignores it, Snakemake would inherit that, and Ctrl-C would not
    reach it as it does at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_finished_jobs(
    process: subprocess.Popen[str], tmp_path: Path, count: int
) -> tuple[list[str], dict[str, str]]:
    """Read Snakemake's log until it reports ``count`` jobs finished: their output paths, and
    the output of every job id seen so far (for log lines read after this)."""
    finished: list[str] = []
    output_of: dict[str, str] = {}
    deadline = time.monotonic() + 120
    assert process.stderr is not None
    for line in process.stderr:
        if finished_job(line, tmp_path, output_of, finished) and len(finished) >= count:
            break
        assert time.monotonic() < deadline, f"snakemake did not finish {count} jobs in time"
    return finished, output_of


def finished_job(line: str, tmp_path: Path, output_of: dict[str, str], finished: list[str]) -> bool:
    """Follow one line of Snakemake's log: a job's output and id (kept in ``output_of``, the
    output under the key ``""`` until its id comes), or a finished job's output appended to
    ``finished`` (True). Snakemake's stream handler swallows a Ctrl-C that lands while it
    formats a job's info (logging.py: ``except (KeyboardInterrupt, SystemExit): pass``) and
    prints none of it, while the job runs on: such a job is named ``"jobid N"`` instead."""
    if match := re.match(r"\s+output: (\S+)", line):
        output_of[""] = match.group(1)
    elif match := re.match(r"\s+jobid: (\d+)", line):
        output_of[match.group(1)] = output_of.get("", "")
    elif match := re.match(r"Finished jobid: (\d+) ", line):
        jobid = match.group(1)
        finished.append(str(tmp_path / output_of[jobid]) if jobid in output_of else f"jobid {jobid}")
        return True
    return False


def test_kill_9_mid_run_loses_no_finished_job(tmp_path):
    """Every job Snakemake reported finished before ``kill -9`` is in the ledger afterwards."""
    process = start_slow_run(tmp_path, "killed")
    finished, _ = wait_for_finished_jobs(process, tmp_path, 8)  # outputs of the jobs reported finished
    os.killpg(process.pid, signal.SIGKILL)  # snakemake and its running jobs, no clean-up
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert len(finished) >= 8

    # The next run (after the lock a killed Snakemake leaves is removed) recovers what the
    # killed one had not written yet: from the core's spool, or from the plugin's journal.
    assert run("snakemake", "--unlock", cwd=tmp_path).returncode == 0
    resumed = run("snakemake", "--cores", "2", "--logger", "ledger", "--logger-ledger-run-id", "resumed",
                  "--rerun-incomplete", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Jobs whose events were still in Snakemake's log queue at the kill come back from
    # Snakemake's own metadata, under the killed run's id.
    recorded = {next(iter(r.outputs)): r for r in records(tmp_path, "killed")}
    assert set(finished) <= set(recorded), sorted(set(finished) - set(recorded))
    sources = [r.extra.get("recovered_from", "journal" if r.extra.get("recovered_after_interruption")
                           else "live") for r in recorded.values()]
    print("records of the killed run by origin:", {s: sources.count(s) for s in set(sources)})
    for path in finished:
        assert recorded[path].status == "succeeded"
        assert recorded[path].outputs[path]["blake3"] == hash_file(path).blake3
    assert not any((tmp_path / ".lineage" / "snakemake-pending").glob("*.jsonl"))
    # Between both runs every job of the workflow is recorded exactly once as succeeded.
    made = [r for rid in ("killed", "resumed") for r in records(tmp_path, rid) if r.task_name == "make"]
    assert sorted(next(iter(r.outputs)) for r in made) == sorted(
        str(tmp_path / "out" / f"{i}.txt") for i in range(40))


JOURNAL_THEN_KILL = """
import os, signal, sys
from lineage_ledger import TaskRun, utcnow
from snakemake_logger_plugin_ledger._journal import PendingJournal

journal = PendingJournal(".lineage/snakemake-pending", "crashed", 0.0)
now = utcnow()
journal.add("7:1", TaskRun(task_id="7", task_name="make", status="succeeded", started=now, ended=now,
                           inputs=[], outputs=[os.path.abspath("kept.txt")], run_id="crashed",
                           extra={"snakemake_jobid": 7}))
journal.add("8:1", TaskRun(task_id="8", task_name="make", status="succeeded", started=now, ended=now,
                           outputs=[os.path.abspath("other.txt")], run_id="crashed"))
journal.done("8:1")  # recorded before the kill: must not be recorded twice
os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 would: the lock dies with the process
"""


def test_a_journal_left_by_a_killed_process_is_recorded_by_the_next_run(tmp_path):
    """The window between Snakemake's job_finished and the spool, made deterministic."""
    require_snakemake()
    (tmp_path / "kept.txt").write_text("made before the crash\n")
    killed = subprocess.run([sys.executable, "-c", JOURNAL_THEN_KILL], cwd=tmp_path, env=clean_env())
    assert killed.returncode == -signal.SIGKILL
    assert len(list((tmp_path / ".lineage" / "snakemake-pending").glob("*.jsonl"))) == 1
    (tmp_path / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n')
    result = run("snakemake", "--cores", "1", "--logger", "ledger", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "left by an interrupted run" in result.stderr
    (rec,) = records(tmp_path, "crashed")
    assert rec.task_id == "7" and rec.extra["recovered_after_interruption"] is True
    assert rec.outputs[str(tmp_path / "kept.txt")]["blake3"] == blake3(b"made before the crash\n").hexdigest()
    assert not list((tmp_path / ".lineage" / "snakemake-pending").glob("*.jsonl"))


def test_a_retried_job_gets_one_record_per_attempt(tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text(
        'rule a:\n    output: "a.txt"\n'
        '    shell: "if [ -e tried ]; then echo ok > {output}; else touch tried; exit 1; fi"\n')
    result = run("snakemake", "--cores", "1", "--retries", "1", "--logger", "ledger",
                 "--logger-ledger-run-id", "retried", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    tries = sorted(records(tmp_path, "retried"), key=lambda r: r.attempt)
    assert [(r.attempt, r.status) for r in tries] == [(1, "failed"), (2, "succeeded")]
    assert tries[0].outputs == {}  # the first try's output path holds the second try's file
    assert tries[1].outputs[str(tmp_path / "a.txt")]["blake3"] == blake3(b"ok\n").hexdigest()


QUIET = """
rule all:
    input: "b.txt"

rule a:
    output: temp("t.txt")
    shell: "echo t > {output}"

rule b:
    input: "t.txt"
    output: "b.txt"
    shell: "cat {input} > {output}"
"""


def test_quiet_progress_runs_are_recorded_from_snakemakes_metadata(tmp_path):
    """``-q`` stops Snakemake logging finished jobs; the records come at the end instead."""
    require_snakemake()
    (tmp_path / "Snakefile").write_text(QUIET)
    result = run("snakemake", "--cores", "1", "-q", "--logger", "ledger", "--logger-ledger-run-id", "quiet",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--quiet progress" in result.stderr  # the user is told what that costs
    by_rule = {r.task_name: r for r in records(tmp_path, "quiet")}
    assert set(by_rule) == {"a", "b"}  # `all` has no output whose metadata could vouch for it
    assert all(r.extra["finished_from"] == "snakemake metadata" for r in by_rule.values())
    assert by_rule["b"].outputs[str(tmp_path / "b.txt")]["blake3"] == blake3(b"t\n").hexdigest()
    # The temp file was gone before the end of the run: named, not given a made-up digest.
    assert by_rule["a"].extra["missing_outputs"] == [str(tmp_path / "t.txt")]
    assert by_rule["b"].extra["unhashed_inputs"] == [str(tmp_path / "t.txt")]


POLICY = """
rule all:
    input: "c.txt"

rule a:
    input: "src.txt"
    output: temp("t.txt")
    shell: "tr a-z A-Z < {input} > {output}"

rule b:
    input: "t.txt"
    output: "b.txt"
    shell: "cat {input} {input} > {output}"

rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "wc -c < {input} > {output}"
"""


def test_the_policy_setting_acts_inside_a_plain_snakemake_run(tmp_path):
    """``snakemake --logger ledger --logger-ledger-policy ...``: no wrapper, the plugin alone."""
    require_snakemake()
    (tmp_path / "Snakefile").write_text(POLICY)
    (tmp_path / "src.txt").write_text("some text\n")
    first = run("snakemake", "--cores", "1", "--logger", "ledger", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    b, c = tmp_path / "b.txt", tmp_path / "c.txt"
    tamper_keep_mtime(b, "EDITED\n")
    edited, c_before = b.read_bytes(), c.stat().st_mtime_ns

    strict = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "strict",
                 cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert f"{b}: changed since the last recorded run" in strict.stderr
    assert "refusing to run" in strict.stderr and "Traceback" not in strict.stderr
    assert b.read_bytes() == edited and c.stat().st_mtime_ns == c_before  # nothing ran

    warn = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "warn",
               cwd=tmp_path)
    assert warn.returncode == 0, warn.stderr[-3000:]
    assert f"{b}: changed since the last recorded run" in warn.stderr
    assert "Nothing to be done" in warn.stderr  # warned, then Snakemake went its own way

    rerun = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "rerun",
                "--logger-ledger-run-id", "policy-rerun", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert b.read_bytes() == b"SOME TEXT\n" * 2
    # The producer, its temp() input's producer, and what is downstream ran again.
    assert sorted(r.task_name for r in records(tmp_path, "policy-rerun")) == ["a", "all", "b", "c"]
    verify = run("verify-lineage", "--ledger", ".lineage/ledger.db", "c.txt", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "strict",
                cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stderr, again.stderr[-3000:]


SCRATCH = """
rule all:
    input: expand("keep{i}.txt", i=range(6))

rule make:
    output: keep="keep{i}.txt", scratch=temp("scratch{i}.txt")
    shell: "echo scratch {wildcards.i} > {output.scratch}; echo keep > {output.keep}"
"""


def test_temp_outputs_are_hashed_before_snakemake_deletes_them(tmp_path):
    """A temp() output nothing reads is deleted right after its job's ``job_finished`` event,
    long before a queued record would hash it; it is hashed inside that event instead."""
    require_snakemake()
    (tmp_path / "Snakefile").write_text(SCRATCH)
    result = run("snakemake", "--cores", "2", "--logger", "ledger", "--logger-ledger-run-id", "scratch",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    made = [r for r in records(tmp_path, "scratch") if r.task_name == "make"]
    assert len(made) == 6
    for rec in made:
        i = rec.parameters["_wildcards"]["i"]
        scratch = tmp_path / f"scratch{i}.txt"
        assert not scratch.exists()  # Snakemake deleted it
        assert "missing_outputs" not in rec.extra
        assert rec.outputs[str(scratch)]["blake3"] == blake3(f"scratch {i}\n".encode()).hexdigest()


def test_ctrl_c_still_records_every_job_snakemake_saw_finish(tmp_path):
    """SIGINT reaches the whole process group, the recording process included: it keeps
    recording until Snakemake, stopping, closes its input."""
    # Enough jobs (a minute's worth) that the run cannot finish while Ctrl-C is pressed.
    process = start_slow_run(tmp_path, "interrupted", jobs=400)
    finished, output_of = wait_for_finished_jobs(process, tmp_path, 6)
    assert process.stderr is not None
    rest_lines: list[str] = []  # read meanwhile, so that a full pipe never blocks Snakemake
    reader = threading.Thread(target=lambda: rest_lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            # Snakemake's stream handler swallows a KeyboardInterrupt raised while it writes
            # (logging.py: ``except (KeyboardInterrupt, SystemExit): pass``): press again.
            pass
    process.wait(timeout=10)
    reader.join(10)
    rest = "".join(rest_lines)
    assert process.returncode != 0, rest[-3000:]
    for line in rest.splitlines():  # jobs started after the first six finished are named here too
        finished_job(line, tmp_path, output_of, finished)
    runs = records(tmp_path, "interrupted")
    recorded = {next(iter(r.outputs)): r for r in runs if r.outputs}
    recorded.update({f"jobid {r.task_id}": r for r in runs})  # a record's task id is Snakemake's job id
    assert set(finished) <= set(recorded), sorted(set(finished) - set(recorded))
    for key in finished:
        ((path, entry),) = recorded[key].outputs.items()
        assert key in (path, f"jobid {recorded[key].task_id}")
        assert entry["blake3"] == hash_file(path).blake3
