"""Wall time of the bioinformatics-shaped workflow (9 jobs), with and without the ledger logger.

tests/support/bio_workflow: bwa index (a directory), bwa mem per sample (temp BAM), samtools
sort, samtools index with a QC directory per sample, bcftools call, a report script, on
simulated reads. Each round makes two fresh copies of the workflow and its data and runs
the real ``snakemake --cores 2`` on each, once plain and once with ``--logger ledger`` (SQLite
ledger in the workflow's directory, default policy ``warn``), alternating which goes first.
The time is the whole command, start-up and the plugin's final flush included: what a user
waits. The ledger runs are checked: 9 records, each with its outputs.

Goal (issue 16): median wall time with the plugin / median without <= 1.05.

Needs bwa, samtools and bcftools on PATH (Debian packages).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import bio_workflow  # noqa: E402

GOAL = 1.05
BIN = Path(sys.executable).parent


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(template: Path, directory: Path, variant: str) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds of the whole process tree (snakemake, its jobs, the recording
    process), and the plugin's own account of its costs (ledger variant)."""
    shutil.copytree(template, directory, symlinks=True)
    command = [str(BIN / "snakemake"), "--cores", "2", "--quiet", "all"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "SNAKEMAKE_LOGGER_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["LINEAGE_SNAKEMAKE_COST_FILE"] = str(directory / "plugin-cost.json")
    if variant == "ledger":
        command += ["--logger", "ledger", "--logger-ledger-run-id", "bench"]
    cpu_before, start = children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed ({variant}):\n" + result.stderr[-3000:])
    assert (directory / "results" / "report.txt").exists()
    cost: dict = {}
    if variant == "ledger":
        check_recorded(directory)
        reported = directory / "plugin-cost.json"
        cost = json.loads(reported.read_text()) if reported.exists() else {}
    return elapsed, cpu, cost


def check_recorded(directory: Path) -> None:
    from lineage_ledger import open_ledger

    with open_ledger(str(directory / ".lineage" / "ledger.db")) as ledger:
        tasks = [entry.record for entry in ledger.run("bench")]
    assert len(tasks) == sum(bio_workflow.JOBS.values()), len(tasks)
    assert all(rec.status == "succeeded" and rec.outputs for rec in tasks)


def main() -> int:
    args = parse_args(__doc__, "2 rounds", quick_rounds=2, full_rounds=7)
    missing = bio_workflow.missing_tools()
    if missing:
        print(f"skipped: {', '.join(missing)} not on PATH (apt-get install bwa samtools bcftools)")
        return 0
    print(f"bio workflow, {sum(bio_workflow.JOBS.values())} jobs, snakemake --cores 2, {args.rounds} rounds, "
          f"cpus: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    times: dict[str, list[float]] = {"plain": [], "ledger": []}
    cpus: dict[str, list[float]] = {"plain": [], "ledger": []}
    costs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ll-bench-bio-") as tmp:
        template = bio_workflow.prepare(Path(tmp) / "template")
        for round_no in range(args.rounds):
            order = ("plain", "ledger") if round_no % 2 == 0 else ("ledger", "plain")
            for variant in order:
                wall, cpu, cost = one_run(template, Path(tmp) / f"r{round_no}-{variant}", variant)
                times[variant].append(wall)
                cpus[variant].append(cpu)
                if cost:
                    costs.append(cost)
            print(f"round {round_no}: plain {times['plain'][-1]:.2f} s, ledger {times['ledger'][-1]:.2f} s, "
                  f"ratio {times['ledger'][-1] / times['plain'][-1]:.3f}; cpu plain {cpus['plain'][-1]:.2f} s, "
                  f"ledger {cpus['ledger'][-1]:.2f} s; load {os.getloadavg()[0]:.1f}")
    plain, ledger = statistics.median(times["plain"]), statistics.median(times["ledger"])
    print(f"\nmedian wall: plain {plain:.3f} s, ledger {ledger:.3f} s ({(ledger - plain) * 1e3:+.0f} ms per run)")
    cpu_plain, cpu_ledger = statistics.median(cpus["plain"]), statistics.median(cpus["ledger"])
    print(f"median CPU of the process tree: plain {cpu_plain:.3f} s, ledger {cpu_ledger:.3f} s, "
          f"ratio {cpu_ledger / cpu_plain:.3f} (less sensitive to load than wall time)")
    if costs:
        print("plugin's own CPU on snakemake's threads per run (median): "
              f"{statistics.median(c['listener_cpu'] + c['main_thread_cpu'] for c in costs) * 1e3:.1f} ms; "
              f"exit waited for the recording process {statistics.median(c['close_wait'] for c in costs) * 1e3:.0f} ms; "
              f"recording process CPU {statistics.median(c.get('recording_process_cpu') or 0 for c in costs):.3f} s")
    ratio = ledger / plain
    print(f"load at end {os.getloadavg()[0]:.1f}")
    print(f"{'GOAL MET' if ratio <= GOAL else 'GOAL MISSED'}: with / without = {ratio:.3f} (goal <= {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
