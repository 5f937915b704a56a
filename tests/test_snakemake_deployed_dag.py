"""The Snakemake plugin on workflows shaped the way research groups write them, through the real
``snakemake``: a checkpoint that splits reads into a ``directory()`` (a data-dependent DAG),
``--touch``, and ``pipe()`` outputs in a group job. Each test edits a file by hand between runs
the way a user would (an edit whose mtime is put back, or a fresh ``touch``) and asks what the
next ``strict`` run and ``verify-lineage`` say.

The tests that start from the same recorded run (the checkpoint workflow's first run, the
piped workflow's, the unchecked run that read an edited chunk) share it: it is made once for
the module and put back, with its ledger, metadata and mtimes, before each of them
(``tests/support/first_run.py``), so each still edits and runs again its own copy.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.support.first_run import FirstRun
from tests.support.snakemake import require_snakemake, run

pytestmark = pytest.mark.slow

CHECKPOINT = textwrap.dedent('''\
    rule target:
        input: "merged.txt"

    checkpoint split:
        input: "data/reads.txt"
        output: directory("chunks")
        shell: "mkdir -p chunks && n=0; while read l; do n=$((n+1)); echo $l > chunks/c$n.txt; done < {input}"

    rule upper:
        input: "chunks/{c}.txt"
        output: "up/{c}.txt"
        shell: "tr a-z A-Z < {input} > {output}"

    def gather(wildcards):
        chunks = checkpoints.split.get().output[0]
        return expand("up/{c}.txt", c=sorted(glob_wildcards(chunks + "/{c}.txt").c))

    rule merge:
        input: gather
        output: "merged.txt"
        shell: "cat {input} > {output}"
    ''')


def snakemake(workflow: Path, *args: str):
    return run("snakemake", "--cores", "2", "--logger", "ledger", *args, cwd=workflow)


def records(workflow: Path, run_id: str) -> list:
    with open_ledger(str(workflow / ".lineage" / "ledger.db")) as ledger:
        return [entry.record for entry in ledger.run(run_id)]


def edit_keep_times(path: Path, text: str) -> None:
    """Append to a file and put back its mtime and its directory's: Snakemake sees nothing."""
    file_stat, dir_stat = path.stat(), path.parent.stat()
    with open(path, "a") as handle:
        handle.write(text)
    os.utime(path, ns=(file_stat.st_atime_ns, file_stat.st_mtime_ns))
    os.utime(path.parent, ns=(dir_stat.st_atime_ns, dir_stat.st_mtime_ns))


def record_checkpoint_workflow(workflow: Path) -> None:
    """The checkpoint workflow written to ``workflow`` (an empty directory) and run once (run
    id ``first``)."""
    (workflow / "data").mkdir()
    (workflow / "data" / "reads.txt").write_text("acgt\nttga\ncccc\n")
    (workflow / "Snakefile").write_text(CHECKPOINT)
    first = snakemake(workflow, "--logger-ledger-run-id", "first")
    assert first.returncode == 0, first.stderr[-3000:]
    assert {r.task_name for r in records(workflow, "first")} == {"split", "upper", "merge", "target"}


@pytest.fixture(scope="module")
def checkpoint_first_run(tmp_path_factory) -> FirstRun:
    require_snakemake()
    return FirstRun(tmp_path_factory.mktemp("checkpoint"), record_checkpoint_workflow, project="wf")


@pytest.fixture
def checkpoint_workflow(checkpoint_first_run, monkeypatch) -> Path:
    """The checkpoint workflow as its first run left it, this test's own to edit and run."""
    return checkpoint_first_run.put_back(monkeypatch)


def test_a_checkpoint_chunk_edited_by_hand_is_not_accepted_after_a_rerun_run(checkpoint_workflow):
    """A chunk the checkpoint wrote, edited by hand: no job of the DAG makes it (Snakemake
    reads the checkpoint's directory as done), so ``rerun`` forced its readers, which read the
    edit, and their records made it the ledger's latest view: the next ``strict`` run ran on
    it without a word, while ``verify-lineage`` of the result said MODIFIED."""
    workflow = checkpoint_workflow
    edit_keep_times(workflow / "chunks" / "c2.txt", "forged\n")
    rerun = snakemake(workflow, "--logger-ledger-policy", "rerun", "--logger-ledger-run-id", "rerun")
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 1, out[-3000:]  # it cannot make the chunk again in this DAG: refused
    assert "chunks/c2.txt" in out, out[-3000:]  # named
    assert "--forcerun chunks" in out, out[-3000:]  # and what makes it again
    # The readers never ran on the edit: nothing downstream was made from it.
    assert "FORGED" not in (workflow / "merged.txt").read_text()
    strict = snakemake(workflow, "--logger-ledger-policy", "strict", "--logger-ledger-run-id", "strict")
    assert strict.returncode == 1, strict.stdout[-2000:] + strict.stderr[-2000:]
    assert "chunks/c2.txt" in strict.stderr
    # What the message says works: the checkpoint runs again and everything is verified.
    forced = snakemake(workflow, "--logger-ledger-policy", "strict", "--forcerun", "chunks",
                       "--logger-ledger-run-id", "forced")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "forged" not in (workflow / "chunks" / "c2.txt").read_text()
    verified = run("verify-lineage", "merged.txt", cwd=workflow)
    assert verified.returncode == 0, verified.stdout[-3000:]


