"""The full audit in worker processes against the same audit in one process.

All are ``verify-lineage --ledger URL`` in a fresh process with nothing remembered (a full
audit each time), on the same ledger, alternated round by round so that the machine's load
falls on all alike; the baseline sets ``LINEAGE_AUDIT_WORKERS=1`` (one process: the workers'
bulk check, range by range, since the sixth stop), the sequential record-by-record audit
(``LINEAGE_AUDIT_WORKERS=1 LINEAGE_AUDIT_BULK=0``, what one process ran before) runs too, as
do the workers' previous,
row-by-row check (``LINEAGE_AUDIT_BULK=0``) runs too, and the workers keeping no names beside
the tree (``LINEAGE_AUDIT_NAMES=0``: what those cost). Prints the medians, the ratios,
records/s, the CPU time of the whole process tree (and how much of it the workers used), the
peak resident set of the parent and of each worker (VmHWM, sampled every 20 ms) and their
sum, and the load; and once with the most workers the audit starts (ten, what a machine of
ten cores or more gets), for its memory.

    python bench/bench_audit_workers.py --size 1000000 --rounds 3

``--before DIR`` also runs the code laid out in ``DIR`` (``DIR/lineage_ledger``: ``git archive
REV core ledger_backends``, as ``lineage_ledger`` and ``lineage_ledger/backends``) with the same
workers, through ``PYTHONPATH``, in the same rounds, and prints the ratio; ``--runs`` picks
which of the runs go (``--runs ours,before --no-most``: the comparison alone).

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
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import BIN, build  # noqa: E402

from lineage_ledger._log.audit_parallel import MAX_WORKERS  # noqa: E402

GOAL_RATE = 300_000
GOAL_RSS_MIB = 512
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # seconds, the process and its workers
    parent_peak: int  # KiB: the verify-lineage process's peak resident set (VmHWM)
    worker_peaks: list[int] = field(default_factory=list)  # KiB, each worker's VmHWM
    worker_cpu: float = 0.0  # seconds, the workers together (as last sampled)
    total_peak: int = 0  # KiB: the largest sum of resident sets seen at one sample

    @property
    def peaks_sum(self) -> int:
        """The parent's peak plus every worker's: an upper bound of the audit's memory."""
        return self.parent_peak + sum(self.worker_peaks)


