"""A ``temp(directory())`` output of a Snakemake run killed with ``kill -9``, recovered by the next
run from the plugin's pending-jobs journal, through the real ``snakemake``.

The recording process is stopped (SIGSTOP, as a recording process starved of CPU or blocked on a
slow disk would be) so that the killed run's jobs stay in its journal, not in the spool: the
deterministic form of a kill that lands before the records were written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from lineage_ledger import open_ledger
from tests.support.snakemake import BIN, clean_env, require_snakemake, run

pytestmark = pytest.mark.slow

# unpack waits for the test's word (so that the recording process can be stopped first); later
# runs after use, once Snakemake has deleted the temp() directory, and waits to be killed.
UNPACK_USE_LATER = textwrap.dedent('''\
    rule all:
        input: "final.txt", "later.txt"

    rule unpack:
        input: "in.txt"
        output: temp(directory("unpacked"))
        shell: "for i in $(seq 600); do [ -e go.flag ] && break; sleep 0.1; done && "
               "mkdir -p {output} && cp {input} {output}/a && echo b > {output}/b"

    rule use:
        input: "unpacked"
        output: "final.txt"
        shell: "cat {input}/a {input}/b > {output}"

    rule later:
        input: "final.txt"
        output: "later.txt"
        shell: "touch later.flag && sleep 600 && touch {output}"
    ''')


def records(workflow: Path, run_id: str) -> list:
    with open_ledger(str(workflow / ".lineage" / "ledger.db")) as ledger:
        return [entry.record for entry in ledger.run(run_id)]


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


def test_a_temp_directory_of_a_killed_run_is_recovered_with_its_manifest(tmp_path):
    require_snakemake()
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "Snakefile").write_text(UNPACK_USE_LATER)
    process = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1", "--logger", "ledger", "--logger-ledger-run-id", "killed"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True)
    try:
        found: list[psutil.Process] = []
        wait_until(lambda: found.append(recording_process(process)) or found[-1] is not None, process,
                   "the recording process started")
        found[-1].suspend()  # SIGSTOP: it records nothing from now on
        (tmp_path / "go.flag").touch()
        wait_until(lambda: (tmp_path / "later.flag").exists() and journaled_jobs(tmp_path) >= 2, process,
                   "unpack and use finished and were journaled")
        assert not (tmp_path / "unpacked").exists()  # deleted by Snakemake once use was done
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # snakemake, its job and the recording process
        process.wait(timeout=30)

    assert run("snakemake", "--unlock", cwd=tmp_path).returncode == 0
    resumed = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-run-id", "resumed",
                  "--rerun-incomplete", "final.txt", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "left by an interrupted run" in resumed.stderr
    by_rule = {r.task_name: r for r in records(tmp_path, "killed")}
    unpacked = str(tmp_path / "unpacked")
    assert by_rule["unpack"].extra["recovered_after_interruption"] is True
    assert by_rule["unpack"].outputs[unpacked]["type"] == "dir"
    assert by_rule["use"].inputs[unpacked] == by_rule["unpack"].outputs[unpacked]
    verified = run("verify-lineage", "final.txt", cwd=tmp_path)
    assert verified.returncode == 0 and "in.txt" in verified.stdout, verified.stdout[-3000:]
