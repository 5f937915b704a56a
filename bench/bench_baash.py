"""BAASH against its baselines, in one harness and one run (the SC'21 paper's evaluation).

Every figure is a real service: a daemon and ``mpiexec -n N`` Python ranks on this
machine. Ranks beyond the core count are oversubscribed; MPICH busy-polls, so the ranks
poll with sleeps and throughput at 8 ranks on 2 cores measures contention, not scaling.

1. Throughput against ranks (2, 4, 8): BAASH (f=1) and plain replication.
2. Overhead against plain replication (every rank stores every block, no validation) at
   1,000 and 10,000 blocks (the paper: ~80% small, ~20% at 10,000).
3. BAASH against a PBFT baseline run over the same sub-clusters (the paper: up to 6x).
4. Memory per rank after the largest run.
Blocks carry 4 records (the paper's batch size); a client sends 16 blocks per append.
"""

from __future__ import annotations

import statistics

from _baash import Service, load, make_chain, oversubscribed
from _common import parse_args

PER_APPEND = 16


def run_once(ranks: int, mode: str, chain, *extra: str) -> tuple[float, list[int]]:
    """Seconds to commit ``chain`` on a fresh service, and the ranks' memory afterwards."""
    with Service(ranks, "--mode", mode, *extra) as service:
        seconds = service.send(chain, PER_APPEND)
        return seconds, [m for m in service.backend.status()["memory"] if m]


Runs = dict[tuple[int, str, int], tuple[float, list[int]]]


def compare(ranks: int, modes: tuple[str, ...], chain, rounds: int,
            reuse: Runs | None = None) -> dict[str, tuple[float, list[int]]]:
    """Median seconds per mode; rounds interleave the modes so machine noise hits each alike.
    With ``reuse`` (--quick, one round) a service run is made once per (ranks, mode, blocks)
    and shared by the sections that ask for it again: 4 ranks on the smaller chain are in
    sections 1, 2 and 3, so 7 services start instead of 10. A full run measures each afresh."""
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    memory: dict[str, list[int]] = {}
    for _ in range(rounds):
        for mode in modes:
            if reuse is None:
                seconds, memory[mode] = run_once(ranks, mode, chain)
            else:
                key = (ranks, mode, len(chain))
                if key not in reuse:
                    reuse[key] = run_once(ranks, mode, chain)
                seconds, memory[mode] = reuse[key]
            times[mode].append(seconds)
    return {mode: (statistics.median(times[mode]), memory[mode]) for mode in modes}


def main() -> None:
    args = parse_args(__doc__, "tiny sizes, seconds", quick_rounds=1, full_rounds=3)
    sizes = (100, 300) if args.quick else (1_000, 10_000)
    rank_counts = (2, 4) if args.quick else (2, 4, 8)
    reuse: Runs | None = {} if args.quick and args.rounds == 1 else None
    print(f"{load()}; medians of {args.rounds} rounds; blocks of 4 records, {PER_APPEND} blocks per append")

    print("\n1. throughput against ranks (blocks/s)")
    chain = make_chain(sizes[0])
    for ranks in rank_counts:
        result = compare(ranks, ("baash", "replicate"), chain, args.rounds, reuse)
        ours, plain = result["baash"][0], result["replicate"][0]
        print(f"  {oversubscribed(ranks):36s} BAASH {len(chain) / ours:6.0f}   replication {len(chain) / plain:6.0f}"
              f"   BAASH/replication {plain / ours:.2f}")

    print("\n2. overhead against plain replication, 4 ranks")
    overheads = {}
    memory: dict[str, list[int]] = {}
    for size in sizes:
        result = compare(4, ("baash", "replicate"), make_chain(size), args.rounds, reuse)
        (ours, memory["baash"]), (plain, memory["replicate"]) = result["baash"], result["replicate"]
        overheads[size] = ours / plain - 1
        print(f"  {size:6d} blocks: BAASH {ours:7.2f} s, replication {plain:7.2f} s, overhead {overheads[size]:+.0%}"
              f"  ({oversubscribed(4)})")

    print("\n3. BAASH against PBFT over the same sub-clusters (f=1)")
    chain = make_chain(sizes[0])
    speedups = []
    for ranks in rank_counts[1:]:
        result = compare(ranks, ("baash", "pbft"), chain, args.rounds, reuse)
        ours, pbft = result["baash"][0], result["pbft"][0]
        speedups.append(pbft / ours)
        print(f"  {oversubscribed(ranks):36s} BAASH {len(chain) / ours:6.0f}/s   PBFT {len(chain) / pbft:6.0f}/s"
              f"   BAASH {pbft / ours:.2f}x faster")

    print(f"\n4. resident memory per rank after {sizes[-1]} blocks ({sizes[-1] * 4} records), 4 ranks:")
    for mode in ("baash", "replicate"):
        print(f"  {mode:10s} " + ", ".join(f"{m / 2**20:.0f} MiB" for m in memory[mode]))

    largest = sizes[-1]
    met = overheads[largest] <= 0.25 and min(speedups) >= 1.0
    print(f"\nGOAL {'MET' if met else 'MISSED'}: overhead at {largest} blocks {overheads[largest]:+.0%} "
          f"(paper ~+20%, goal <= +25%); BAASH over PBFT {min(speedups):.2f}x-{max(speedups):.2f}x "
          f"(paper up to 6x, goal >= 1x)")


if __name__ == "__main__":
    main()
