"""Wall time of a Snakemake workflow of small shell jobs, with and without the ledger logger.

Each round makes two fresh copies of a generated workflow (200 jobs of
``echo {i} > out/{i}.txt`` plus the ``all`` target; 4 with --quick) and runs the real
``snakemake --cores 2 --quiet all`` command on each, once plain and once with ``--logger ledger``
(SQLite ledger in the workflow's directory), alternating which goes first. The time is
the whole command, start-up and the plugin's final flush included: what a user waits.

A third variant, for information, runs with a do-nothing logger plugin (``--logger null``,
a module written into the temporary directory): what Snakemake itself spends on having any
logger plugin (its QueueHandler formats every log record for the plugins' listener thread).

Goal (issue #3): median wall time with the plugin / median without <= 1.05.

A second part measures what every run pays whatever its size (start-up, the pre-run check,
the recording process, the final flush), which CI pays on each of its dozens of Snakemake
runs: a one-rule workflow (``tr`` of a source file) run by plain ``snakemake``, by
``snakemake --logger ledger`` and by ``snakemake-ledger``, on an empty ledger (a fresh
directory) and on a non-empty one (a directory where one untimed ledger run recorded the job,
its output then removed: the rule runs again, and the check reads the ledger for the source
file). The three run in turn, alternating order; CPU is the whole process tree's (Snakemake,
the recording process, the job), with the load. ``snakemake-ledger`` cost about twice the
CPU of plain ``snakemake`` here until it stopped importing Snakemake's CLI twice (helper-163).

Wall time on a loaded 2-core machine is noisy, so two CPU times are shown too: that of the
whole process tree (user + sys of snakemake and its jobs, ``getrusage(RUSAGE_CHILDREN)``),
and that of the snakemake process alone (its own ``getrusage(RUSAGE_SELF)`` at exit, written
to a file by an ``atexit`` hook of the launcher below). The second leaves out the jobs'
shells, so ledger minus plain, per job, is what the plugin costs Snakemake's process: the
least load-sensitive figure here. The plugin also reports (``LINEAGE_SNAKEMAKE_COST_FILE``)
the CPU time of its own code on Snakemake's threads, measured with ``time.thread_time()``
(the listener thread's ``emit()``, and the main thread's hooks: the pre-run check, temp()
hashing, starting the recording process), and its recording process's CPU: per job, these
are the plugin's costs with the load's noise taken out.
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

SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule make:
    output: "out/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
"""


NULL_PLUGIN = """
from snakemake_interface_logger_plugins.base import LogHandlerBase


class LogHandler(LogHandlerBase):
    writes_to_stream = writes_to_file = has_filter = has_formatter = needs_rulegraph = False

    def emit(self, record):
        pass
"""

VARIANTS = ("plain", "null", "ledger")

# What the `snakemake` console script does (snakemake.cli.main), plus an atexit hook that
# writes the process's own CPU seconds (not its children's) to $BENCH_SELF_CPU.
LAUNCHER = """
import atexit, os, resource, sys
def _self_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["BENCH_SELF_CPU"], "w") as out:
        out.write(repr(usage.ru_utime + usage.ru_stime))
atexit.register(_self_cpu)
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
"""


def snakemake_command() -> list[str]:
    return [sys.executable, "-c", LAUNCHER]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(directory: Path, n: int, variant: str, plugins: Path) -> tuple[float, float, float, dict]:
    """Wall seconds, CPU seconds of the process tree and of snakemake alone, and the plugin's
    own account of its CPU (ledger variant), of one command."""
    directory.mkdir(parents=True)
    (directory / "Snakefile").write_text(SNAKEFILE.format(n=n))
    # "--quiet all" prints nothing; the target is the first rule, `all`. (Plain -q would quiet
    # progress, and Snakemake then logs no finished jobs for the plugin to record promptly.)
    command = [*snakemake_command(), "--cores", "2", "--quiet", "all"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "SNAKEMAKE_LOGGER_"))}
    # The null plugin is found in every variant, used in one (a PYTHONPATH given goes after it).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    env["BENCH_SELF_CPU"] = str(directory / "self-cpu.txt")
    env["LINEAGE_SNAKEMAKE_COST_FILE"] = str(directory / "plugin-cost.json")
    if variant != "plain":
        command += ["--logger", variant]
    cpu_before, start = children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed ({variant}):\n" + result.stderr[-3000:])
    made = len(list((directory / "out").iterdir()))
    assert made == n, (made, n)
    cost: dict = {}
    if variant == "ledger":
        check_recorded(directory, n)
        reported = directory / "plugin-cost.json"  # absent with a plugin that does not report
        cost = json.loads(reported.read_text()) if reported.exists() else {"unreported": True}
    return elapsed, cpu, float((directory / "self-cpu.txt").read_text()), cost


