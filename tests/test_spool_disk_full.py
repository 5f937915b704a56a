"""A spool whose disk fills while a task ends, through the real CLI and the real ``snakemake``.

The spool is on a small tmpfs (mounted by the test: root only, else skipped) that the task
itself fills, as a job that writes a large output next to ``.lineage`` does. What must hold:
no record is lost without the user being told so in plain words, a record that the spool
cannot take goes to the ledger where the ledger can take it, and the engine goes on (and
goes on recording once there is room again).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import run_cli
from tests.support.faults import hold_write_lock, record_bodies, small_tmpfs, without_root_file_powers
from tests.support.snakemake import clean_env, require_snakemake, run

FILL = "head -c 64000000 /dev/zero > {target} 2>/dev/null; true"  # fills the tmpfs, succeeds


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path / "small"`` (root only), else skip."""
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


# -- lineage-ledger run -------------------------------------------------------------------------
def test_run_whose_command_fills_the_spools_disk_records_straight_into_the_ledger(workdir, small_disk):
    spool = small_disk / "spool"
    filler = small_disk / "filler"
    result = run_cli("run", "-n", "filler", "--", "sh", "-c", FILL.format(target=filler), cwd=workdir,
                     env={"LINEAGE_SPOOL": str(spool)})
    assert result.returncode == 0, result.stderr  # the command succeeded and its record is kept
    assert "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr and "straight into the ledger" in result.stderr
    task, = [r for r in record_bodies(workdir / ".lineage" / "ledger.db") if r["task_name"] == "filler"]
    assert task["status"] == "succeeded"


def test_run_whose_record_neither_the_spool_nor_the_ledger_takes_says_it_is_lost(workdir, small_disk):
    run_cli("run", "--", "true", cwd=workdir, check_rc=0)  # the ledger exists
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        result = run_cli("run", "--ship-wait", "1", "-n", "filler", "--", "sh", "-c",
                         FILL.format(target=small_disk / "filler"), cwd=workdir,
                         env={"LINEAGE_SPOOL": str(small_disk / "spool")})
    finally:
        holder.communicate("")
    # The command ran and succeeded, its record is nowhere: an error of this run (1), not
    # "nothing ran" (2), said in words that leave no doubt.
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "NOT recorded" in result.stderr and "No space left on device" in result.stderr
    assert [r for r in record_bodies(workdir / ".lineage" / "ledger.db") if r["task_name"] == "filler"] == []


# -- snakemake ----------------------------------------------------------------------------------
# ``.lineage`` (the pending-jobs journal, the spool and the ledger) is on the small disk.
# ``fill`` fills that disk as it ends, ``free`` empties it again: the jobs after it must be
# recorded, and ``fill``'s record, which nothing could keep, must be said to be lost.
FILL_THEN_FREE = """
rule all:
    input: "c.txt"

rule a:
    output: "a.txt"
    shell: "echo a > {output}"

rule fill:
    input: "a.txt"
    output: "fill.txt"
    shell:
        # once a's record is in the spool (its "done" line in the journal), fill the disk
        "for i in $(seq 600); do grep -qs '\\"done\\"' .lineage/snakemake-pending/*.jsonl && break; sleep 0.1; done; "
        "(head -c 64000000 /dev/zero > .lineage/filler) 2>/dev/null || true; echo fill > {output}; "
        # a shell command longer than a page: its journal line and record need a new page of the disk
        ": PADDING"

rule free:
    input: "fill.txt"
    output: "free.txt"
    shell: "sleep 2; rm -f .lineage/filler; echo free > {output}"  # fill's record is tried on a full disk

rule c:
    input: "free.txt"
    output: "c.txt"
    shell: "echo c > {output}"
""".replace("PADDING", "x" * 9000)


@pytest.fixture
def lineage_on_small_disk(tmp_path):
    """``tmp_path/.lineage`` on a 4 MiB tmpfs (root only), else skip."""
    require_snakemake()
    with small_tmpfs(tmp_path / ".lineage", "4m"):
        yield tmp_path


@pytest.mark.slow
def test_snakemake_goes_on_recording_once_the_disk_under_lineage_has_room_again(lineage_on_small_disk):
    workdir = lineage_on_small_disk
    (workdir / "Snakefile").write_text(FILL_THEN_FREE)
    ledger = workdir / ".lineage" / "ledger.db"  # the default, on the small disk too
    result = run("snakemake", "--cores", "1", "--logger", "ledger", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "c.txt").exists()
    run_cli("spool", "ship", "--ledger", str(ledger), cwd=workdir, check_rc=0)  # what waited, if any
    recorded = {r["task_name"] for r in record_bodies(ledger) if r["engine"] == "snakemake"}
    assert {"a", "free", "c", "all"} <= recorded, result.stderr[-3000:]
    if "fill" not in recorded:  # nothing could keep it: the user is told it is lost, not that it waits
        told = [line for line in result.stderr.splitlines() if "NOT kept" in line]
        assert len(told) == 1 and "1 job(s)" in told[0], result.stderr[-3000:]
        assert "keep them for the next run" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_snakemake_records_straight_into_a_ledger_on_another_disk_and_says_so_plainly(lineage_on_small_disk):
    workdir = lineage_on_small_disk
    (workdir / "Snakefile").write_text(FILL_THEN_FREE)
    ledger = workdir / "ledger.db"  # not on the small disk: it takes what the spool cannot
    result = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-url", str(ledger),
                 cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    run_cli("spool", "ship", "--ledger", str(ledger), cwd=workdir, check_rc=0)  # what waited, if any
    recorded = {r["task_name"] for r in record_bodies(ledger) if r["engine"] == "snakemake"}
    assert recorded == {"a", "fill", "free", "c", "all"}, result.stderr[-3000:]


