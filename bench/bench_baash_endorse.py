"""What endorsing tree heads costs a BAASH rank per round, against what it already does.

This times an internal path (the ranks' own functions, in one process, no MPI), because
the added work is a few microseconds inside a round that MPI and oversubscribed cores
dominate; a service run could not separate it from the noise (docs/benchmarks.md, BAASH).

Per round of 16 blocks of 4 records (bench_baash.py's shape), on a chain of 2,000 blocks:

* baseline: a validator's check of the round (``ChainState.check_round``: the core's
  ``verify_block``, every record parsed, duplicates against the chain's record ids);
* ours: the same rank's added work, the tree head updated over the round's records
  (``TreeTracker.extend``) and signed (``Endorser.sign``).

Also: the gateway's note of 4 signatures, a client's ``verify_endorsed`` of it, and the
check a restarted rank makes before it endorses a restored chain (``check_restored``:
``verify_chain`` and the tree at the last endorsed size). Medians of several rounds; the
load average is printed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

from _common import parse_args, synthetic_record

from lineage_ledger import build_block
from lineage_ledger.backends.baash.endorse import (
    Endorser,
    TreeTracker,
    assemble,
    ensure_keys,
    ensure_origin,
    load_verifiers,
    save_endorsed,
    verify_endorsed,
)
from lineage_ledger.backends.baash.validation import ChainState

ROUND_BLOCKS, RECORDS_PER_BLOCK, CHAIN_BLOCKS = 16, 4, 2000


def make_chain(blocks: int) -> list:
    chain, head, i = [], None, 0
    for _ in range(blocks):
        records = [synthetic_record(i + k).stored() for k in range(RECORDS_PER_BLOCK)]
        i += RECORDS_PER_BLOCK
        block = build_block(records, head).stored()
        chain.append(block)
        head = block
    return chain


def median_seconds(call, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    args = parse_args(__doc__, "a short run: fewer rounds", quick_rounds=3, full_rounds=15)
    storage = tempfile.mkdtemp(prefix="bench-endorse-")
    try:
        run(args, storage)
    finally:
        shutil.rmtree(storage, ignore_errors=True)  # keys and notes of this run only


def run(args, storage: str) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    chain = make_chain(CHAIN_BLOCKS + ROUND_BLOCKS)
    history, round_blocks = chain[:CHAIN_BLOCKS], chain[CHAIN_BLOCKS:]
    ensure_origin(storage)
    ensure_keys(storage, 4)
    endorsers = [Endorser.load(storage, slot) for slot in range(4)]

    state = ChainState(blocks=list(history), record_ids={r.id for b in history for r in b.records})

    def validate() -> None:  # what a validator already does for a round
        state.check_round(round_blocks, range(len(round_blocks)))

    tracked = TreeTracker()
    tracked.extend(history)

    def endorse() -> None:  # what endorsing adds: the tree over the round's records, one signature
        tracker = TreeTracker()
        tracker._stack, tracker.size = list(tracked._stack), tracked.size
        tracker.extend(round_blocks)
        endorsers[1].sign(tracker)

    baseline = median_seconds(validate, args.rounds)
    ours = median_seconds(endorse, args.rounds)
    full = TreeTracker()
    full.extend(chain)
    note = assemble(endorsers[0].body(full), [e.sign(full)[2] for e in endorsers])
    keys = load_verifiers(os.path.join(storage, "keys", "ranks.pub"))
    verify = median_seconds(lambda: verify_endorsed(note, keys), args.rounds)
    save_endorsed(storage, assemble(endorsers[0].body(tracked), [e.sign(tracked)[2] for e in endorsers]))
    assert endorsers[2].check_restored(storage, chain) is None
    restore_check = median_seconds(lambda: endorsers[2].check_restored(storage, chain), max(3, args.rounds // 3))
    records = ROUND_BLOCKS * RECORDS_PER_BLOCK
    print(f"per round of {ROUND_BLOCKS} blocks x {RECORDS_PER_BLOCK} records, chain of {CHAIN_BLOCKS} blocks, "
          f"medians of {args.rounds}:")
    print(f"  baseline, a validator's check:  {baseline * 1e3:8.3f} ms ({baseline / records * 1e6:.1f} us a record)")
    print(f"  ours, tree head + signature:    {ours * 1e3:8.3f} ms ({ours / records * 1e6:.1f} us a record)")
    print(f"  endorsing / validating: {ours / baseline:.3f}x")
    print(f"client: verify_endorsed of 4 signatures against 4 keys: {verify * 1e3:.3f} ms")
    print(f"restarted rank: check_restored of {len(chain)} blocks ({len(chain) * RECORDS_PER_BLOCK} records): "
          f"{restore_check * 1e3:.0f} ms")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"NO GOAL: the issue sets none for endorsement; it adds {ours / baseline:.3f}x a validator's check per round")


if __name__ == "__main__":
    main()
