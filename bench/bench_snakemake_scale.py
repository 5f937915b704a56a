"""A 3-job Snakemake run with ``--logger-ledger-policy strict``: a 1M-record ledger against an empty one.

Each round runs the real ``snakemake --cores 1 --quiet all --logger ledger
--logger-ledger-policy strict`` on a fresh copy of a 3-rule workflow (``raw.txt -> a -> b ->
c``), once recording into an empty ledger (the baseline, a new one each round) and once into
the big ledger built by ``bench_scale.py`` (it grows by 3 records a round), alternating which
goes first. The time is the whole command, until Snakemake has exited and its records are
flushed: what a user waits. The big ledger's tree head was verified once before the rounds
(the state of a workstation after its first check; ``verify-lineage`` does that).

Goal (issue #14): median(big) / median(empty) <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scale import build

BIN = Path(sys.executable).parent
SNAKEFILE = """
rule all:
    input: "c.txt"

rule a:
    input: "raw.txt"
    output: "a.txt"
    shell: "tr a-z A-Z < {input} > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "sort {input} > {output}"

rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "head -n 2 {input} > {output}"
"""


def one_run(base: Path, url: str, env: dict) -> float:
    work = Path(tempfile.mkdtemp(dir=base, prefix="run-"))
    (work / "Snakefile").write_text(SNAKEFILE)
    (work / "raw.txt").write_text("pear\napple\nfig\n")
    command = [str(BIN / "snakemake"), "--cores", "1", "--quiet", "all", "--logger", "ledger",
               "--logger-ledger-url", url, "--logger-ledger-policy", "strict"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or not (work / "c.txt").exists():
        raise SystemExit(f"snakemake failed ({result.returncode}):\n{result.stderr[-3000:]}")
    shutil.rmtree(work)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", "--repeats", type=int, default=None, help="default 5, quick 2")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lineage-bench-scale"))
    parser.add_argument("--quick", action="store_true", help="a 2,000-record ledger, 2 rounds")
    args = parser.parse_args()
    # --repeats counts with --quick too, as in the other scripts (the test suite's smoke run
    # asks for 1 round: two snakemake runs, not four), on the 2,000-record ledger the other
    # smoke runs of bench_scale.py's cache use: a 10,000-record one took seconds to build on a
    # fresh machine, for figures nobody reads.
    size, rounds = (2000, args.rounds or 2) if args.quick else (args.size, args.rounds or 5)
    big_url, _ = build(Path(args.cache), size)
    base = Path(tempfile.mkdtemp(prefix="bench-snakemake-scale-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "SNAKEMAKE_LOGGER_"))}
    env["LINEAGE_STATE_DIR"] = str(base / "state")
    try:
        started = time.perf_counter()
        subprocess.run([str(BIN / "verify-lineage"), "--ledger", big_url], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"load average {os.getloadavg()[0]:.2f}; first verification of the {size:,}-record ledger: "
              f"{time.perf_counter() - started:.1f} s (once per account and ledger)")
        times: dict[str, list[float]] = {"empty": [], "big": []}
        for i in range(rounds):
            order = ("empty", "big") if i % 2 == 0 else ("big", "empty")
            for which in order:
                url = f"sqlite:///{base}/empty-{i}.db" if which == "empty" else big_url
                times[which].append(one_run(base, url, env))
        empty, big = statistics.median(times["empty"]), statistics.median(times["big"])
        print(f"empty ledger: median {empty:.3f} s  {[round(t, 3) for t in times['empty']]}")
        print(f"{size:,} records: median {big:.3f} s  {[round(t, 3) for t in times['big']]}")
        print(f"ratio {big / empty:.3f} (goal <= 1.2); load average at end {os.getloadavg()[0]:.2f}")
        print(f"{'GOAL MET' if big / empty <= 1.2 else 'GOAL MISSED'}: {size:,} records / empty = {big / empty:.3f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