ONE_RULE = """
rule all:
    input: "src.txt"
    output: "out.txt"
    shell: "tr a-z A-Z < {input} > {output}"
"""

#: variant -> the command (console scripts of this environment), in the workflow's directory
ONE_RULE_VARIANTS = {
    "plain": ["snakemake", "--cores", "1"],
    "--logger ledger": ["snakemake", "--cores", "1", "--logger", "ledger"],
    "snakemake-ledger": ["snakemake-ledger", "--cores", "1"],
}


def one_rule_workflow(directory: Path, recorded: bool) -> None:
    """The one-rule workflow in ``directory``; ``recorded``: after one ledger run there (its
    records name this directory's files), its output removed."""
    directory.mkdir(parents=True)
    (directory / "Snakefile").write_text(ONE_RULE)
    (directory / "src.txt").write_text("some text\n")
    if recorded:
        subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "1", "--logger", "ledger"],
                       cwd=directory, env=bench_env(), check=True, capture_output=True)
        (directory / "out.txt").unlink()


def bench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "SNAKEMAKE_LOGGER_"))}


def one_rule_run(directory: Path, variant: str, recorded: bool) -> tuple[float, float]:
    """Wall and process-tree CPU seconds of one run of ``variant`` (see one_rule_workflow)."""
    one_rule_workflow(directory, recorded)
    program, *args = ONE_RULE_VARIANTS[variant]
    command = [str(Path(sys.executable).parent / program), *args]
    cpu_before, start = children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=bench_env(), capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu_before
    if result.returncode != 0 or not (directory / "out.txt").exists():
        raise SystemExit(f"{variant} failed:\n" + result.stderr[-3000:])
    if variant != "plain":
        check_recorded(directory, int(recorded))  # and the earlier run's record
    return elapsed, cpu


