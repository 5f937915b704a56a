"""``lineage-ledger log -n 0`` (every task, each proved) against ``log`` (the last 20).

``log -n 0`` of a 100,000-record ledger held every record decoded (645 MiB, about 6 KB a
record: a million would not fit in 8 GB). It streams now (``Ledger.tail``), so its peak
should not grow with the ledger. This builds ledgers of N task records with the Python API,
verifies each once (so both commands start from a remembered tree head), and times, as
fresh processes, alternated:

* ``log -n 0 --json``: every task, proved and printed (to /dev/null);
* the baseline ``log``: the last 20 tasks, what a user runs most.

Prints medians, the ratio, each command's peak RSS and the output's records/s at each size.
Goal: ``log -n 0``'s peak RSS at the largest size <= 256 MiB.

    python bench/bench_log.py --sizes 10000,100000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import synthetic_record, timed_process  # noqa: E402

from lineage_ledger import open_ledger  # noqa: E402

BIN = Path(sys.executable).parent
GOAL_MIB = 256


def build(base: Path, n: int) -> str:
    url = f"sqlite:///{base}/ledger.db"
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        for start in range(0, n, 10_000):
            ledger.append_records([synthetic_record(i).stored() for i in range(start, min(n, start + 10_000))])
    return url


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh process, which must exit 0."""
    return timed_process(command, env)[:2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated record counts")
    parser.add_argument("--rounds", "--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 and 6,000 records, 1 round")
    args = parser.parse_args()
    sizes = [2000, 6000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    root = Path(tempfile.mkdtemp(prefix="bench-log-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    print(f"load average at start {os.getloadavg()[0]:.2f}; {rounds} round(s); cores {os.cpu_count()}")
    peaks: dict[int, float] = {}
    try:
        for n in sizes:
            base = root / f"n{n}"
            url = build(base, n)
            env["LINEAGE_STATE_DIR"] = str(base / "state")
            timed([str(BIN / "verify-lineage"), "--ledger", url], env)  # the tree head, remembered
            every = [str(BIN / "lineage-ledger"), "log", "--ledger", url, "-n", "0", "--json"]
            last = [str(BIN / "lineage-ledger"), "log", "--ledger", url]
            times: dict[str, list[float]] = {"all": [], "last": []}
            rss: dict[str, list[float]] = {"all": [], "last": []}
            for i in range(rounds):
                for which in (("all", "last") if i % 2 == 0 else ("last", "all")):
                    elapsed, peak = timed(every if which == "all" else last, env)
                    times[which].append(elapsed)
                    rss[which].append(peak)
            a, b = statistics.median(times["all"]), statistics.median(times["last"])
            peaks[n] = max(rss["all"])
            print(f"{n:>9,} records: log -n 0 {a:8.2f} s ({n / a:,.0f} records/s), {peaks[n]:5.0f} MiB peak | "
                  f"log {b:6.2f} s, {max(rss['last']):5.0f} MiB | ratio {a / b:.1f}")
            shutil.rmtree(base, ignore_errors=True)
        small, big = sizes[0], sizes[-1]
        print(f"peak RSS of log -n 0, {small:,} -> {big:,} records: {peaks[small]:.0f} -> {peaks[big]:.0f} MiB; "
              f"load average at end {os.getloadavg()[0]:.2f}")
        verdict = "GOAL MET" if peaks[big] <= GOAL_MIB else "GOAL MISSED"
        print(f"{verdict}: log -n 0 of {big:,} records peaks at {peaks[big]:.0f} MiB (goal <= {GOAL_MIB})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
