"""Cost of one ``Recorder.record(record)`` call, the write-behind hot path.

50,000 Record objects (2,000 with --quick) are built before timing. Each round opens a
fresh SQLite ledger in a temporary directory,
``rec = ledger.recorder(batch_size=1000, max_age=1.0, max_pending=200_000)``, times every
``rec.record(r)`` call (the background worker ships blocks meanwhile, as in real use),
then times ``rec.close()`` (the flush of what is still queued) separately.

Baselines and parts, in the same rounds:
  os.write     one os.write of the same spool line (id, space, body, newline) per record
               to an O_APPEND file: the floor of a journal that is in the kernel at return
  encode()     record.encode() alone (canonical JSON)
  stored()     record.stored() alone (encode + BLAKE3 id + index keys), which record() calls

Goal (issue #2): median per-call time of record() <= 20 us. Mean and p99 are shown too.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone

from blake3 import blake3

import lineage_ledger
from lineage_ledger import Artifact, Record


def make_records(n: int, tag: str) -> list[Record]:
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return [
        Record(
            engine="bench", run_id=f"run-{tag}", task_id=f"task-{i}", task_name="align",
            status="succeeded", started=t0 + timedelta(seconds=i), ended=t0 + timedelta(seconds=i + 1),
            inputs=[Artifact(f"/data/samples/s{i:07d}/reads.fastq", blake3(b"in%d" % i).hexdigest(), 1000)],
            outputs=[Artifact(f"/data/results/s{i:07d}/aligned.bam", blake3(b"out%d" % i).hexdigest(), 2000)],
            parameters={"threads": 4, "reference": "GRCh38"},
        )
        for i in range(n)
    ]


def per_call(fn, items) -> list[int]:
    """Nanoseconds of each fn(item) call."""
    clock, out = time.perf_counter_ns, []
    append = out.append
    for item in items:
        start = clock()
        fn(item)
        append(clock() - start)
    return out


def run_recorder(tmp: str, records: list[Record]) -> tuple[list[int], float]:
    db_path = os.path.join(tmp, "l.db")
    ledger = lineage_ledger.open_ledger(f"sqlite:///{db_path}", spool=os.path.join(tmp, "spool"))
    try:
        rec = ledger.recorder(batch_size=1000, max_age=1.0, max_pending=200_000)
        calls = per_call(rec.record, records)
        start = time.perf_counter()
        done = rec.close(timeout=600)
        close_s = time.perf_counter() - start
    finally:
        ledger.close()
    with sqlite3.connect(db_path) as db:
        stored = db.execute("SELECT count(*) FROM ll_records").fetchone()[0]
    db.close()
    assert done and stored == len(records), (done, stored)
    return calls, close_s


def run_os_write(tmp: str, lines: list[bytes]) -> list[int]:
    fd = os.open(os.path.join(tmp, "floor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return per_call(lambda line: os.write(fd, line), lines)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 records, 2 rounds")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n = 2_000 if args.quick else 50_000
    repeats = args.repeats or (2 if args.quick else 5)

    records = make_records(n, "bench")
    lines = [b"".join((s.id.encode("ascii"), b" ", s.body, b"\n")) for s in (r.stored() for r in records)]
    print(f"{n} records per round, {repeats} rounds, cpus: {os.cpu_count()}, "
          f"record body ~{len(lines[0])} bytes")

    names = ("record()", "os.write", "encode()", "stored()")
    medians: dict[str, list[float]] = {k: [] for k in names}
    means: dict[str, list[float]] = {k: [] for k in names}
    p99s: list[float] = []
    closes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ll-bench-record-") as tmp:
        for round_no in range(repeats):
            work = tempfile.mkdtemp(prefix=f"r{round_no}-", dir=tmp)
            calls, close_s = run_recorder(work, records)
            closes.append(close_s)
            p99s.append(sorted(calls)[int(len(calls) * 0.99)] / 1e3)
            results = {
                "record()": calls,
                "os.write": run_os_write(work, lines),
                "encode()": per_call(Record.encode, records),
                "stored()": per_call(Record.stored, records),
            }
            for name, ns in results.items():
                medians[name].append(statistics.median(ns) / 1e3)
                means[name].append(sum(ns) / len(ns) / 1e3)

    print(f"\n{'per call':<10} {'median us':>10} {'mean us':>9}   (medians over rounds)")
    for name in names:
        print(f"{name:<10} {statistics.median(medians[name]):10.2f} {statistics.median(means[name]):9.2f}")
    print(f"record() p99: {statistics.median(p99s):.1f} us; "
          f"rec.close() (final flush): median {statistics.median(closes) * 1e3:.1f} ms")
    ours = statistics.median(medians["record()"])
    floor = statistics.median(medians["os.write"])
    print(f"\nrecord() / os.write floor = {ours / floor:.1f}x the floor's cost")
    print(f"record() median {ours:.2f} us per call   (goal <= 20 us)")
    print("GOAL MET" if ours <= 20.0 else "GOAL MISSED")


if __name__ == "__main__":
    main()