def test_a_checkpoint_chunk_edited_and_touched_is_not_accepted_after_a_warn_run(checkpoint_workflow):
    """The same chunk edited with a new mtime: Snakemake reruns its reader under ``warn``, and
    that record must not make the edit the ledger's latest view of the chunk."""
    workflow = checkpoint_workflow
    chunk = workflow / "chunks" / "c2.txt"
    chunk.write_text("forged\n")
    os.utime(chunk)  # newer than up/c2.txt: Snakemake runs upper and merge again
    warn = snakemake(workflow, "--logger-ledger-run-id", "warn")
    assert warn.returncode == 0, warn.stderr[-3000:]
    assert "chunks/c2.txt" in warn.stderr  # warned
    reader = next(r for r in records(workflow, "warn") if r.task_name == "upper")
    assert not any(p.endswith("chunks/c2.txt") for p in reader.inputs)
    assert any(p.endswith("chunks/c2.txt") for p in reader.extra["not_verified"])
    strict = snakemake(workflow, "--logger-ledger-policy", "strict", "--logger-ledger-run-id", "strict")
    assert strict.returncode == 1, strict.stdout[-2000:] + strict.stderr[-2000:]
    assert "chunks/c2.txt" in strict.stderr


def test_touch_records_no_job_and_does_not_vouch_for_an_edited_output(checkpoint_workflow):
    """``--touch`` runs no job: it only sets mtimes. Its jobs were recorded as succeeded with
    the files' current digests, so an output edited by hand and then touched (``--touch
    --forcerun``) became the rule's product, and ``strict`` ran on it from then on."""
    workflow = checkpoint_workflow
    merged = workflow / "merged.txt"
    edit_keep_times(merged, "forged\n")
    touched = snakemake(workflow, "--touch", "--forcerun", "merge", "--logger-ledger-run-id", "touch")
    assert touched.returncode == 0, touched.stderr[-3000:]
    assert records(workflow, "touch") == []
    assert "--touch" in touched.stderr  # says why nothing is recorded
    strict = snakemake(workflow, "--logger-ledger-policy", "strict", "--logger-ledger-run-id", "strict")
    assert strict.returncode == 1, strict.stdout[-2000:] + strict.stderr[-2000:]
    assert "merged.txt" in strict.stderr
    # Under strict, --touch itself refuses to mark an edited file up to date.
    again = snakemake(workflow, "--touch", "--forcerun", "merge", "--logger-ledger-policy", "strict",
                      "--logger-ledger-run-id", "touch-strict")
    assert again.returncode == 1, again.stdout[-2000:] + again.stderr[-2000:]
    assert "merged.txt" in again.stderr


PIPED = textwrap.dedent('''\
    rule all:
        input: "upper/s1.txt"

    rule decompress:
        input: "data/{s}.txt"
        output: pipe("pipes/{s}.pipe")
        group: "g"
        shell: "cat {input} > {output}"

    rule upper:
        input: "pipes/{s}.pipe", ref="data/ref.txt"
        output: "upper/{s}.txt"
        group: "g"
        shell: "tr a-z A-Z < {input[0]} > {output}; cat {input.ref} >> {output}"
    ''')


def record_piped_workflow(workflow: Path) -> None:
    """The piped workflow written to ``workflow`` and run once (run id ``piped``)."""
    (workflow / "data").mkdir()
    (workflow / "data" / "s1.txt").write_text("acgt\n")
    (workflow / "data" / "ref.txt").write_text("ref\n")
    (workflow / "Snakefile").write_text(PIPED)
    result = snakemake(workflow, "--logger-ledger-run-id", "piped")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def piped_first_run(tmp_path_factory) -> FirstRun:
    require_snakemake()
    return FirstRun(tmp_path_factory.mktemp("piped"), record_piped_workflow, project="wf")


