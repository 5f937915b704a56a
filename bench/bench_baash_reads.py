"""BAASH reads against a central SQLite file on shared storage, and appends during a failure.

1. Reads: the same chain in a BAASH service (answered from the daemon's in-memory index
   over loopback TCP) and in ``sqlite:///<shared storage>/ledger.db`` opened directly by
   the reader (the paper's "central SQLite" baseline), plus re-reading every block file of
   the shared-storage ledger (what the service exists to avoid).
2. Validation through shared storage during a failure: append throughput with the MPI job
   up, then with a rank killed (``kill -9``) and the job held down, when the daemon
   validates every block against the shared-storage ledger itself.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time

from _baash import Service, load, make_chain, oversubscribed
from _common import parse_args

from lineage_ledger.backends import open_backend
from lineage_ledger.backends.baash.storage import SharedStore


def read_workload(backend, chain, lookups: int) -> dict[str, float]:
    """Seconds for: the whole chain, path look-ups, id-prefix look-ups, head calls."""
    timings = {}
    started = time.perf_counter()
    assert sum(1 for _ in backend.blocks()) == len(chain)
    timings["whole chain"] = time.perf_counter() - started
    step = max(1, len(chain) // lookups)
    paths = [chain[i].records[0].outputs[0][0] for i in range(0, len(chain), step)][:lookups]
    started = time.perf_counter()
    for path in paths:
        assert len(backend.find("out", path=path)) == 1
    timings[f"{len(paths)} path look-ups"] = time.perf_counter() - started
    ids = [chain[i].records[1].id[:12] for i in range(0, len(chain), step)][:lookups]
    started = time.perf_counter()
    for prefix in ids:
        assert backend.by_id_prefix(prefix)
    timings[f"{len(ids)} id look-ups"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(lookups):
        backend.head()
    timings[f"{lookups} head calls"] = time.perf_counter() - started
    return timings


def reads(args, size: int) -> float:
    chain = make_chain(size)
    lookups = 50 if args.quick else 500
    with Service(4) as service, tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        service.send(chain, 16)
        sqlite = open_backend(f"sqlite:///{tmp}/ledger.db")
        for start in range(0, len(chain), 256):
            sqlite.append(chain[start:start + 256])
        ours: dict[str, list[float]] = {}
        theirs: dict[str, list[float]] = {}
        files: list[float] = []
        for _ in range(args.rounds):
            for name, seconds in read_workload(service.backend, chain, lookups).items():
                ours.setdefault(name, []).append(seconds)
            for name, seconds in read_workload(sqlite, chain, lookups).items():
                theirs.setdefault(name, []).append(seconds)
            started = time.perf_counter()
            assert sum(1 for _ in SharedStore(str(service.storage)).load()) == len(chain)
            files.append(time.perf_counter() - started)
        sqlite.close()
    print(f"\n1. reads, {size} blocks ({size * 4} records); BAASH service with {oversubscribed(4)}")
    print(f"  {'':22s} {'BAASH service':>14s} {'central SQLite':>15s} {'ratio':>7s}")
    for name in ours:
        a, b = statistics.median(ours[name]), statistics.median(theirs[name])
        print(f"  {name:22s} {a * 1000:11.1f} ms {b * 1000:12.1f} ms {b / a:6.2f}x")
    whole = statistics.median(ours["whole chain"])
    print(f"  re-reading every block file of shared storage: {statistics.median(files) * 1000:.1f} ms "
          f"({statistics.median(files) / whole:.1f}x the service's whole-chain read)")
    return statistics.median(theirs["whole chain"]) / whole


def during_failure(args) -> tuple[float, float, int, int]:
    count = 40 if args.quick else 400
    chain = make_chain(2 * count)
    with Service(4, "--restart-delay", "600") as service:
        up = service.send(chain[:count], 4)
        status = service.backend.status()
        os.kill(status["job"]["pids"][1], signal.SIGKILL)
        while service.backend.status()["job_up"]:
            time.sleep(0.01)
        before = service.backend.status()["stats"]["storage_blocks"]
        down = service.send(chain[count:], 4)
        after = service.backend.status()
        via_storage = after["stats"]["storage_blocks"] - before
        committed = after["head"][0] + 1
    print(f"\n2. appends of 4 blocks, {count} blocks each way ({oversubscribed(4)} while up)")
    print(f"  MPI job up (consensus):           {count / up:8.0f} blocks/s")
    print(f"  job down, shared storage validates: {count / down:8.0f} blocks/s  ({via_storage} blocks via storage)")
    return count / up, count / down, via_storage, committed


def main() -> None:
    args = parse_args(__doc__, "tiny sizes, seconds", quick_rounds=1, full_rounds=5)
    print(f"{load()}; medians of {args.rounds} rounds")
    ratio = reads(args, 300 if args.quick else 5_000)
    up, down, via_storage, committed = during_failure(args)
    count = 40 if args.quick else 400
    met = via_storage == count and committed == 2 * count
    print(f"\nGOAL {'MET' if met else 'MISSED'}: while the MPI job was down, {via_storage}/{count} blocks were "
          f"validated through shared storage and committed ({down / up:.2f}x the consensus rate); "
          f"whole-chain read, central SQLite over BAASH: {ratio:.2f}x")


if __name__ == "__main__":
    main()