# ``a`` ends while the spool's disk is full, ``b`` empties it well after (its record is then
# taken): ``a``, which the spool could not take, must be kept for the next run by the journal.
EARLY_FAILURE = """
rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "sleep 5; rm -f FILLER; echo b > {output}"

rule a:
    output: "a.txt"
    shell: "echo a > {output}"

rule c:
    output: "c.txt"
    shell: "echo c > {output}"
"""


@pytest.mark.slow
def test_snakemake_keeps_a_job_the_full_spool_refused_early_for_the_next_run(tmp_path, small_disk):
    require_snakemake()
    workdir = tmp_path / "work"
    workdir.mkdir()
    filler = small_disk / "filler"
    subprocess.run(["sh", "-c", FILL.format(target=filler)], check=True)
    (workdir / "Snakefile").write_text(EARLY_FAILURE.replace("FILLER", str(filler)))
    ledger = small_disk / "ledger.db"  # on the full disk too: nothing can take a's record as it ends
    env = {"LINEAGE_SPOOL": str(small_disk / "spool")}
    command = ("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-url", str(ledger))
    first = run(*command, "b.txt", cwd=workdir, env=clean_env(**env))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "could not record task a" in first.stderr, first.stderr[-3000:]  # the disk was full as a ended
    assert "keeps them, and the next run records them" in first.stderr, first.stderr[-3000:]
    second = run(*command, "c.txt", cwd=workdir, env=clean_env(**env))  # any later run with a job
    assert second.returncode == 0, second.stderr[-3000:]
    run_cli("spool", "ship", "--ledger", str(ledger), cwd=workdir, env=env, check_rc=0)
    recorded = {r["task_name"] for r in record_bodies(ledger) if r["engine"] == "snakemake"}
    assert recorded == {"a", "b", "c"}, (first.stderr[-2000:], second.stderr[-2000:])


# -- a spool directory that cannot take a new file while a task runs ------------------------------
def test_run_whose_spool_directory_turns_read_only_still_ships_its_record(workdir):
    run_cli("run", "--", "true", cwd=workdir, check_rc=0)  # the ledger and the spool directory exist
    directory, = (workdir / ".lineage" / "spool").iterdir()
    prefix = without_root_file_powers()  # root would write there all the same
    try:
        # The segment of this run is open before the command starts; no new file can be made after.
        result = run_cli("run", "-n", "lock-spool", "--", "chmod", "500", str(directory), cwd=workdir,
                         prefix=prefix)
    finally:
        os.chmod(directory, 0o700)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "did not take it" not in result.stderr, result.stderr[-3000:]  # the ledger was there all along
    task, = [r for r in record_bodies(workdir / ".lineage" / "ledger.db") if r["task_name"] == "lock-spool"]
    assert task["status"] == "succeeded"


@pytest.mark.slow
def test_snakemake_records_what_the_journal_kept_even_when_the_next_run_has_nothing_to_do(tmp_path, small_disk):
    require_snakemake()
    workdir = tmp_path / "work"
    workdir.mkdir()
    filler = small_disk / "filler"
    subprocess.run(["sh", "-c", FILL.format(target=filler)], check=True)
    (workdir / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n')
    ledger = small_disk / "ledger.db"  # on the full disk too: nothing can take a's record as it ends
    env = {"LINEAGE_SPOOL": str(small_disk / "spool")}
    command = ("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-url", str(ledger))
    first = run(*command, cwd=workdir, env=clean_env(**env))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "the next run records them" in first.stderr, first.stderr[-3000:]
    filler.unlink()  # room again; the workflow is complete: the next run has nothing to do
    second = run(*command, cwd=workdir, env=clean_env(**env))
    assert second.returncode == 0, second.stderr[-3000:]
    run_cli("spool", "ship", "--ledger", str(ledger), cwd=workdir, env=env)
    recorded = [r["task_name"] for r in record_bodies(ledger)] if ledger.exists() else []
    assert recorded == ["a"], (first.stderr[-2000:], second.stderr[-2000:])
    assert os.listdir(workdir / ".lineage" / "snakemake-pending") == []


def test_run_whose_spool_directory_is_removed_meanwhile_still_ships_its_record(workdir):
    """``rm -rf .lineage/spool`` while the command runs (a clean-up, a tmp reaper): the
    record is journaled in a segment no name points to any more; it must still be shipped."""
    run_cli("run", "--", "true", cwd=workdir, check_rc=0)
    result = run_cli("run", "-n", "rm-spool", "--", "rm", "-rf", str(workdir / ".lineage" / "spool"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "did not take it" not in result.stderr, result.stderr[-3000:]
    task, = [r for r in record_bodies(workdir / ".lineage" / "ledger.db") if r["task_name"] == "rm-spool"]
    assert task["status"] == "succeeded"


def test_a_record_whose_spool_directory_is_removed_while_the_ledger_is_locked_waits_in_a_new_one(workdir):
    run_cli("run", "--", "true", cwd=workdir, check_rc=0)
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        result = run_cli("run", "--ship-wait", "1", "-n", "rm-spool", "--", "rm", "-rf",
                         str(workdir / ".lineage" / "spool"), cwd=workdir)
    finally:
        holder.communicate("")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "waits there" in result.stderr, result.stderr[-3000:]
    shipped = run_cli("spool", "ship", cwd=workdir)
    assert shipped.returncode == 0 and "shipped 1 record(s)" in shipped.stderr, (result.stderr, shipped.stderr)
    task, = [r for r in record_bodies(workdir / ".lineage" / "ledger.db") if r["task_name"] == "rm-spool"]
    assert task["status"] == "succeeded"
