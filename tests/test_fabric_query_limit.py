"""Look-ups stay complete past the peer's ``ledger.state.totalQueryLimit``.

A Fabric peer hands a chaincode at most ``totalQueryLimit`` results (core.yaml, default
100000) from one range query that is not paginated, and then says "no more": no error, the
iterator simply ends (core/chaincode/query_response_generator.go in Fabric 2.5). The
chaincode reads its per-block index buckets with range queries, so on a ledger with more
blocks than that touching one path or run, ``depends``, ``why`` and ``log --run`` would get
an answer that leaves records out (which the reader, comparing it with the names beside
the verified tree, reports as a tampered index). Here both peers run with a limit of 20,
the ledger holds 30 one-record blocks reading one file, rewriting another, in one run, and
every answer must still name all of them.
"""

from __future__ import annotations

import json

import pytest

from lineage_ledger.testing.records import artifact, make_record
from tests.conftest import run_cli
from tests.support.fabric import append_to, shared_network

pytestmark = [pytest.mark.fabric, pytest.mark.timeout(600)]

LIMIT = 20  # the peers' ledger.state.totalQueryLimit in these tests
BLOCKS = LIMIT + 10  # each a block (a key in every index bucket it touches) of its own


@pytest.fixture(scope="session")
def fabric_network(request, tmp_path_factory):
    return shared_network(request, tmp_path_factory)  # the session's one network (test_fabric.py's too)


@pytest.fixture(scope="module")
def limited_peers(fabric_network):
    """Both peers restarted with a total query limit of ``LIMIT``; as before afterwards."""
    settings = {"CORE_LEDGER_STATE_TOTALQUERYLIMIT": str(LIMIT)}
    try:
        for org in fabric_network.orgs:
            fabric_network.restart_peer(org, settings)
        yield fabric_network
    finally:
        for org in fabric_network.orgs:
            fabric_network.restart_peer(org)


@pytest.fixture(scope="module")
def wide_ledger(limited_peers, tmp_path_factory):
    """A ledger of ``BLOCKS`` blocks, one record each, all of run "wide": record i reads
    in.txt and writes result.txt (version i) and out-i.txt. Returns (url, work directory,
    the record ids in ledger order)."""
    work = tmp_path_factory.mktemp("wide")
    (work / "in.txt").write_text("in")
    (work / "result.txt").write_text(f"v{BLOCKS - 1}")
    records = [make_record(i, run_id="wide", inputs=[artifact(str(work / "in.txt"), "in")],
                           outputs=[artifact(str(work / "result.txt"), f"v{i}"),
                                    artifact(str(work / f"out-{i}.txt"), f"o{i}")])
               for i in range(BLOCKS)]
    url = limited_peers.client_url(limited_peers.orgs[0], "wide", "provider", "wide")
    append_to(url, work / "spool", records, block_size=1)
    return url, work, [record.stored().id for record in records]


def cli(url: str, work, *args: str, program: str = "lineage-ledger"):
    result = run_cli(*args, "--ledger", url, cwd=work, program=program)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def test_log_of_a_run_lists_every_record(wide_ledger):
    url, work, _ = wide_ledger
    listed = [json.loads(line) for line in cli(url, work, "log", "--run", "wide", "-n", "0", "--json").splitlines()]
    assert sorted(entry["task_id"] for entry in listed) == sorted(f"task-{i}" for i in range(BLOCKS))
    assert [entry["height"] for entry in listed] == list(range(BLOCKS))


def test_depends_names_every_consumer(wide_ledger):
    url, work, _ = wide_ledger
    shown = cli(url, work, "depends", "in.txt", "--all")
    for i in range(BLOCKS):
        assert f"out-{i}.txt" in shown, shown


def test_why_finds_the_producer_in_the_last_block(wide_ledger):
    """result.txt was written in every block; its current version in the last one, which a
    scan stopped after ``LIMIT`` bucket keys would never reach."""
    url, work, ids = wide_ledger
    tree = json.loads(cli(url, work, "why", "result.txt", "--json"))
    assert (tree["kind"], tree["record"]) == ("produced", ids[-1])
    # verify-lineage reads every block too: Blocks, a range of its own, resumes where the
    # peer's limit stopped it.
    verified = cli(url, work, "result.txt", program="verify-lineage")
    assert f"ledger: OK  {BLOCKS} blocks, {BLOCKS} records" in verified, verified
    assert f"<- {ids[-1][:12]} " in verified, verified  # the last block's record made it
