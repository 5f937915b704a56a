"""The full audit (``verify-lineage``, no target) of a ledger whose recorded outputs are on disk.

``bench_scale.py``'s ledgers name paths that do not exist, so their audit checks no file. A
lab's ledger names its outputs, and most are still there: the audit then checks each one
and its lineage. This builds ledgers of N task records, each reading a shared reference and
the output of the task before it and writing one small file of its own (kept on disk, in
folders of 1,000), and times, as fresh processes, alternated:

* ``verify-lineage --ledger URL``: the audit, with every recorded output checked;
* the baseline ``lineage-ledger hash --rehash DATA``: reading and hashing the same files.

It prints medians, the ratio and each command's peak RSS at each size, and the medians of their
CPU time (user + system), which a busy machine inflates less than wall time. Goal (issue #14,
"peak memory bounded whatever the size"): the audit's peak RSS <= 512 MiB at the largest
size (before the outputs were kept on disk: 1,177 MiB at 150,000 outputs, 8 KB a file).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lineage_ledger import Record, hash_file, open_ledger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed_process as timed  # noqa: E402

BIN = Path(sys.executable).parent
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
GOAL_MIB = 512


def build(base: Path, n: int) -> str:
    data = base / "data"
    data.mkdir(parents=True)
    reference = data / "reference.fa"
    reference.write_text("ACGT" * 1000)
    ref = hash_file(str(reference))
    url = f"sqlite:///{base}/ledger.db"
    previous = ref
    batch = []
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        for i in range(n):
            folder = data / f"d{i // 1000:04d}"
            folder.mkdir(exist_ok=True)
            out = folder / f"sample-{i:07d}.out"
            out.write_text(f"result of task {i}\n")
            written = hash_file(str(out))
            inputs = {ref.path: ref.entry(), previous.path: previous.entry()}
            batch.append(Record(engine="bench", run_id=f"run-{i // 1000}", task_id=f"t{i}", task_name="step",
                                status="succeeded", started=T0 + timedelta(seconds=i),
                                ended=T0 + timedelta(seconds=i + 1), inputs=inputs,
                                outputs={written.path: written.entry()}).stored())
            previous = written if i % 4 != 3 else ref  # chains of four tasks
            if len(batch) == 5000:
                ledger.append_records(batch, block_size=1000)
                batch = []
        if batch:
            ledger.append_records(batch, block_size=1000)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated record counts")
    parser.add_argument("--rounds", "--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 and 1,500 records, 1 round, no warm-up")
    args = parser.parse_args()
    # --quick is the test suite's smoke run, whose figures nobody reads: two sizes (the growth
    # line still compares them) in two folders of outputs at the larger, and no warm-up runs.
    sizes = [500, 1500] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    root = Path(tempfile.mkdtemp(prefix="bench-audit-files-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    print(f"load average at start {os.getloadavg()[0]:.2f}; {rounds} round(s); cores {os.cpu_count()}")
    peaks: dict[int, float] = {}
    try:
        for n in sizes:
            base = root / f"n{n}"
            url = build(base, n)
            env["LINEAGE_STATE_DIR"] = str(base / "state")
            audit = [str(BIN / "verify-lineage"), "--ledger", url]
            rehash = [str(BIN / "lineage-ledger"), "hash", "--rehash", "--cache", str(base / "cache.db"),
                      str(base / "data")]
            if not args.quick:
                timed(audit, env)  # the first audit on this account; both compile their imports once
                timed(rehash, env)
            times: dict[str, list[float]] = {"audit": [], "rehash": []}
            rss: dict[str, list[float]] = {"audit": [], "rehash": []}
            cpu: dict[str, list[float]] = {"audit": [], "rehash": []}
            for i in range(rounds):
                for which in (("audit", "rehash") if i % 2 == 0 else ("rehash", "audit")):
                    elapsed, peak, seconds = timed(audit if which == "audit" else rehash, env)
                    times[which].append(elapsed)
                    rss[which].append(peak)
                    cpu[which].append(seconds)
            a, h = statistics.median(times["audit"]), statistics.median(times["rehash"])
            peaks[n] = max(rss["audit"])
            print(f"{n:>9,} records and outputs: verify-lineage {a:8.2f} s, {peaks[n]:6.0f} MiB peak | "
                  f"hash --rehash {h:7.2f} s, {max(rss['rehash']):5.0f} MiB | ratio {a / h:.2f}")
            ca, ch = statistics.median(cpu["audit"]), statistics.median(cpu["rehash"])
            print(f"{'':>9} CPU (user + system): verify-lineage {ca:8.2f} s | hash --rehash {ch:7.2f} s | "
                  f"ratio {ca / ch:.2f}")
            shutil.rmtree(base, ignore_errors=True)
        small, big = sizes[0], sizes[-1]
        print(f"peak RSS {small:,} -> {big:,}: {peaks[small]:.0f} -> {peaks[big]:.0f} MiB "
              f"({peaks[big] / peaks[small]:.2f}x for {big / small:.0f}x the outputs); "
              f"load average at end {os.getloadavg()[0]:.2f}")
        verdict = "GOAL MET" if peaks[big] <= GOAL_MIB else "GOAL MISSED"
        print(f"{verdict}: audit with {big:,} outputs on disk peaks at {peaks[big]:.0f} MiB (goal <= {GOAL_MIB})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
