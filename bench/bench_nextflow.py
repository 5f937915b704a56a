"""Wall time of a 50-task Nextflow pipeline, with and without nextflow-ledger.

Each round makes two fresh copies of a generated pipeline (one process, 50 tasks of
``echo i > i.txt``, each output published with ``publishDir mode: 'copy'``; 10 tasks with
--quick) and runs the real Nextflow 25.04.4 on each: once as ``nextflow run main.nf`` and once
as ``nextflow-ledger run main.nf`` (SQLite ledger in the pipeline's directory), alternating
which goes first. The time is the whole command, JVM start and the wrapper's final flush
included: what a user waits. CPU time of the process tree (``RUSAGE_CHILDREN``) is shown
too, being less sensitive to the machine's load.

Python's bytecode: an installed package has its modules compiled (``pip install`` does it),
but this checkout is installed in development mode and may run with PYTHONDONTWRITEBYTECODE
set, and then every run compiles the wrapper's and the core's ~40 modules from source again
(0.14 s of CPU). The runs get a private ``PYTHONPYCACHEPREFIX`` instead, filled by one untimed
run of each variant before the rounds (which also warms the disk cache for Nextflow's jars;
``--quick`` skips it, to stay quick).

Goal (issue #20): median wall time with the plugin / median without <= 1.05.

Needs the Nextflow that ``make install-nextflow`` builds (or ``LINEAGE_NEXTFLOW``).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args

PIPELINE = """
process MAKE {{
  publishDir 'results', mode: 'copy'
  input: val i
  output: path "${{i}}.txt"
  script: "echo ${{i}} > ${{i}}.txt"
}}
workflow {{
  MAKE(channel.of(1..{n}))
}}
"""
VARIANTS = ("plain", "ledger")
BIN = Path(sys.executable).parent
# What the `nextflow-ledger` console script does, plus an atexit hook that writes the wrapper's
# own CPU seconds (not Nextflow's) to $BENCH_SELF_CPU.
LAUNCHER = """
import atexit, os, resource, sys
def _self_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["BENCH_SELF_CPU"], "w") as out:
        out.write(repr(usage.ru_utime + usage.ru_stime))
atexit.register(_self_cpu)
from lineage_ledger_nextflow.cli import main
sys.argv[0] = "nextflow-ledger"
main()
"""


def nextflow() -> str | None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins" / "nextflow" / "src"))
    from lineage_ledger_nextflow.cli import find_nextflow

    return find_nextflow()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(directory: Path, variant: str, env: dict[str, str]) -> tuple[float, float, float]:
    """Wall time, CPU time of the process tree, and the wrapper's own CPU time (0 for plain)."""
    command = [env["LINEAGE_NEXTFLOW"]] if variant == "plain" else [sys.executable, "-c", LAUNCHER]
    own = directory / "self-cpu"
    cpu0, t0 = children_cpu(), time.perf_counter()
    result = subprocess.run([*command, "run", "main.nf"], cwd=directory, env={**env, "BENCH_SELF_CPU": str(own)},
                            capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if result.returncode != 0:
        sys.exit(f"{variant} run failed:\n{result.stdout}\n{result.stderr}")
    return wall, cpu, float(own.read_text()) if own.exists() else 0.0


def check_recorded(directory: Path, n: int) -> None:
    listed = subprocess.run([str(BIN / "lineage-ledger"), "log", "-n", "0", "--json"], cwd=directory,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    names = [json.loads(line)["task_name"] for line in listed if line.strip()]
    if names.count("MAKE") != n or names.count("MAKE:publish") != n:
        sys.exit(f"expected {n} task and {n} publish records, found {len(names)} records")


def main() -> None:
    args = parse_args(__doc__, "10 tasks, one round", quick_rounds=1, full_rounds=5)
    n = 10 if args.quick else 50
    launcher = nextflow()
    if launcher is None or not (BIN / "nextflow-ledger").exists():
        print("no Nextflow, or no nextflow-ledger: run `make install install-nextflow` first")
        print("NO GOAL measured (not run)")
        return
    with tempfile.TemporaryDirectory(prefix="bench-nextflow-") as tmp:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LINEAGE_", "NXF_")) and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(LINEAGE_NEXTFLOW=launcher, NXF_HOME=str(Path(tmp) / "nxf-home"), NXF_ANSI_LOG="false",
                   NXF_OFFLINE="true", PYTHONPYCACHEPREFIX=str(Path(tmp) / "pycache"))
        for variant in () if args.quick else VARIANTS:  # untimed: compiles the wrapper's modules once
            warm = Path(tmp) / f"warm-{variant}"
            warm.mkdir()
            (warm / "main.nf").write_text(PIPELINE.format(n=2))
            one_run(warm, variant, env)
        print(f"{n}-task Nextflow pipeline (local executor, publishDir copy), {args.rounds} rounds, "
              f"cpus: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; Python bytecode "
              + ("compiled by the first round (--quick)" if args.quick else "compiled once (PYTHONPYCACHEPREFIX)"))
        walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
        wrapper: list[float] = []
        for round_no in range(args.rounds):
            order = VARIANTS if round_no % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                directory = Path(tmp) / f"r{round_no}-{variant}"
                directory.mkdir()
                (directory / "main.nf").write_text(PIPELINE.format(n=n))
                wall, cpu, own = one_run(directory, variant, env)
                walls[variant].append(wall)
                cpus[variant].append(cpu)
                if variant == "ledger":
                    wrapper.append(own)
                if variant == "ledger" and round_no == 0:
                    check_recorded(directory, n)
            print(f"round {round_no}: " + ", ".join(
                f"{v} {walls[v][-1]:.2f} s wall / {cpus[v][-1]:.2f} s CPU" for v in VARIANTS)
                + f", load {os.getloadavg()[0]:.1f}")
    wall = {v: statistics.median(walls[v]) for v in VARIANTS}
    cpu = {v: statistics.median(cpus[v]) for v in VARIANTS}
    print("\nmedian wall time: " + ", ".join(f"{v} {wall[v]:.2f} s" for v in VARIANTS))
    print("median CPU time (nextflow, its tasks, the wrapper): " + ", ".join(f"{v} {cpu[v]:.2f} s" for v in VARIANTS))
    print(f"CPU with ledger / plain = {cpu['ledger'] / cpu['plain']:.3f}x; the wrapper's own process: "
          f"{statistics.median(wrapper):.2f} s (imports, hashing, records), Nextflow and tasks: "
          f"{cpu['ledger'] - statistics.median(wrapper):.2f} s")
    paired = [w / p for w, p in zip(walls["ledger"], walls["plain"], strict=True)]
    print("per round with / without (the same minute's load): " + " ".join(f"{r:.3f}" for r in paired)
          + f"; median {statistics.median(paired):.3f}")
    ratio = wall["ledger"] / wall["plain"]
    print(f"with / without = {ratio:.3f}   (goal <= 1.05; {(wall['ledger'] - wall['plain']) / n * 1e3:+.1f} ms per task)")
    print("GOAL MET" if ratio <= 1.05 else "GOAL MISSED")


if __name__ == "__main__":
    main()
