"""What the Snakemake plugin's pre-run check (``--logger-ledger-policy``) costs.

The check runs on Snakemake's main thread between building the DAG and scheduling, on
Snakemake's own DAG (no second DAG build). It opens the ledger and hashes every existing
file the run will consume or keep. Its worst case relative to the work done is a run with
nothing to do: a finished 200-job workflow (``echo {i} > out/{i}.txt`` plus ``all``) run
again, where all 200 outputs are checked and nothing runs.

Each round runs ``snakemake --cores 2 --quiet all --logger ledger`` on that workflow with
``--logger-ledger-policy off`` and ``warn`` (alternating order) and reports the wall time
of the whole command and the check's CPU time as the plugin measures it
(``time.thread_time()`` around the check, written to ``LINEAGE_SNAKEMAKE_COST_FILE``).
A first run with ``warn`` on a fresh workflow shows the other end: nothing exists yet, so
the ledger is not opened at all.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args
from bench_snakemake import SNAKEFILE

POLICIES = ("off", "warn")


def run(directory: Path, policy: str) -> tuple[float, float]:
    """Wall seconds of the command and CPU seconds of the check."""
    cost_file = directory / "cost.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "SNAKEMAKE_LOGGER_"))}
    env["LINEAGE_SNAKEMAKE_COST_FILE"] = str(cost_file)
    command = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--quiet", "all",
               "--logger", "ledger", "--logger-ledger-policy", policy]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed (policy {policy}):\n" + result.stderr[-3000:])
    cost = json.loads(cost_file.read_text())
    return elapsed, float(cost["policy_cpu"])


def main() -> None:
    args = parse_args(__doc__, "4 jobs, 1 round", quick_rounds=1)
    n = 4 if args.quick else 200  # --quick: the test suite's smoke run, whose figures nobody reads
    print(f"pre-run check: finished workflow of {n} jobs run again, {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="ll-bench-snakemake-check-") as tmp:
        directory = Path(tmp)
        (directory / "Snakefile").write_text(SNAKEFILE.format(n=n))
        first_wall, first_check = run(directory, "warn")
        print(f"first run ({n} jobs run, no file to check yet): {first_wall:.2f} s, "
              f"check {first_check * 1e3:.1f} ms CPU")
        walls: dict[str, list[float]] = {p: [] for p in POLICIES}
        checks: list[float] = []
        for round_no in range(args.rounds):
            for policy in POLICIES if round_no % 2 == 0 else POLICIES[::-1]:
                wall, check = run(directory, policy)
                walls[policy].append(wall)
                if policy == "warn":
                    checks.append(check)
            print(f"round {round_no}: " + ", ".join(f"{p} {walls[p][-1]:.2f} s" for p in POLICIES)
                  + f", check {checks[-1] * 1e3:.0f} ms CPU, load {os.getloadavg()[0]:.1f}")
    wall = {p: statistics.median(walls[p]) for p in POLICIES}
    check = statistics.median(checks)
    print(f"\nmedian wall time of a run with nothing to do: policy off {wall['off']:.2f} s, "
          f"warn {wall['warn']:.2f} s ({wall['warn'] - wall['off']:+.2f} s)")
    print(f"median CPU of the check: {check * 1e3:.0f} ms for {n} files "
          f"({check / n * 1e3:.2f} ms a file, the ledger's opening included)")
    print("NO GOAL: issue #3 sets no target for the check; this measures what it costs")


if __name__ == "__main__":
    main()
