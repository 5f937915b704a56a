"""Chain verification throughput on a SQLite ledger.

A ledger is filled with 200,000 records (5,000 with --quick) in blocks of 1,000 (not
timed). Then, interleaved round by round:
  (a) end-to-end   ledger.verify_chain(): read every block from SQLite and verify it
  (b) core         lineage_ledger.verify_chain(blocks) on blocks already in memory
  raw read+hash    stdlib sqlite3 "SELECT body FROM ll_records ORDER BY seq" and
                   blake3 of each body: a lower bound for any verification that reads
                   the records from SQLite and rehashes them (it checks no links or roots)
  raw read         the same SELECT without hashing (information)

Goal (issue #2): >= 500,000 records/s. Judged on (a); (b) is reported against the same
number.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time

from _common import parse_args, synthetic_record
from blake3 import blake3

import lineage_ledger

BLOCK = 1000
FILL_CHUNK = 20_000  # records per append_records call while filling


def raw_read(db_path: str, hash_bodies: bool) -> int:
    db = sqlite3.connect(db_path)
    n = 0
    try:
        rows = db.execute("SELECT body FROM ll_records ORDER BY seq")
        if hash_bodies:
            for (body,) in rows:
                blake3(body).hexdigest()
                n += 1
        else:
            for _ in rows:
                n += 1
    finally:
        db.close()
    return n


def main() -> None:
    args = parse_args(__doc__, "5,000 records, 2 rounds", quick_rounds=2)
    n = 5_000 if args.quick else 200_000
    repeats = args.rounds

    with tempfile.TemporaryDirectory(prefix="ll-bench-verify-") as tmp:
        db_path = os.path.join(tmp, "l.db")
        ledger = lineage_ledger.open_ledger(f"sqlite:///{db_path}", spool=os.path.join(tmp, "spool"))
        try:
            start = time.perf_counter()
            batch = []
            for stored in (synthetic_record(i).stored() for i in range(n)):
                batch.append(stored)
                if len(batch) == FILL_CHUNK:
                    ledger.append_records(batch, block_size=BLOCK)
                    batch = []
            if batch:
                ledger.append_records(batch, block_size=BLOCK)
            print(f"{n} records in blocks of {BLOCK}, {repeats} rounds, cpus: {os.cpu_count()}, "
                  f"load {os.getloadavg()[0]:.1f}; "
                  f"filled in {time.perf_counter() - start:.1f} s")

            in_memory = list(ledger.blocks())
            summary = ledger.verify_chain()
            assert summary.records == n and summary == lineage_ledger.verify_chain(in_memory)

            variants = {
                "(a) end-to-end": ledger.verify_chain,
                "(b) core only": lambda: lineage_ledger.verify_chain(in_memory),
                "raw read+hash": lambda: raw_read(db_path, True),
                "raw read": lambda: raw_read(db_path, False),
            }
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(repeats):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            list(ledger.blocks())
            fetch_s = time.perf_counter() - start
        finally:
            ledger.close()

    rate = {name: n / statistics.median(t) for name, t in times.items()}
    print(f"\n{'variant':<15} {'median s':>9} {'min s':>8} {'records/s':>11}")
    for name, t in times.items():
        print(f"{name:<15} {statistics.median(t):9.3f} {min(t):8.3f} {rate[name]:11,.0f}")
    print(f"(one pass of list(ledger.blocks()), the back-end read alone: {fetch_s:.3f} s)")
    base = rate["raw read+hash"]
    print(f"\n(a) / raw read+hash = {rate['(a) end-to-end'] / base:.2f}x")
    print(f"(b) / raw read+hash = {rate['(b) core only'] / base:.2f}x")
    for name in ("(a) end-to-end", "(b) core only"):
        verdict = "met" if rate[name] >= 500_000 else "missed"
        print(f"{name}: {rate[name]:,.0f} records/s, goal >= 500,000: {verdict}")
    print("GOAL MET" if rate["(a) end-to-end"] >= 500_000 else "GOAL MISSED")


if __name__ == "__main__":
    main()
