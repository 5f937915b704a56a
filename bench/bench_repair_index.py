"""`lineage-ledger repair-index` on damaged ledgers of 100k and 1M records, against the full audit.

What a user runs after ``verify-lineage`` reported index rows deleted or edited: the CLI in a
fresh process (imports included), which verifies every record, derives the index again,
writes what differs, deletes the rows no verified block places, then runs the full audit.
The baseline is that full audit alone (``verify-lineage --ledger URL``, worker processes
from 200,000 records as users get them), on the same ledger in the same run, alternated
round by round; the ratio is repair / audit.

Before each repair the copy is damaged the same way: the artifact rows of 1,000 consecutive
records in the middle deleted, the run id of 1,000 others edited, and 10 record rows planted
past the chain (what a hand edit or a restore gone wrong leaves). A repair that reports
anything else fails the script. Peak RSS is sampled every 20 ms over the process and its
workers (VmHWM): the largest single process's and the largest simultaneous total.

    python bench/bench_repair_index.py                      # 100k and 1M, 3 rounds
    python bench/bench_repair_index.py --quick --repeats 1  # 2,000 records (smoke test)

Ledgers come from ``bench_scale.py``'s cache (built there on first use, minutes at 1M); each
is copied to a temporary directory first, so the cache is never written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit_workers import _children, _proc  # noqa: E402
from bench_scale import BIN, build  # noqa: E402

GOAL_RSS_MIB = 512  # the full audit's bound (issue #14): a repair reads the same records
DAMAGED = 1000  # records whose artifact rows are deleted, and as many whose run id is edited
PLANTED = 10  # record rows planted past the chain


def sampled(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, int, str]:
    """(wall seconds, largest single-process peak KiB, largest simultaneous total KiB,
    stderr) of one fresh process and its workers; exits on a non-zero status."""
    peaks: dict[int, int] = {}
    total = 0
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            now = 0
            for member in (process.pid, *_children(process.pid)):
                sample = _proc(member)
                if sample is not None:
                    peaks[member] = sample[1]
                    now += sample[0]
            total = max(total, now)
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        errors.seek(0)
        text = errors.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{text[-2000:]}")
    # ru_maxrss: the largest of the process and its waited-for workers, past the last sample.
    return elapsed, max(usage.ru_maxrss, *peaks.values(), 0), max(total, usage.ru_maxrss), text


def damage(db: Path, size: int) -> int:
    """The same damage before every repair (see the module docstring); returns the number
    of records in the chain (a cached ledger may hold a few more than ``size``)."""
    middle = size // 2
    with sqlite3.connect(db) as conn:
        records = conn.execute("SELECT coalesce(sum(count), 0) FROM ll_blocks").fetchone()[0]
        conn.execute("DELETE FROM ll_artifacts WHERE seq >= ? AND seq < ?", (middle, middle + DAMAGED))
        conn.execute("UPDATE ll_records SET run_id = 'edited' WHERE seq >= ? AND seq < ?",
                     (middle - DAMAGED, middle))
        body = conn.execute("SELECT body FROM ll_records WHERE seq = 0").fetchone()[0]
        top = conn.execute("SELECT max(seq) FROM ll_records").fetchone()[0]
        conn.executemany("INSERT INTO ll_records (seq, id, height, pos, run_id, body) VALUES (?, ?, 0, 0, 'x', ?)",
                         [(top + 1 + i, f"{i:064x}", body) for i in range(PLANTED)])
    conn.close()
    return int(records)


def copy_ledger(directory: Path, into: Path) -> Path:
    """The cached ledger (and its -wal, if any) copied, so that the cache is never written."""
    into.mkdir(parents=True)
    for name in ("ledger.db", "ledger.db-wal"):
        if (directory / name).exists():
            shutil.copyfile(directory / name, into / name)
    return into / "ledger.db"


def measure(size: int, directory: Path, rounds: int, work: Path) -> dict[str, list[tuple[float, int, int]]]:
    db = copy_ledger(directory, work / f"ledger-{size}")
    url = f"sqlite:///{db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = env["XDG_STATE_HOME"] = str(work / f"state-{size}")
    results: dict[str, list[tuple[float, int, int]]] = {"repair-index": [], "audit": []}
    for round_ in range(rounds):
        records = damage(db, size)
        wall, peak, total, text = sampled([str(BIN / "lineage-ledger"), "repair-index", "--ledger", url], env, work)
        expected = (f"{DAMAGED} record rows corrected", f"removed {PLANTED} record rows", f"verified: {records} records")
        if not all(e in text for e in expected):
            raise SystemExit(f"repair-index reported something else:\n{text}")
        results["repair-index"].append((wall, peak, total))
        results["audit"].append(sampled([str(BIN / "verify-lineage"), "--ledger", url], env, work)[:3])
        print(f"  {size:,} records, round {round_ + 1}: repair-index {wall:.2f} s ({peak / 1024:.0f} MiB), "
              f"audit {results['audit'][-1][0]:.2f} s; load {os.getloadavg()[0]:.2f}", flush=True)
    shutil.rmtree(db.parent, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--rounds", "--repeats", type=int, default=None, help="rounds per size (median); default 3")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lineage-bench-scale"))
    parser.add_argument("--quick", action="store_true", help="2,000 records (smoke test)")
    args = parser.parse_args()
    # One size with --quick (the test suite's smoke run): a second one ran the same repair and
    # audit again, on a 10,000-record ledger no other smoke run needs.
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {rounds} rounds, medians", flush=True)
    table = {}
    work = Path(tempfile.mkdtemp(prefix="bench-repair-"))
    try:
        for size in sizes:
            _, directory = build(Path(args.cache), size)
            table[size] = measure(size, directory, rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'records':>12} {'repair-index':>13} {'peak MiB':>9} {'total MiB':>10} {'audit':>9} "
          f"{'audit MiB':>10} {'ratio':>6}")
    for size, runs in table.items():
        repair, audit = runs["repair-index"], runs["audit"]
        wall, base = statistics.median(r[0] for r in repair), statistics.median(r[0] for r in audit)
        print(f"{size:>12,} {wall:>12.2f}s {max(r[1] for r in repair) / 1024:>9.0f} "
              f"{max(r[2] for r in repair) / 1024:>10.0f} {base:>8.2f}s {max(r[1] for r in audit) / 1024:>10.0f} "
              f"{wall / base:>5.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    small, big = sizes[0], sizes[-1]
    # Judged on the simultaneous total (the process and its audit workers together), the
    # larger of the two figures.
    peak = max(r[2] for r in table[big]["repair-index"]) / 1024
    single = max(r[1] for r in table[big]["repair-index"]) / 1024
    growth = single / (max(r[1] for r in table[small]["repair-index"]) / 1024)
    verdict = "GOAL MET" if peak <= GOAL_RSS_MIB else "GOAL MISSED"
    print(f"{verdict}: repair-index at {big:,} records peak RSS {peak:.0f} MiB with its audit workers "
          f"({single:.0f} MiB the largest process, {growth:.2f}x the {small:,} figure; goal: <= {GOAL_RSS_MIB} MiB, "
          "the full audit's bound)")
    ratio = statistics.median(r[0] for r in table[big]["repair-index"]) / statistics.median(
        r[0] for r in table[big]["audit"])
    print(f"NO GOAL: repair-index at {big:,} records takes {ratio:.2f}x the full audit alone (which it includes)")


if __name__ == "__main__":
    main()
