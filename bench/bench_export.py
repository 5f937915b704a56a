"""``lineage-ledger export --run`` of one big run: time and peak RSS at two sizes.

A Snakemake scatter of N tasks is one run of N records: the exports of that run must hold a
bounded amount of memory, whatever N. Each size's ledger holds that one run only (task-shaped
records as ``bench_scale.py``'s, about 1 KB each, appended 5,000 at a time), built once in
``--cache``. Every export format that streams (PROV-JSON, OpenLineage, the RO-Crate directory
with its record files and proofs, the files themselves absent) and ``graph -f dot`` (every
task and file version, each path checked on disk) runs as a fresh process,
alternated with the baseline, ``lineage-ledger log --run RUN -n 0`` (which reads and prints
every record of the same run), each round; peak RSS is the process's maximum resident set
(``getrusage`` of the child), CPU its user and system time.

Goal: each streamed export's peak RSS <= 200 MiB at every size (a held run was 650 MB at
10,000 records, the RO-Crate 616 MB). The growth from the smallest size to the largest is
printed: below 10,000 records the ledger's own cache of decoded records (10,000 of them) is
still filling.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from blake3 import blake3

from lineage_ledger import Record, open_ledger

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
BIN = Path(sys.executable).parent
RUN = "scatter"
GOAL_MIB = 200
STREAMED = ("export prov-json", "export openlineage", "export ro-crate", "graph dot")


def _digest(text: str) -> str:
    return blake3(text.encode()).hexdigest()


def _task(i: int) -> Record:
    """A task of a four-step chain per sample, reading a shared reference (as bench_scale)."""
    sample, step = divmod(i, 4)
    base = f"/nonexistent/bench/s{sample:07d}"
    inputs = {"/nonexistent/bench/ref.fa": {"blake3": _digest("ref"), "size": 4000},
              f"{base}/step{step - 1}.out" if step else f"{base}/reads.fq": {"blake3": _digest(f"{i}-prev"),
                                                                            "size": 100}}
    for extra in range(i % 3):
        inputs[f"{base}/aux{extra}.txt"] = {"blake3": _digest(f"{i}-aux{extra}"), "size": 10}
    outputs = {f"{base}/step{step}.out": {"blake3": _digest(f"{i + 1}-prev"), "size": 100}}
    for extra in range(i % 3):
        outputs[f"{base}/step{step}.log{extra}"] = {"blake3": _digest(f"{i}-log{extra}"), "size": 10}
    return Record(engine="bench", run_id=RUN, task_id=f"t{i}", task_name=f"step{step}",
                  status="succeeded", started=T0 + timedelta(seconds=i), ended=T0 + timedelta(seconds=i + 1),
                  inputs=inputs, outputs=outputs, parameters={"threads": 4, "reference": "GRCh38"},
                  environment={"host": "bench", "user": "bench", "python": "3.11"})


def build(cache: Path, size: int) -> str:
    """A SQLite ledger holding one run of ``size`` task records (built once)."""
    directory = cache / f"run-{size}"
    url = f"sqlite:///{directory}/ledger.db"
    if (directory / "done").exists():
        return url
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    with open_ledger(url, spool=str(directory / "spool"), state_dir=str(directory / "unused-state")) as ledger:
        for start in range(0, size, 5000):
            ledger.append_records([_task(i).stored() for i in range(start, min(size, start + 5000))],
                                  block_size=1000)
    (directory / "done").write_text(f"{time.perf_counter() - started:.1f} s to build\n")
    return url


def _run(command: list[str], env: dict) -> tuple[float, float, float]:
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: no output, then the command
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execve(command[0], command, env)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed (wait status {status})")
    return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 2,000 and 10,000 (a minute or two)")
    parser.add_argument("--sizes", default=None, help="comma-separated run sizes (default 10000,100000)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per size (default 2, quick 1)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lineage-bench-export"),
                        help="where the ledgers are built once and kept")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("2000,10000" if args.quick else "10000,100000")).split(",")]
    repeats = args.repeats or (1 if args.quick else 2)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}; sizes {sizes}, {repeats} round(s)")
    cache = Path(args.cache)
    cli = str(BIN / "lineage-ledger")
    peaks: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, XDG_STATE_HOME=os.path.join(scratch, "state"))
        for size in sizes:
            url = build(cache, size)
            variants = {
                "log --run (baseline)": [cli, "log", "--ledger", url, "--run", RUN, "-n", "0"],
                "export prov-json": [cli, "export", "--ledger", url, "--run", RUN, "-f", "prov-json",
                                     "-o", os.path.join(scratch, "out.prov.json")],
                "export openlineage": [cli, "export", "--ledger", url, "--run", RUN, "-f", "openlineage",
                                       "-o", os.path.join(scratch, "out.jsonl")],
                "export ro-crate": [cli, "export", "--ledger", url, "--run", RUN, "-f", "ro-crate",
                                    "-o", os.path.join(scratch, "crate")],
                # Most of its time is each path's check against the disk (Ledger.last_seen).
                "graph dot": [cli, "graph", "--ledger", url, "--run", RUN, "-f", "dot",
                              "-o", os.path.join(scratch, "out.dot")],
            }
            _run(variants["log --run (baseline)"], env)  # the first verification of this ledger
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
            for _ in range(repeats):  # alternated: machine noise hits every variant alike
                for name, command in variants.items():
                    results[name].append(_run(command, env))
                    for leftover in ("out.prov.json", "out.jsonl", "out.dot"):
                        if os.path.exists(os.path.join(scratch, leftover)):
                            os.unlink(os.path.join(scratch, leftover))
                    shutil.rmtree(os.path.join(scratch, "crate"), ignore_errors=True)  # it needs a new directory
            base = statistics.median(t for t, _, _ in results["log --run (baseline)"])
            for name, runs in results.items():
                seconds = statistics.median(t for t, _, _ in runs)
                cpu = statistics.median(c for _, _, c in runs)
                peak = max(m for _, m, _ in runs)
                peaks[(name, size)] = peak
                print(f"{size:>9,} records  {name:<22} {seconds:7.2f} s ({seconds / base:4.2f}x log, "
                      f"CPU {cpu:6.2f} s)  peak RSS {peak:7.1f} MiB")
    small, large = min(sizes), max(sizes)
    met = True
    for name in STREAMED:
        top = max(peaks[(name, size)] for size in sizes)
        ok = top <= GOAL_MIB
        met &= ok
        print(f"{name}: {peaks[(name, large)]:.1f} MiB at {large:,} records, {peaks[(name, small)]:.1f} at "
              f"{small:,} ({peaks[(name, large)] / peaks[(name, small)]:.2f}x); goal <= {GOAL_MIB} MiB: "
              f"{'met' if ok else 'missed'}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print("GOAL MET" if met else "GOAL MISSED")


if __name__ == "__main__":
    main()