def _proc(pid: int) -> tuple[int, int, float] | None:
    """(VmRSS KiB, VmHWM KiB, CPU seconds) of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        with open(f"/proc/{pid}/stat") as stat:
            ticks = stat.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    try:
        return (int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0]),
                (int(ticks[11]) + int(ticks[12])) / _TICKS)
    except (KeyError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(c) for c in children.read().split()]
    except OSError:
        return []


def run(url: str, cwd: Path, workers: str | None, extra: dict[str, str], code: str | None = None) -> Run:
    """One ``verify-lineage`` in a fresh process, sampled every 20 ms for the resident set
    and CPU of it and its workers (a worker's VmHWM is its own peak, so sampling misses
    nothing of the peaks; the simultaneous total is as sampled)."""
    state = tempfile.mkdtemp(prefix="bench-audit-state-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = state
    env.update(extra)
    if code is not None:  # another copy of the package, ahead of the installed one (workers inherit it)
        env["PYTHONPATH"] = code
    if workers is not None:
        env["LINEAGE_AUDIT_WORKERS"] = workers
    seen: dict[int, tuple[int, int, float]] = {}
    total_peak = 0
    try:
        started = time.perf_counter()
        process = subprocess.Popen([str(BIN / "verify-lineage"), "--ledger", url], env=env, cwd=cwd,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            now = 0
            for member in (process.pid, *_children(process.pid)):
                sample = _proc(member)
                if sample is not None:
                    seen[member] = sample
                    now += sample[0]
            total_peak = max(total_peak, now)
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"verify-lineage failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        workers_seen = [sample for member, sample in seen.items() if member != process.pid]
        worker_peaks = [hwm for _, hwm, _ in workers_seen]
        # ru_maxrss is the largest of the process and its workers: the parent's own peak
        # where it exceeds every worker's; else the parent's last sampled VmHWM.
        parent = seen.get(process.pid, (0, 0, 0.0))[1]
        if usage.ru_maxrss > max(worker_peaks, default=0):
            parent = usage.ru_maxrss
        return Run(elapsed, usage.ru_utime + usage.ru_stime, parent, worker_peaks,
                   sum(cpu for _, _, cpu in workers_seen), total_peak)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", "--repeats", type=int, default=3)
    parser.add_argument("--workers", default=None, help="LINEAGE_AUDIT_WORKERS for ours (default: one per core, at most 10)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lineage-bench-scale"))
    parser.add_argument("--quick", action="store_true", help="a 2,000-record ledger, 1 round (smoke test)")
    parser.add_argument("--before", default=None, help="a folder holding lineage_ledger as it was, run in turn with ours")
    parser.add_argument("--runs", default="one,sequential,rows,bare,ours",
                        help="which runs go each round: one,sequential,rows,bare,ours (and before, with --before)")
    parser.add_argument("--no-most", action="store_true", help="skip the run with the most workers")
    args = parser.parse_args()
    runs = set(args.runs.split(",")) | ({"before", "ours"} if args.before else {"ours"})
    size, rounds = (2000, 1) if args.quick else (args.size, args.rounds)
    url, directory = build(Path(args.cache), size)
    print(f"ledger of {size:,} records; cores {len(os.sched_getaffinity(0))}; "
          f"load average at start: {os.getloadavg()[0]:.2f}; {rounds} rounds, alternated", flush=True)
    env_workers = args.workers
    extra: dict[str, str] = {}
    if args.quick:  # below the threshold the workers never start: lower it for the smoke test
        extra = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "500"}
    one: list[Run] = []
    sequential: list[Run] = []
    rows: list[Run] = []
    bare: list[Run] = []
    ours: list[Run] = []
    before: list[Run] = []
    for _ in range(rounds):
        said = []
        if "before" in runs:
            before.append(run(url, directory, env_workers, extra, code=args.before))
            said.append(f"before {before[-1].wall:.2f} s (CPU {before[-1].cpu:.1f} s)")
        if "one" in runs:
            one.append(run(url, directory, "1", extra))
            said.append(f"one process {one[-1].wall:.2f} s (CPU {one[-1].cpu:.1f} s)")
        if "sequential" in runs:
            sequential.append(run(url, directory, "1", {**extra, "LINEAGE_AUDIT_BULK": "0"}))
            said.append(f"one process record by record {sequential[-1].wall:.2f} s (CPU {sequential[-1].cpu:.1f} s)")
        if "rows" in runs:
            rows.append(run(url, directory, env_workers, {**extra, "LINEAGE_AUDIT_BULK": "0"}))
            said.append(f"workers row by row {rows[-1].wall:.2f} s (CPU {rows[-1].cpu:.1f} s)")
        if "bare" in runs:
            bare.append(run(url, directory, env_workers, {**extra, "LINEAGE_AUDIT_NAMES": "0"}))
            said.append(f"workers without names {bare[-1].wall:.2f} s (CPU {bare[-1].cpu:.1f} s)")
        ours.append(run(url, directory, env_workers, extra))
        said.append(f"workers {ours[-1].wall:.2f} s (CPU {ours[-1].cpu:.1f} s)")
        print(f"  {', '.join(said)}; load {os.getloadavg()[0]:.2f}", flush=True)
    mine = statistics.median(r.wall for r in ours)
    cpu = statistics.median(r.cpu for r in ours)
    if before:
        then, then_cpu = statistics.median(r.wall for r in before), statistics.median(r.cpu for r in before)
        print(f"before ({args.before}): {then:.2f} s ({size / then:,.0f} records/s), CPU {then_cpu:.1f} s "
              f"({then_cpu * 1e6 / size:.1f} us a record); ours {mine:.2f} s ({size / mine:,.0f} records/s), CPU "
              f"{cpu:.1f} s ({cpu * 1e6 / size:.1f} us a record); ours / before: {mine / then:.3f} wall, "
              f"{cpu / then_cpu:.3f} CPU (medians of {rounds} rounds in turn)")
    if one:
        base = statistics.median(r.wall for r in one)
        print(f"one process: {base:.2f} s ({size / base:,.0f} records/s), CPU {statistics.median(r.cpu for r in one):.1f} s, "
              f"peak RSS {max(r.parent_peak for r in one) / 1024:.0f} MiB; ratio one process / workers: {base / mine:.2f}x")
    if sequential:
        seq_wall = statistics.median(r.wall for r in sequential)
        print(f"one process, record by record (LINEAGE_AUDIT_BULK=0, what one process ran before): {seq_wall:.2f} s "
              f"({size / seq_wall:,.0f} records/s), CPU {statistics.median(r.cpu for r in sequential):.1f} s, "
              f"peak RSS {max(r.parent_peak for r in sequential) / 1024:.0f} MiB")
    if rows:
        then, then_cpu = statistics.median(r.wall for r in rows), statistics.median(r.cpu for r in rows)
        print(f"workers, row by row (LINEAGE_AUDIT_BULK=0, the previous workers): {then:.2f} s "
              f"({size / then:,.0f} records/s), CPU {then_cpu:.1f} s in all ({then_cpu * 1e6 / size:.1f} us a record); "
              f"workers row by row / workers: {then / mine:.2f}x wall, {then_cpu / cpu:.2f}x CPU")
    if bare:
        bare_wall, bare_cpu = statistics.median(r.wall for r in bare), statistics.median(r.cpu for r in bare)
        print(f"workers keeping no names (LINEAGE_AUDIT_NAMES=0): {bare_wall:.2f} s ({size / bare_wall:,.0f} records/s), "
              f"CPU {bare_cpu:.1f} s in all ({bare_cpu * 1e6 / size:.1f} us a record); workers / workers without names: "
              f"{mine / bare_wall:.2f}x wall, {cpu / bare_cpu:.2f}x CPU ({(cpu - bare_cpu) * 1e6 / size:.1f} us a record "
              "for the names)")
    worker_cpu = statistics.median(r.worker_cpu for r in ours)
    print(f"workers:     {mine:.2f} s ({size / mine:,.0f} records/s), CPU {cpu:.1f} s in all "
          f"({cpu * 1e6 / size:.1f} us a record; workers {worker_cpu:.1f} s as sampled, the parent the rest), "
          f"{statistics.median(len(r.worker_peaks) for r in ours):.0f} workers")
    worst = max(ours, key=lambda r: r.peaks_sum)
    print(f"  peak RSS: parent {worst.parent_peak / 1024:.0f} MiB, workers "
          f"{' + '.join(f'{p / 1024:.0f}' for p in worst.worker_peaks)} MiB; sum of the peaks "
          f"{worst.peaks_sum / 1024:.0f} MiB; largest simultaneous total sampled "
          f"{max(r.total_peak for r in ours) / 1024:.0f} MiB (goal <= {GOAL_RSS_MIB} MiB)")
    print(f"  CPU-bound rate: {size / (cpu / len(os.sched_getaffinity(0))):,.0f} records/s "
          f"(records / (CPU seconds / cores): what these cores would do with nothing else running and the work split evenly)")
    if not args.no_most:
        _most(url, directory, extra, size)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    verdict = "GOAL MET" if size / mine >= GOAL_RATE and worst.peaks_sum <= GOAL_RSS_MIB * 1024 else "GOAL MISSED"
    print(f"{verdict}: audit at {size:,} records {size / mine:,.0f} records/s (goal >= {GOAL_RATE:,}), "
          f"peak RSS {worst.peaks_sum / 1024:.0f} MiB summed over processes (goal <= {GOAL_RSS_MIB} MiB)")


def _most(url: str, directory: Path, extra: dict[str, str], size: int) -> None:
    """Once with the most workers the audit starts, for its memory."""
    most = run(url, directory, str(MAX_WORKERS), extra)  # what a machine of MAX_WORKERS or more cores starts
    print(f"the most workers the audit starts ({MAX_WORKERS}, on a machine of {MAX_WORKERS} cores or more), run once "
          f"here: {most.wall:.2f} s on {len(os.sched_getaffinity(0))} cores, CPU {most.cpu:.1f} s; peak RSS: parent "
          f"{most.parent_peak / 1024:.0f} MiB, workers {' + '.join(f'{p / 1024:.0f}' for p in most.worker_peaks)} MiB; "
          f"sum of the peaks {most.peaks_sum / 1024:.0f} MiB, largest simultaneous total "
          f"{most.total_peak / 1024:.0f} MiB (goal <= {GOAL_RSS_MIB} MiB); its CPU spread over {MAX_WORKERS} cores "
          f"would be {size / (most.cpu / MAX_WORKERS):,.0f} records/s (an estimate, not a measurement)")


if __name__ == "__main__":
    main()
