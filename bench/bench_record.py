"""Cost of one ``Recorder.record(record)`` call, the write-behind hot path.

Each round builds 50,000 fresh Record objects (2,000 with --quick) before timing, opens
a fresh SQLite ledger in a temporary directory,
``rec = ledger.recorder(batch_size=1000, max_age=1.0, max_pending=200_000)``, times every
``rec.record(r)`` call (the background worker ships blocks meanwhile, as in real use),
then times ``rec.close()`` (the flush of what is still queued) separately.

Every timed call gets records that were never encoded: a Record may cache its canonical
bytes, and a record is recorded once in real use, so each variant gets its own fresh list.

Baselines and parts, in the same rounds:
  Record()     the Record(...) constructor on ready arguments (not part of record(), but
               paid by the same caller; validation and time formatting happen here)
  os.write     one os.write of the same spool line (id, space, body, newline) per record
               to an O_APPEND file: the floor of a journal that is in the kernel at return
  encode()     record.encode() alone (canonical JSON), first call on a fresh record
  stored()     record.stored() alone (encode + BLAKE3 id + index keys); record() does the
               encode and the id, and leaves the index keys to the worker

Goal (issue #2): median per-call time of record() <= 20 us. Mean and p99 are shown too.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time

from _common import parse_args, record_args, synthetic_record
from blake3 import blake3

import lineage_ledger
from lineage_ledger import Record


def fresh(n: int, tag: str) -> list[Record]:
    return [synthetic_record(i, f"run-{tag}") for i in range(n)]


def per_call(fn, items) -> tuple[list, list[int]]:
    """Results and nanoseconds of each fn(item) call."""
    clock, results, times = time.perf_counter_ns, [], []
    for item in items:
        start = clock()
        result = fn(item)
        times.append(clock() - start)
        results.append(result)
    return results, times


def run_recorder(tmp: str, records: list[Record]) -> tuple[list[int], float]:
    db_path = os.path.join(tmp, "l.db")
    ledger = lineage_ledger.open_ledger(f"sqlite:///{db_path}", spool=os.path.join(tmp, "spool"))
    try:
        rec = ledger.recorder(batch_size=1000, max_age=1.0, max_pending=200_000)
        _, calls = per_call(rec.record, records)
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
        return per_call(lambda line: os.write(fd, line), lines)[1]
    finally:
        os.close(fd)


def main() -> None:
    args = parse_args(__doc__, "2,000 records, 2 rounds", quick_rounds=2)
    n = 2_000 if args.quick else 50_000
    repeats = args.rounds
    print(f"{n} records per round, {repeats} rounds, cpus: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    names = ("record()", "Record()", "os.write", "encode()", "stored()")
    medians: dict[str, list[float]] = {k: [] for k in names}
    means: dict[str, list[float]] = {k: [] for k in names}
    p99s, closes = [], []
    with tempfile.TemporaryDirectory(prefix="ll-bench-record-") as tmp:
        for round_no in range(repeats):
            work = tempfile.mkdtemp(prefix=f"r{round_no}-", dir=tmp)
            arguments = [record_args(i, f"run-a{round_no}") for i in range(n)]
            for_record, built = per_call(lambda kw: Record(**kw), arguments)
            for_encode, for_stored = fresh(n, f"b{round_no}"), fresh(n, f"c{round_no}")
            calls, close_s = run_recorder(work, for_record)
            closes.append(close_s)
            p99s.append(sorted(calls)[int(len(calls) * 0.99)] / 1e3)
            bodies, encoded = per_call(Record.encode, for_encode)
            _, stored = per_call(Record.stored, for_stored)
            lines = [b"".join((blake3(b).hexdigest().encode(), b" ", b, b"\n")) for b in bodies]
            results = {"record()": calls, "Record()": built, "os.write": run_os_write(work, lines),
                       "encode()": encoded, "stored()": stored}
            for name, ns in results.items():
                medians[name].append(statistics.median(ns) / 1e3)
                means[name].append(sum(ns) / len(ns) / 1e3)
            del arguments, for_record, for_encode, for_stored, bodies, lines

    print(f"record body ~{len(fresh(1, 'x')[0].encode())} bytes")
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
