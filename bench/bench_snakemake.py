"""Wall time of a Snakemake workflow of small shell jobs, with and without the ledger logger.

Each round makes two fresh copies of a generated workflow (200 jobs of
``echo {i} > out/{i}.txt`` plus the ``all`` target; 20 with --quick) and runs the real
``snakemake --cores 2 --quiet all`` command on each, once plain and once with ``--logger ledger``
(SQLite ledger in the workflow's directory), alternating which goes first. The time is
the whole command, start-up and the plugin's final flush included: what a user waits.

Goal (issue #3): median wall time with the plugin / median without <= 1.05.

Wall time on a loaded 2-core machine is noisy, so the CPU time of the whole process tree
(user + sys of snakemake and its jobs, from ``getrusage(RUSAGE_CHILDREN)``) is shown too:
it is what the plugin adds to the machine's work, and it moves much less with the load.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args

SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule make:
    output: "out/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
"""


def snakemake_command() -> str:
    return str(Path(sys.executable).parent / "snakemake")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(directory: Path, n: int, with_ledger: bool) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one snakemake command."""
    directory.mkdir(parents=True)
    (directory / "Snakefile").write_text(SNAKEFILE.format(n=n))
    # "--quiet all" prints nothing; the target is the first rule, `all`. (Plain -q would quiet
    # progress, and Snakemake then logs no finished jobs for the plugin to record promptly.)
    command = [snakemake_command(), "--cores", "2", "--quiet", "all"]
    if with_ledger:
        command += ["--logger", "ledger"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "SNAKEMAKE_LOGGER_"))}
    cpu_before, start = children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed ({'with' if with_ledger else 'without'} the ledger):\n"
                         + result.stderr[-3000:])
    made = len(list((directory / "out").iterdir()))
    assert made == n, (made, n)
    if with_ledger:
        check_recorded(directory, n)
    return elapsed, cpu


def check_recorded(directory: Path, n: int) -> None:
    from lineage_ledger import open_ledger

    ledger = open_ledger(str(directory / ".lineage" / "ledger.db"))
    try:
        summary = ledger.verify_chain()
    finally:
        ledger.close()
    assert summary.records == n + 1, (summary.records, n + 1)  # every job, and the all target


def main() -> None:
    args = parse_args(__doc__, "20 jobs, 1 round", quick_rounds=1)
    n = 20 if args.quick else 200
    print(f"{n} shell jobs + all, snakemake --cores 2, {args.rounds} rounds, cpus: {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}")
    times: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="ll-bench-snakemake-") as tmp:
        for round_no in range(args.rounds):
            order = (False, True) if round_no % 2 == 0 else (True, False)
            for with_ledger in order:
                name = f"r{round_no}-{'ledger' if with_ledger else 'plain'}"
                wall, cpu = one_run(Path(tmp) / name, n, with_ledger)
                times[with_ledger].append(wall)
                cpus[with_ledger].append(cpu)
            print(f"round {round_no}: plain {times[False][-1]:.2f} s (cpu {cpus[False][-1]:.2f} s), "
                  f"with ledger {times[True][-1]:.2f} s (cpu {cpus[True][-1]:.2f} s), "
                  f"load {os.getloadavg()[0]:.1f}")
    plain, ours = statistics.median(times[False]), statistics.median(times[True])
    print(f"\nmedian wall time: plain {plain:.2f} s, with --logger ledger {ours:.2f} s "
          f"({(ours - plain) / n * 1e3:+.1f} ms per job)")
    cpu_plain, cpu_ours = statistics.median(cpus[False]), statistics.median(cpus[True])
    print(f"median CPU time (snakemake + jobs): plain {cpu_plain:.2f} s, with ledger {cpu_ours:.2f} s "
          f"= {cpu_ours / cpu_plain:.3f}x ({(cpu_ours - cpu_plain) / n * 1e3:+.1f} ms CPU per job)")
    ratio = ours / plain
    print(f"with / without = {ratio:.3f}   (goal <= 1.05)")
    print("GOAL MET" if ratio <= 1.05 else "GOAL MISSED")


if __name__ == "__main__":
    main()
