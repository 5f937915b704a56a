"""A Snakemake job's code digest is its rule's code (issue 17), through the real ``snakemake``.

Threads, wildcards, resources and the attempt fill the rule's command in; they are
parameters. The same rule keeps its code digest across thread counts, wildcards, retries
and executors; and the pre-run check reports a code change that ``--rerun-triggers mtime``
tells Snakemake to overlook.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from blake3 import blake3

from lineage_ledger import open_ledger
from tests.support.snakemake import require_snakemake, run

pytestmark = pytest.mark.slow

MAKE_SHELL = "echo {wildcards.s} {threads} {resources.mem_mb} > {output}"
WORKFLOW = f"""
rule all:
    input: expand("out/{{s}}.txt", s=["a", "b"]), "flaky.txt", "r.txt"

rule make:
    output: "out/{{s}}.txt"
    threads: 2
    resources: mem_mb=lambda wildcards, attempt: 100 * attempt
    shell: "{MAKE_SHELL}"

rule flaky:
    output: "flaky.txt"
    retries: 1
    resources: mem_mb=lambda wildcards, attempt: 100 * attempt
    shell: "if [ -e tried ]; then echo {{resources.mem_mb}} > {{output}}; else touch tried; exit 1; fi"

rule runblock:
    output: "r.txt"
    threads: 2
    run:
        with open(output[0], "w") as handle:
            handle.write(str(threads))
"""

# A cluster "scheduler" that runs the job script in the background: Snakemake's
# cluster-generic executor then runs each job in a Snakemake process of its own.
SUBMIT = "#!/bin/sh\nsh \"$1\" >/dev/null 2>&1 &\necho $!\n"


def records(workflow: Path, run_id: str) -> list:
    with open_ledger(str(workflow / ".lineage" / "ledger.db")) as ledger:
        return [entry.record for entry in ledger.run(run_id)]


def clean_outputs(workflow: Path) -> None:
    for name in ("out", "flaky.txt", "r.txt", "tried"):
        path = workflow / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def test_a_rule_keeps_its_code_digest_across_threads_wildcards_retries_and_executors(tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text(WORKFLOW)
    runs = {"two-cores": ["--cores", "2"], "one-core": ["--cores", "1"]}
    if importlib.util.find_spec("snakemake_executor_plugin_cluster_generic") is not None:
        (tmp_path / "submit.sh").write_text(SUBMIT)
        (tmp_path / "submit.sh").chmod(0o755)
        runs["cluster"] = ["--executor", "cluster-generic", "--cluster-generic-submit-cmd", "./submit.sh",
                           "--jobs", "2", "--latency-wait", "10", "--seconds-between-status-checks", "1"]
    for run_id, options in runs.items():
        clean_outputs(tmp_path)
        result = run("snakemake", *options, "--logger", "ledger", "--logger-ledger-run-id", run_id,
                     cwd=tmp_path)
        assert result.returncode == 0, (run_id, result.stderr[-3000:])

    by_rule: dict[str, list] = {}
    for run_id in runs:
        for rec in records(tmp_path, run_id):
            by_rule.setdefault(rec.task_name, []).append((run_id, rec))
    for rule in ("make", "flaky", "runblock"):
        digests = {rec.code_digest for _, rec in by_rule[rule]}
        assert len(digests) == 1, (rule, [(r, rec.code_digest, rec.parameters) for r, rec in by_rule[rule]])
        assert all(rec.extra["code_of"] == "rule" for _, rec in by_rule[rule])
    make = by_rule["make"]
    assert len(make) == 2 * len(runs)
    # The command template as written, not the command as run.
    assert make[0][1].code_digest == blake3(MAKE_SHELL.encode()).hexdigest()
    # What filled the template in is kept, as parameters.
    threads = {(r, rec.parameters["_wildcards"]["s"]): rec.parameters["_threads"] for r, rec in make}
    assert threads[("two-cores", "a")] == 2 and threads[("one-core", "a")] == 1
    assert {rec.extra["shellcmd"] for r, rec in make if r == "two-cores"} == {
        "echo a 2 100 > out/a.txt", "echo b 2 100 > out/b.txt"}
    # A retry asks for more memory: another parameter, the same code.
    for run_id in ("two-cores", "one-core"):
        tries = sorted((rec for r, rec in by_rule["flaky"] if r == run_id), key=lambda rec: rec.attempt)
        assert [(t.attempt, t.status, t.parameters["_resources"]["mem_mb"]) for t in tries] == [
            (1, "failed", 100), (2, "succeeded", 200)], run_id
    if "cluster" in runs:
        # On a cluster, the job's own Snakemake process retries it (its output says attempt 2);
        # the main process, where the plugin records, sees one job that succeeded.
        assert [t.status for r, t in by_rule["flaky"] if r == "cluster"] == ["succeeded"]


POLICY = """
rule all:
    input: "b.txt"

rule a:
    input: "src.txt"
    output: "a.txt"
    shell: "tr a-z A-Z < {input} > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "cat {input} {input} > {output}"
"""


def test_a_code_change_is_reported_whatever_rerun_triggers_say(tmp_path):
    """``--rerun-triggers mtime`` makes Snakemake keep outputs of a rule whose code changed;
    the pre-run check compares the rule's code with the outputs' producer records anyway."""
    require_snakemake()
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(POLICY)
    (tmp_path / "src.txt").write_text("some text\n")
    first = run("snakemake", "--cores", "1", "--logger", "ledger", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    snakefile.write_text(POLICY.replace("tr a-z A-Z", "tr a-z A-Z | rev"))
    a_txt, b_txt = tmp_path / "a.txt", tmp_path / "b.txt"
    before = (a_txt.stat().st_mtime_ns, b_txt.stat().st_mtime_ns)

    mtime_only = ["--cores", "1", "--rerun-triggers", "mtime", "--logger", "ledger"]
    plain = run("snakemake", "--cores", "1", "--rerun-triggers", "mtime", cwd=tmp_path)
    assert plain.returncode == 0 and "Nothing to be done" in plain.stderr, plain.stderr[-3000:]

    strict = run("snakemake", *mtime_only, "--logger-ledger-policy", "strict", cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert "refusing to run" in strict.stderr
    assert f"{a_txt}: made by other code than rule a has now" in strict.stderr
    assert str(b_txt) not in strict.stderr  # rule b's code is unchanged
    assert (a_txt.stat().st_mtime_ns, b_txt.stat().st_mtime_ns) == before  # nothing ran

    warn = run("snakemake", *mtime_only, cwd=tmp_path)  # warn is the default policy
    assert warn.returncode == 0, warn.stderr[-3000:]
    assert f"{a_txt}: made by other code than rule a has now" in warn.stderr
    assert "Nothing to be done" in warn.stderr

    rerun = run("snakemake", *mtime_only, "--logger-ledger-policy", "rerun", "--logger-ledger-run-id", "again",
                cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert a_txt.read_text() == "txet emos\n"  # rev read the input; tr got nothing to upper-case
    assert sorted(r.task_name for r in records(tmp_path, "again")) == ["a", "all", "b"]
    again = run("snakemake", *mtime_only, "--logger-ledger-policy", "strict", cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stderr, again.stderr[-3000:]
