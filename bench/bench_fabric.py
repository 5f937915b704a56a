"""Appending records to the Fabric back-end: one Fabric transaction per block vs per record.

Starts the test network of tests/support/fabric.py (one Raft orderer, two organisations'
peers, TLS, the provenance chaincode as a service, endorsement by MAJORITY = both orgs)
once, outside the timings. Records are built and turned into ``StoredRecord`` objects
before any timing. Each round uses a fresh ledger name on the same channel:
  per-block    ledger.append_records(chunk, block_size=1000) for each 1,000-record chunk,
               as a Recorder ships a batch: one Evaluate for known(), one for head(),
               then one transaction (endorsed by both orgs, ordered, committed) per block
  per-record   ledger.append_records([record]) for each record: one transaction each.
               Every block names the chain head, so a writer cannot have two in flight;
               this is the rate of recording without batching.
  per-block/1-org  per-block on a second network whose chaincode policy is
               OR(Org1, Org2): one peer endorses instead of both (information: what the
               consortium's MAJORITY policy costs on this machine)
  per-block/no-tree  per-block on the chaincode before the log tree (commit 6dbf6a9, from
               this repository's history, deployed beside ours on the first network; in the
               same rounds): what keeping the endorsed tree head costs an append
  endorsed head   FabricBackend.endorsed_tree_head() (both orgs' peers sign, signatures and
               certificates checked) against head() (one peer's Evaluate), 30 calls each on
               the per-block ledger, medians; and check_endorsed_head(ledger) in a fresh
               Ledger (endorsement + bringing the verified tree up to date + comparison)
20,000 per-block and 300 per-record records (1,200 and 10 with --quick).

Goal (issue #7): per-block >= 1,000 records/s.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args, synthetic_record

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lineage_ledger  # noqa: E402
from tests.support.fabric import (  # noqa: E402
    PRE_TREE_CHAINCODE_COMMIT,
    FabricNetwork,
    build_chaincode,
    chaincode_source_at,
    fabric_binaries,
)

BLOCK = 1000


def run_per_block(url: str, spool: str, stored) -> float:
    ledger = lineage_ledger.open_ledger(url, spool=spool)
    try:
        start = time.perf_counter()
        for offset in range(0, len(stored), BLOCK):
            assert ledger.append_records(stored[offset : offset + BLOCK], block_size=BLOCK) == min(
                BLOCK, len(stored) - offset)
        elapsed = time.perf_counter() - start
        assert ledger.backend.record_count() == len(stored)
    finally:
        ledger.close()
    return elapsed


def run_per_record(url: str, spool: str, stored) -> float:
    ledger = lineage_ledger.open_ledger(url, spool=spool)
    try:
        start = time.perf_counter()
        for record in stored:
            assert ledger.append_records([record]) == 1
        elapsed = time.perf_counter() - start
        assert ledger.backend.record_count() == len(stored)
    finally:
        ledger.close()
    return elapsed


def time_endorsed_head(url: str, state_dir: str, calls: int = 30) -> dict[str, float]:
    """Median seconds of an endorsed tree head and of a plain head query; one full check."""
    from lineage_ledger.backends import open_backend
    from lineage_ledger.backends.fabric import check_endorsed_head

    backend = open_backend(url)
    try:
        backend.endorsed_tree_head()  # the channel configuration is read once, outside the timings
        timed: dict[str, list[float]] = {"endorsed_tree_head": [], "head (evaluate)": []}
        for _ in range(calls):
            for name, call in (("endorsed_tree_head", backend.endorsed_tree_head), ("head (evaluate)", backend.head)):
                start = time.perf_counter()
                call()
                timed[name].append(time.perf_counter() - start)
    finally:
        backend.close()
    ledger = lineage_ledger.open_ledger(url, read_only=True, state_dir=state_dir)
    try:
        start = time.perf_counter()
        check_endorsed_head(ledger)  # nothing remembered yet: includes the one full audit
        first = time.perf_counter() - start
        start = time.perf_counter()
        check_endorsed_head(ledger)
        again = time.perf_counter() - start
    finally:
        ledger.close()
    result = {name: statistics.median(t) for name, t in timed.items()}
    result["check_endorsed_head (first: audit)"] = first
    result["check_endorsed_head (again)"] = again
    return result


def main() -> None:
    args = parse_args(__doc__, "1,200 + 10 records, 1 round", quick_rounds=1, full_rounds=3)
    # --quick, the test suite's smoke run: still two appends per-block (a full block and a part)
    n_block, n_record = (1_200, 10) if args.quick else (20_000, 300)
    bin_dir = fabric_binaries()
    if bin_dir is None:
        print("no Fabric binaries in the cache: run `make install-fabric` first")
        print("GOAL MISSED (not measured)")
        return
    batched = [synthetic_record(i, "bench-block").stored() for i in range(n_block)]
    single = [synthetic_record(i, "bench-record").stored() for i in range(n_record)]
    times: dict[str, list[float]] = {"per-block": [], "per-block/no-tree": [], "per-record": [],
                                     "per-block/1-org": []}
    endorsed: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ll-bench-fabric-") as tmp:
        network = FabricNetwork(Path(tmp) / "net", bin_dir)
        try:
            network.start()
            org = network.orgs[0]
            print(f"Fabric {bin_dir.parent.name}: network up in {network.startup_seconds:.1f}s; "
                  f"{n_block} records per-block, {n_record} per-record, {args.rounds} rounds, "
                  f"cpus: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
            source, why_not = chaincode_source_at(PRE_TREE_CHAINCODE_COMMIT, Path(tmp) / "pre-tree")
            if source is not None:
                network.deploy_chaincode("pretree", build_chaincode(source))
            else:
                print(f"per-block/no-tree not measured: {why_not}")
            for round_no in range(args.rounds):
                variants = [("per-block", f"bench-b{round_no}", "lineage")]
                if source is not None:  # alternately first and second, so warming up favours neither
                    variants.insert(round_no % 2, ("per-block/no-tree", f"bench-n{round_no}", "pretree"))
                for name, ledger_name, chaincode in variants:
                    url = network.client_url(org, "bench", "provider", ledger_name, chaincode=chaincode)
                    times[name].append(run_per_block(url, f"{tmp}/spool-{ledger_name}", batched))
                url = network.client_url(org, "bench", "provider", f"bench-r{round_no}")
                times["per-record"].append(run_per_record(url, f"{tmp}/spool-r{round_no}", single))
            url = network.client_url(org, "bench", "provider", "bench-b0", endorsers=network.endorsers())
            endorsed = time_endorsed_head(url, f"{tmp}/state")
        finally:
            network.stop()
        network = FabricNetwork(Path(tmp) / "net1", bin_dir, signature_policy="OR('Org1MSP.peer','Org2MSP.peer')")
        try:
            network.start()
            for round_no in range(args.rounds):
                url = network.client_url(network.orgs[0], "bench", "provider", f"bench-o{round_no}")
                times["per-block/1-org"].append(run_per_block(url, f"{tmp}/spool-o{round_no}", batched))
        finally:
            network.stop()
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    times = {name: t for name, t in times.items() if t}
    sizes = {"per-block": n_block, "per-block/no-tree": n_block, "per-record": n_record, "per-block/1-org": n_block}
    rate = {name: sizes[name] / statistics.median(t) for name, t in times.items()}
    print(f"\n{'variant':<17} {'records':>8} {'median s':>9} {'min s':>8} {'records/s':>10}")
    for name, t in times.items():
        print(f"{name:<17} {sizes[name]:>8} {statistics.median(t):9.3f} {min(t):8.3f} {rate[name]:10,.0f}")
    print(f"\nper-block / per-record = {rate['per-block'] / rate['per-record']:.1f}x")
    if "per-block/no-tree" in rate:
        print(f"per-block with the log tree / without (information) = "
              f"{rate['per-block'] / rate['per-block/no-tree']:.2f}x the rate")
    print(f"\n{'endorsed head on ' + str(n_block) + ' records':<40} {'seconds':>9}")
    for name, seconds in endorsed.items():
        print(f"{name:<40} {seconds:9.4f}")
    if endorsed:
        print(f"endorsed_tree_head / head (information) = "
              f"{endorsed['endorsed_tree_head'] / endorsed['head (evaluate)']:.1f}x")
    print(f"per-block rate {rate['per-block']:,.0f} records/s   (goal >= 1,000 records/s)")
    print("GOAL MET" if rate["per-block"] >= 1_000 else "GOAL MISSED")


if __name__ == "__main__":
    main()
