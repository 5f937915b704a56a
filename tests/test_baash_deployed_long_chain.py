"""BAASH as deployed on a long chain: every rank restores the whole chain from shared storage
before the job can answer, and that grows with the chain (about 2.4 s per 20,000 blocks of
one record on 2 loaded cores: a ledger of a million one-record blocks takes minutes).

A real 2-rank service takes a chain of 20,000 blocks through the ordinary client in two
requests of 10,000 (a request may carry 65,536), is stopped, and is started again with
``--start-timeout 2``: the chain takes longer than that to restore (each rank about 2.4 s
at load; 30,000 blocks took 33 s of CI time for a wait of the same kind), as a very large
one takes longer than the default 90 s.
"""

from __future__ import annotations

import pytest

from lineage_ledger import build_block
from lineage_ledger.backends.baash.client import BaashBackend
from tests.support.baash import BaashService
from tests.support.factories import make_records

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

BLOCKS = 20_000
#: Blocks a request. A request is one consensus round; its bound grows with its blocks
#: (deadlines.RoundBudget: 263 s for 10,000 one-record blocks on 2 ranks). It was 60 s for
#: any round, and a round of 10,000 took longer at load 13-18 (the job restarted, and the
#: test ran past its 300 s), so requests were of 5,000.
REQUEST = 10_000


@pytest.mark.timeout(900)  # 100 s when idle, 330 s at load 13-18
def test_a_long_chain_restored_past_the_start_timeout_is_served(tmp_path):
    """Bug: each validator checked a block of a round against the record ids of the blocks
    before it by copying them, for each block: one request of n blocks cost n squared (16,000
    blocks: 49 s on each rank), and one past the round's 60 s had the daemon take the job for
    hung and restart it. (One request of 30,000 blocks failed so; the fixed code still took
    about 40 s for it at load 7. Requests of REQUEST blocks now commit with no job failure
    under the bound their size is given.)

    Bug: the daemon gave the MPI job 90 s to start, the restore of the whole chain on
    every rank included (and `baash serve` 120 s): a service whose chain took longer to
    restore (some 750,000 one-record blocks here) never started again. Each try was killed
    at 90 s and started over; a rank failure took the job down for good. Now the start
    timeout is for the ranks to start and connect, and restoring takes as long as it needs
    while every rank beats."""
    service = BaashService(tmp_path, 2)
    backend = BaashBackend(service.url, timeout=300)
    try:
        tip, blocks = backend.head(), []
        for record in make_records(BLOCKS, run_id="long"):
            block = build_block([record.stored()], tip)
            blocks.append(block.stored())
            tip = block.header
        for start in range(0, BLOCKS, REQUEST):
            backend.append(blocks[start:start + REQUEST])
        status = backend.status()
        assert status["failures"] == [] and status["job"]["generation"] == 1, status["failures"]
        head = backend.head()
    finally:
        backend.close()
        service.stop()
    again = BaashService(tmp_path, 2, "--start-timeout", "2")
    backend = BaashBackend(again.url, timeout=300)
    try:
        status = backend.status()
        restored_in = status["job"]["restore_seconds"]
        print(f"\n{BLOCKS:,} blocks restored by each rank in {restored_in:.1f} s at most")
        assert status["job_up"] and status["job"]["head"] == [BLOCKS, head.id], status["job"]
        assert all(rank["valid"] and rank["head"] == head.id for rank in backend.ledgers())
        backend.append([build_block([make_records(1, run_id="after")[0].stored()], backend.head()).stored()])
        assert backend.record_count() == BLOCKS + 1
    finally:
        backend.close()
        again.stop()
    if restored_in <= 2:  # served, but the second bug was not met: say so rather than pass quietly
        pytest.skip(f"this machine restored the chain in {restored_in:.1f} s, within the start timeout of 2 s: "
                    "a restore longer than the start timeout was not exercised")