@pytest.fixture
def piped_workflow(piped_first_run, monkeypatch) -> Path:
    """The piped workflow as its first run left it, this test's own to edit and run."""
    return piped_first_run.put_back(monkeypatch)


def test_what_a_pipe_carried_is_in_the_lineage_of_what_its_reader_wrote(piped_workflow):
    """A ``pipe()`` is never hashed: the reader's record listed only its other inputs, so
    ``verify-lineage`` of its output said verified without the file the pipe carried, and
    ``why``/``depends`` never linked them."""
    workflow = piped_workflow
    assert (workflow / "upper" / "s1.txt").read_text() == "ACGT\nref\n"
    reader = next(r for r in records(workflow, "piped") if r.task_name == "upper")
    source = str(workflow / "data" / "s1.txt")
    assert source in reader.inputs
    assert reader.extra["via_pipe"] == {str(workflow / "pipes" / "s1.pipe"): [source]}
    assert "unhashed_inputs" not in reader.extra  # the pipe itself is a stream, not a file it failed to hash
    verified = run("verify-lineage", "upper/s1.txt", cwd=workflow)
    assert verified.returncode == 0, verified.stdout[-3000:]
    assert "data/s1.txt" in verified.stdout


def record_edited_chunk_read_by_an_unchecked_run(workflow: Path) -> None:
    """A run with the policy off (or without the plugin's check: another engine's plugin, a
    ``lineage-ledger run``) reran the reader of an edited chunk and recorded the edit as read."""
    record_checkpoint_workflow(workflow)
    chunk = workflow / "chunks" / "c2.txt"
    chunk.write_text("forged\n")
    os.utime(chunk)
    unchecked = snakemake(workflow, "--logger-ledger-policy", "off", "--logger-ledger-run-id", "off")
    assert unchecked.returncode == 0, unchecked.stderr[-3000:]
    reader = next(r for r in records(workflow, "off") if r.task_name == "upper")
    assert any(p.endswith("chunks/c2.txt") for p in reader.inputs)  # the edit, as read: no check ran
    assert run("verify-lineage", "merged.txt", cwd=workflow).returncode == 1


@pytest.fixture(scope="module")
def unchecked_first_run(tmp_path_factory) -> FirstRun:
    require_snakemake()
    return FirstRun(tmp_path_factory.mktemp("unchecked"), record_edited_chunk_read_by_an_unchecked_run,
                    project="wf")


@pytest.fixture
def edited_chunk_read_by_an_unchecked_run(unchecked_first_run, monkeypatch) -> Path:
    """The checkpoint workflow after the unchecked run read its edited chunk, this test's own."""
    return unchecked_first_run.put_back(monkeypatch)


def test_a_checkpoint_chunk_read_since_by_an_unchecked_run_is_still_refused_by_strict(
        edited_chunk_read_by_an_unchecked_run):
    """The chunk was made by the checkpoint, whoever read it since: ``strict`` refuses, as
    ``verify-lineage`` says MODIFIED (the checkpoint's directory, which the check now adds)."""
    workflow = edited_chunk_read_by_an_unchecked_run
    strict = snakemake(workflow, "--logger-ledger-policy", "strict", "--logger-ledger-run-id", "strict")
    assert strict.returncode == 1, strict.stdout[-2000:] + strict.stderr[-2000:]
    assert "inside it, changed: c2.txt" in strict.stderr


def test_the_core_check_compares_a_chunk_with_the_checkpoint_that_wrote_it(
        edited_chunk_read_by_an_unchecked_run):
    """The check the plugins call, asked about the chunk itself (as the plugin asks about each
    input of a job): it compared the chunk with its last reader's record, the unchecked run
    that read the edit, and found nothing changed."""
    from lineage_ledger import ArtifactMismatch, check_before_run

    workflow = edited_chunk_read_by_an_unchecked_run
    with open_ledger(str(workflow / ".lineage" / "ledger.db"), read_only=True) as ledger:
        with pytest.raises(ArtifactMismatch, match="c2.txt"):
            check_before_run(ledger, [str(workflow / "chunks" / "c2.txt")], "strict")


def test_rerun_runs_again_the_pipe_writer_of_a_changed_source(piped_workflow):
    """A source read by a rule whose output is a ``pipe()``: ``rerun`` named it changed, then
    forced nothing (the plan left pipe outputs out of its readers' outputs), and the run ended
    successfully on the old result, every time."""
    workflow = piped_workflow
    edit_keep_times(workflow / "data" / "s1.txt", "ggcc\n")
    rerun = snakemake(workflow, "--logger-ledger-policy", "rerun", "--logger-ledger-run-id", "rerun")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "data/s1.txt" in rerun.stderr
    assert (workflow / "upper" / "s1.txt").read_text() == "ACGT\nGGCC\nref\n"
    assert {r.task_name for r in records(workflow, "rerun")} >= {"decompress", "upper"}
    strict = snakemake(workflow, "--logger-ledger-policy", "strict", "--logger-ledger-run-id", "strict")
    assert strict.returncode == 0, strict.stderr[-3000:]