def one_rule_costs(rounds: int, quick: bool) -> None:
    """The fixed cost of a run: see the module's docstring."""
    variants = list(ONE_RULE_VARIANTS)
    print(f"\none-rule workflow, {rounds} rounds, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="ll-bench-snakemake-one-") as tmp:
        for recorded in ((False,) if quick else (False, True)):
            label = "non-empty ledger" if recorded else "empty ledger"
            walls: dict[str, list[float]] = {v: [] for v in variants}
            cpus: dict[str, list[float]] = {v: [] for v in variants}
            for round_no in range(rounds):
                for variant in variants if round_no % 2 == 0 else variants[::-1]:
                    name = f"{label.replace(' ', '-')}-{round_no}-{variant.strip('-').replace(' ', '-')}"
                    wall, cpu = one_rule_run(Path(tmp) / name, variant, recorded)
                    walls[variant].append(wall)
                    cpus[variant].append(cpu)
            plain_wall, plain_cpu = statistics.median(walls["plain"]), statistics.median(cpus["plain"])
            for variant in variants:
                wall, cpu = statistics.median(walls[variant]), statistics.median(cpus[variant])
                print(f"{label}, {variant}: median wall {wall:.2f} s, CPU {cpu:.2f} s"
                      + ("" if variant == "plain" else
                         f" (CPU / plain {cpu / plain_cpu:.2f}x, {cpu - plain_cpu:+.2f} s; wall / plain "
                         f"{wall / plain_wall:.2f}x)"))
            print(f"  load {os.getloadavg()[0]:.1f}")


def check_recorded(directory: Path, n: int) -> None:
    from lineage_ledger import open_ledger

    ledger = open_ledger(str(directory / ".lineage" / "ledger.db"))
    try:
        summary = ledger.verify_chain()
    finally:
        ledger.close()
    assert summary.records == n + 1, (summary.records, n + 1)  # every job, and the all target


def main() -> None:
    args = parse_args(__doc__, "4 jobs, 1 round", quick_rounds=1)
    # --quick is the test suite's smoke run: 4 jobs on 2 cores still run two at a time, and the
    # three variants' six snakemake runs are most of its CPU whatever the jobs.
    n = 4 if args.quick else 200
    print(f"{n} shell jobs + all, snakemake --cores 2, {args.rounds} rounds, cpus: {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}")
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    selfs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    costs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ll-bench-snakemake-") as tmp:
        plugins = Path(tmp) / "plugins"
        plugins.mkdir()
        (plugins / "snakemake_logger_plugin_null").mkdir()  # Snakemake looks for packages
        (plugins / "snakemake_logger_plugin_null" / "__init__.py").write_text(NULL_PLUGIN)
        for round_no in range(args.rounds):
            order = VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                wall, cpu, own, cost = one_run(Path(tmp) / f"r{round_no}-{variant}", n, variant, plugins)
                if cost:
                    costs.append(cost)
                times[variant].append(wall)
                cpus[variant].append(cpu)
                selfs[variant].append(own)
            print(f"round {round_no}: " + ", ".join(
                f"{v} {times[v][-1]:.2f} s (cpu {cpus[v][-1]:.2f} s, snakemake {selfs[v][-1]:.2f} s)"
                for v in VARIANTS)
                + f", load {os.getloadavg()[0]:.1f}")
    wall = {v: statistics.median(times[v]) for v in VARIANTS}
    cpu = {v: statistics.median(cpus[v]) for v in VARIANTS}
    own = {v: statistics.median(selfs[v]) for v in VARIANTS}
    print("\nmedian wall time: " + ", ".join(f"{v} {wall[v]:.2f} s" for v in VARIANTS))
    print("median CPU time (snakemake + jobs): " + ", ".join(f"{v} {cpu[v]:.2f} s" for v in VARIANTS))
    print(f"CPU with ledger / plain = {cpu['ledger'] / cpu['plain']:.3f}x, "
          f"null plugin / plain = {cpu['null'] / cpu['plain']:.3f}x, "
          f"ledger / null plugin = {cpu['ledger'] / cpu['null']:.3f}x")
    print("median CPU time of the snakemake process alone: " + ", ".join(f"{v} {own[v]:.2f} s" for v in VARIANTS))
    print(f"plugin CPU per job in snakemake's process: ledger - plain {(own['ledger'] - own['plain']) / n * 1e3:+.2f} ms, "
          f"ledger - null plugin {(own['ledger'] - own['null']) / n * 1e3:+.2f} ms")
    costs = [c for c in costs if "listener_cpu" in c]
    if costs:
        in_snakemake = statistics.median((c["listener_cpu"] + c["main_thread_cpu"]) / (n + 1) for c in costs)
        listener = statistics.median(c["listener_cpu"] / (n + 1) for c in costs)
        sidecar = [c["recording_process_cpu"] for c in costs if c.get("recording_process_cpu") is not None]
        print(f"plugin's own code on snakemake's threads: {in_snakemake * 1e3:.3f} ms CPU per job "
              f"(emit on the listener thread {listener * 1e3:.3f} ms); recording process: "
              + (f"{statistics.median(sidecar):.2f} s CPU per run" if sidecar else "not used"))
    print(f"wall: null plugin / plain = {wall['null'] / wall['plain']:.3f}, "
          f"ledger / null plugin = {wall['ledger'] / wall['null']:.3f}")
    ratio = wall["ledger"] / wall["plain"]
    print(f"with / without = {ratio:.3f}   (goal <= 1.05; {(wall['ledger'] - wall['plain']) / n * 1e3:+.1f} ms per job)")
    print("GOAL MET" if ratio <= 1.05 else "GOAL MISSED")
    one_rule_costs(args.rounds, args.quick)


if __name__ == "__main__":
    main()
