"""The full audit of a scatter step's records (each naming K chunk files), appended at once.

A recorder ships what a workflow finished in one append. Blocks were cut by count alone
(1,000 records), so 600 records of 1,000 outputs each were one block of 78 MB, which the
audit holds whole: it peaked at 537 MiB over its process tree. Blocks are now also cut at
``chain.BLOCK_BYTES`` (2 MiB of bodies). This builds, with the Python API, a ledger of N
records of K outputs each in one ``append_records`` call, and as the baseline a ledger of N
task-shaped records (one output each), and times the audit (``verify-lineage --ledger URL``,
nothing remembered) of each as fresh processes, alternated, with two workers forced
(``LINEAGE_AUDIT_PARALLEL_MIN=0``). The peak is the largest sum of the resident sets of the
audit and its workers, sampled every 50 ms.

Goal (issue #14, "peak memory bounded whatever the size"): the wide audit's peak <= 512 MiB.

    python bench/bench_audit_wide.py --records 1000 --outputs 1000 --rounds 3
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

from blake3 import blake3

from lineage_ledger import Record, open_ledger

BIN = Path(sys.executable).parent
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
GOAL_MIB = 512
_PAGE = os.sysconf("SC_PAGE_SIZE")


def build(base: Path, n: int, k: int) -> str:
    url = f"sqlite:///{base}/ledger.db"
    records = []
    for i in range(n):
        outputs = {f"/nonexistent/scatter/s{i:06d}/chunk-{j:05d}.fa":
                   {"blake3": blake3(f"{i}-{j}".encode()).hexdigest(), "size": 1000} for j in range(k)}
        records.append(Record(engine="bench", run_id="scatter", task_id=f"t{i}", task_name="split",
                              status="succeeded", started=T0 + timedelta(seconds=i),
                              ended=T0 + timedelta(seconds=i + 1),
                              inputs={f"/nonexistent/scatter/s{i:06d}.fa": {"blake3": "0" * 64, "size": 5}},
                              outputs=outputs).stored())
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        ledger.append_records(records)  # one append, as a recorder ships a finished batch
    return url


def _tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and its children."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(entry) != root and int(fields[1]) != root:
                continue
            with open(f"/proc/{entry}/statm") as statm:
                total += int(statm.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and the peak summed RSS (MiB) of one fresh process tree, which must exit 0."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    error = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} exited {process.returncode}: {error}")
    return elapsed, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--outputs", type=int, default=1000, help="paths each wide record names")
    parser.add_argument("--rounds", "--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 records of 300 outputs, 1 round")
    args = parser.parse_args()
    n, k = (100, 300) if args.quick else (args.records, args.outputs)
    rounds = 1 if args.quick else args.rounds
    root = Path(tempfile.mkdtemp(prefix="bench-audit-wide-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPYCACHEPREFIX=str(root / "pycache"), LINEAGE_AUDIT_PARALLEL_MIN="0", LINEAGE_AUDIT_WORKERS="2")
    print(f"load average at start {os.getloadavg()[0]:.2f}; {rounds} round(s); cores {os.cpu_count()}")
    try:
        started = time.perf_counter()
        urls = {"wide": build(root / "wide", n, k), "narrow": build(root / "narrow", n, 1)}
        print(f"built {n:,} records of {k:,} outputs and {n:,} of one in {time.perf_counter() - started:.1f} s")
        times: dict[str, list[float]] = {"wide": [], "narrow": []}
        rss: dict[str, list[float]] = {"wide": [], "narrow": []}
        for i in range(rounds):
            for which in (("wide", "narrow") if i % 2 == 0 else ("narrow", "wide")):
                env["LINEAGE_STATE_DIR"] = tempfile.mkdtemp(dir=root)  # nothing remembered: a full audit
                elapsed, peak = timed([str(BIN / "verify-lineage"), "--ledger", urls[which]], env)
                times[which].append(elapsed)
                rss[which].append(peak)
        wide, narrow = max(rss["wide"]), max(rss["narrow"])
        print(f"audit of {n:,} records of {k:,} outputs: {statistics.median(times['wide']):.2f} s, {wide:.0f} MiB "
              f"peak | of {n:,} records of one output: {statistics.median(times['narrow']):.2f} s, {narrow:.0f} MiB "
              f"| peak ratio {wide / narrow:.2f}; load average at end {os.getloadavg()[0]:.2f}")
        verdict = "GOAL MET" if wide <= GOAL_MIB else "GOAL MISSED"
        print(f"{verdict}: the audit of {n * k:,} paths in one append peaks at {wide:.0f} MiB (goal <= {GOAL_MIB})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