QC = textwrap.dedent('''\
    SAMPLES = ["a", "b", "c"]

    rule all:
        input: "merged.txt"

    checkpoint qc:
        input: expand("data/{s}.txt", s=SAMPLES)
        output: "passing.txt"
        shell: "for f in {input}; do basename $f .txt; done > {output}"

    rule up:
        input: "data/{s}.txt"
        output: "up/{s}.txt"
        shell: "tr a-z A-Z < {input} > {output}"

    def passing(wildcards):
        with open(checkpoints.qc.get().output[0]) as f:
            return expand("up/{s}.txt", s=f.read().split())

    rule merge:
        input: passing
        output: "merged.txt"
        shell: "cat {input} > {output}"
    ''')


def test_a_checkpoint_output_edited_by_hand_does_not_silently_reshape_a_strict_run(tmp_path):
    """A QC checkpoint writes the list of samples that pass; an input function reads it. The
    list edited by hand (a sample dropped, mtime put back): no job of the next DAG reads it as
    an input, so ``strict`` checked nothing, Snakemake re-ran the merge without the sample,
    and ``verify-lineage`` of the result said verified."""
    require_snakemake()
    workflow = tmp_path / "wf"
    (workflow / "data").mkdir(parents=True)
    for sample in "abc":
        (workflow / "data" / f"{sample}.txt").write_text(f"reads {sample}\n")
    (workflow / "Snakefile").write_text(QC)
    first = snakemake(workflow, "--logger-ledger-run-id", "first")
    assert first.returncode == 0, first.stderr[-3000:]
    passing = workflow / "passing.txt"
    stat = passing.stat()
    passing.write_text("a\nc\n")
    os.utime(passing, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    strict = snakemake(workflow, "--logger-ledger-policy", "strict", "--logger-ledger-run-id", "strict")
    assert strict.returncode == 1, strict.stdout[-2000:] + strict.stderr[-2000:]
    assert "passing.txt" in strict.stderr
    assert "READS B" in (workflow / "merged.txt").read_text()  # nothing ran
    rerun = snakemake(workflow, "--logger-ledger-policy", "rerun", "--logger-ledger-run-id", "rerun")
    assert rerun.returncode == 1, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "--forcerun passing.txt" in rerun.stderr
    forced = snakemake(workflow, "--logger-ledger-policy", "strict", "--forcerun", "passing.txt",
                       "--logger-ledger-run-id", "forced")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert (workflow / "merged.txt").read_text() == "READS A\nREADS B\nREADS C\n"


TEMP_DIRECTORY = textwrap.dedent('''\
    rule all:
        input: "final.txt"

    rule unpack:
        input: "in.txt"
        output: temp(directory("unpacked"))
        shell: "mkdir -p {output} && cp {input} {output}/a && echo b > {output}/b"

    rule use:
        input: "unpacked"
        output: "final.txt"
        shell: "cat {input}/a {input}/b > {output}"
    ''')


def test_a_temp_directory_is_recorded_before_snakemake_deletes_it(tmp_path):
    """A ``temp(directory())`` output was hashed in Snakemake's process before its deletion,
    but the recording process got only its digest, not the manifest a directory's record
    needs: it hashed again, found it deleted, and both records left it out (its producer as
    a missing output, its reader as an unhashed input). ``verify-lineage`` of the result said
    verified with no input at all."""
    require_snakemake()
    workflow = tmp_path / "wf"
    workflow.mkdir()
    (workflow / "in.txt").write_text("x\n")
    (workflow / "Snakefile").write_text(TEMP_DIRECTORY)
    result = snakemake(workflow, "--logger-ledger-run-id", "tempdir")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (workflow / "unpacked").exists()  # deleted by Snakemake, as asked
    by_rule = {r.task_name: r for r in records(workflow, "tempdir")}
    unpacked = str(workflow / "unpacked")
    assert by_rule["unpack"].outputs[unpacked]["type"] == "dir"
    assert by_rule["use"].inputs[unpacked] == by_rule["unpack"].outputs[unpacked]
    verified = run("verify-lineage", "final.txt", cwd=workflow)
    assert "in.txt" in verified.stdout, verified.stdout[-3000:]
