"""Checking a recorded 10,000-file directory: what a pre-run check and verification cost.

A tree of 10,000 small files (1,000 with --quick) in nested directories is recorded as one
directory output (its manifest record and a task record) in an SQLite ledger. Measured in
the same run, interleaved round by round (medians):

  rehash     hash_file(DIR): the manifest with every file read again (= `hash --rehash`)
  warm       the stat-cache hasher a capture or pre-run check uses: cache load + a stat per file
  pre-run    check_before_run(ledger, [DIR], "strict"): warm hash + the ledger look-up, proved
  verify     check_artifact(ledger, DIR): what `verify-lineage DIR` does (reads every byte)
  cli-rehash `lineage-ledger hash --rehash DIR` as a process (prints 10,000 lines)
  cli-verify `verify-lineage DIR` as a process (tree head, proofs, every byte, lineage)

Goal (issue #17): an unchanged large directory is cheap to check before a run: pre-run
<= 0.5x rehash. A missed goal is reported, never turned into a non-zero exit status.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

from _common import parse_args
from bench_statcache import make_tree

from lineage_ledger import Record, check_before_run, hash_file, open_ledger
from lineage_ledger._capture.files import entries_of, manifest_records_of
from lineage_ledger._files.hashing import cached_hasher
from lineage_ledger._verification.verify import ArtifactStatus, check_artifact

BIN = os.path.dirname(sys.executable)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args(__doc__, "1,000 files, 2 rounds", quick_rounds=2)
    count = 1_000 if args.quick else 10_000
    with tempfile.TemporaryDirectory(prefix="bench-dirs-") as scratch:
        os.environ["LINEAGE_STATE_DIR"] = os.path.join(scratch, "state")
        root = os.path.join(scratch, "qc")
        make_tree(root, count)
        url = os.path.join(scratch, "ledger.db")
        start = time.perf_counter()
        directory = hash_file(root)
        cold = time.perf_counter() - start
        now = datetime.now(timezone.utc)
        task = Record(engine="bench", run_id="r", task_id="qc", task_name="qc", status="succeeded",
                      started=now, ended=now, outputs=entries_of([directory]))
        with open_ledger(url) as ledger:
            ledger.append_records([r.stored() for r in [*manifest_records_of([directory]), task]])
        manifest_bytes = len(directory.manifest.encode())
        cached_hasher().hash(root)  # fills the stat cache, as the capture that recorded it did
        cached_hasher().cache.save()
        ledger = open_ledger(url, read_only=True)
        ledger.tree_head()
        env = {**os.environ, "LINEAGE_LEDGER_URL": url}

        def cli(*argv: str) -> None:
            subprocess.run([os.path.join(BIN, argv[0]), *argv[1:]], check=True, env=env,
                           stdout=subprocess.DEVNULL, cwd=scratch)

        variants = {
            "rehash": lambda: hash_file(root),
            "warm": lambda: cached_hasher().hash(root),
            "pre-run": lambda: check_before_run(ledger, [root], "strict"),
            "verify": lambda: check_artifact(ledger, root),
            "cli-rehash": lambda: cli("lineage-ledger", "hash", "--rehash", "--cache",
                                      os.path.join(scratch, "c.db"), root),
            "cli-verify": lambda: cli("verify-lineage", root),
        }
        assert check_artifact(ledger, root).status is ArtifactStatus.OK
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                times[name].append(timed(variants[name]))
        ledger.close()
    print(f"{count} files, manifest {manifest_bytes / 1e6:.2f} MB, first hash {cold:.3f} s, "
          f"{args.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    base = statistics.median(times["rehash"])
    print(f"{'variant':<12}{'median s':>10}{'files/s':>12}{'x rehash':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<12}{median:>10.4f}{count / median:>12,.0f}{median / base:>10.2f}")
    ratio = statistics.median(times["pre-run"]) / base
    print(f"GOAL {'MET' if ratio <= 0.5 else 'MISSED'}: pre-run <= 0.5x rehash ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
