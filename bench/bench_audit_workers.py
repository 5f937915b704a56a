"""The full audit in worker processes against the same audit in one process.

Both are ``verify-lineage --ledger URL`` in a fresh process with nothing remembered (a full
audit each time), on the same ledger, alternated round by round so that the machine's load
falls on both alike; the baseline sets ``LINEAGE_AUDIT_WORKERS=1``. Prints the medians, the
ratio, records/s, the CPU time of the whole process tree and the load before and after.

    python bench/bench_audit_workers.py --size 1000000 --rounds 3

Ledgers come from ``bench_scale.py``'s cache (built there on first use).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import BIN, build  # noqa: E402

GOAL_RATE = 300_000


def run(url: str, cwd: Path, workers: str | None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of the process and its workers, peak RSS of any one (KiB)."""
    state = tempfile.mkdtemp(prefix="bench-audit-state-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = state
    if workers is not None:
        env["LINEAGE_AUDIT_WORKERS"] = workers
    try:
        started = time.perf_counter()
        process = subprocess.Popen([str(BIN / "verify-lineage"), "--ledger", url], env=env, cwd=cwd,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"verify-lineage failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", "--repeats", type=int, default=3)
    parser.add_argument("--workers", default=None, help="LINEAGE_AUDIT_WORKERS for ours (default: one per core, at most 5)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lineage-bench-scale"))
    parser.add_argument("--quick", action="store_true", help="a 2,000-record ledger, 1 round (smoke test)")
    args = parser.parse_args()
    size, rounds = (2000, 1) if args.quick else (args.size, args.rounds)
    url, directory = build(Path(args.cache), size)
    print(f"ledger of {size:,} records; cores {len(os.sched_getaffinity(0))}; "
          f"load average at start: {os.getloadavg()[0]:.2f}; {rounds} rounds, alternated", flush=True)
    env_workers = args.workers
    if args.quick:  # below the threshold the workers never start: lower it for the smoke test
        os.environ["LINEAGE_AUDIT_PARALLEL_MIN"] = "0"
        os.environ["LINEAGE_AUDIT_TASK_RECORDS"] = "500"
    one: list[tuple[float, float, int]] = []
    ours: list[tuple[float, float, int]] = []
    for _ in range(rounds):
        one.append(run(url, directory, "1"))
        ours.append(run(url, directory, env_workers))
        print(f"  one process {one[-1][0]:.2f} s, workers {ours[-1][0]:.2f} s", flush=True)
    base, mine = statistics.median(t for t, _, _ in one), statistics.median(t for t, _, _ in ours)
    print(f"one process: {base:.2f} s ({size / base:,.0f} records/s), CPU {statistics.median(c for _, c, _ in one):.1f} s, "
          f"peak RSS {max(p for _, _, p in one) / 1024:.0f} MiB")
    print(f"workers:     {mine:.2f} s ({size / mine:,.0f} records/s), CPU {statistics.median(c for _, c, _ in ours):.1f} s "
          f"(all processes), peak RSS of one process {max(p for _, _, p in ours) / 1024:.0f} MiB")
    print(f"ratio one process / workers: {base / mine:.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    verdict = "GOAL MET" if size / mine >= GOAL_RATE else "GOAL MISSED"
    print(f"{verdict}: audit at {size:,} records {size / mine:,.0f} records/s (goal >= {GOAL_RATE:,})")


if __name__ == "__main__":
    main()
