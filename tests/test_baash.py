"""The BAASH back-end against a real service: ``lineage-ledger baash serve`` under ``mpiexec``."""

from __future__ import annotations

import dataclasses

import pytest

from lineage_ledger import build_block, open_ledger
from lineage_ledger.backends import open_backend
from lineage_ledger.backends.baash import BlockRejected
from lineage_ledger.backends.baash.endorse import load_verifiers, verify_endorsed
from tests.backend_conformance import BackendConformance, chain_of
from tests.conftest import run_cli
from tests.support.baash import BaashService
from tests.support.factories import make_records

pytestmark = pytest.mark.mpi


@pytest.fixture
def service_factory(tmp_path):
    services: list[BaashService] = []

    def start(ranks: int = 4, *extra: str) -> BaashService:
        workdir = tmp_path / f"svc{len(services)}"
        workdir.mkdir()
        services.append(BaashService(workdir, ranks, *extra))
        return services[-1]

    yield start
    for service in services:
        service.stop()


class TestBaashBackend(BackendConformance):
    concurrent_writers = 4
    records_per_writer = 250

    @pytest.fixture
    def url(self, service_factory):
        return service_factory(4).url


def _identical(reports):
    valid = [r for r in reports if r["valid"]]
    heads = {(r["blocks"], r["head"], r.get("log_root")) for r in valid}
    return len(valid) / len(reports), heads


def test_all_ranks_hold_identical_valid_ledgers(service_factory, tmp_path):
    service = service_factory(4)
    ledger = open_ledger(service.url, spool=str(tmp_path / "spool"))
    with ledger.recorder(batch_size=40, max_age=0.02) as recorder:
        for record in make_records(600):
            recorder.record(record)
    summary = ledger.verify_chain()
    reports = ledger.backend.ledgers()
    fraction, heads = _identical(reports)
    print(f"\nranks holding a valid ledger: {fraction:.0%} of {len(reports)}")
    assert fraction == 1.0
    assert heads == {(summary.blocks, summary.head, summary.log_root)}
    keys = load_verifiers(str(service.storage / "keys" / "ranks.pub"))
    endorsed = verify_endorsed(ledger.backend.checkpoint()["note"], keys)  # the 4 ranks signed the head
    assert (endorsed.size, endorsed.root.hex()) == (summary.records, summary.log_root)
    # The shared-storage copy is the same chain, and a restarted service serves it.
    ledger.close()
    service.stop()
    again = BaashService(tmp_path / "svc0", 3)
    try:
        assert open_ledger(again.url, spool=str(tmp_path / "spool2")).verify_chain() == summary
        assert {r["head"] for r in open_backend(again.url).ledgers()} == {summary.head}
        # It serves the endorsed head it kept, and its 3 ranks (3 of the 4 keys) endorse the next.
        backend = open_backend(again.url)
        assert verify_endorsed(backend.checkpoint()["note"], keys) == endorsed
        backend.append([build_block([r.stored() for r in make_records(3, run_id="after")], backend.head()).stored()])
        assert verify_endorsed(backend.checkpoint()["note"], keys).size == summary.records + 3
    finally:
        again.stop()


def _tampered(block):
    """The same block with one record's bytes changed: its id no longer recomputes."""
    record = block.records[0]
    forged = dataclasses.replace(record, body=record.body.replace(b"succeeded", b"failed\x20\x20\x20"))
    return dataclasses.replace(block, records=(forged, *block.records[1:]))


def test_wrong_voting_rank_does_not_get_a_bad_block_committed(service_factory):
    # Rank 2 votes the opposite of what it finds: NULL on good blocks, "valid" on bad ones.
    service = service_factory(4, "--f", "1", "--faulty-voter", "2")
    backend = open_backend(service.url)
    good = chain_of(make_records(30), 10)
    backend.append(good[:2])
    assert backend.head().height == 1  # two honest votes of three outvote the wrong one
    bad = _tampered(good[2])
    with pytest.raises(BlockRejected, match="does not hash to its id"):
        backend.append([bad])
    merkle_forgery = build_block([r.stored() for r in make_records(3, start=500)], backend.head()).stored()
    merkle_forgery = dataclasses.replace(merkle_forgery, records=merkle_forgery.records[:2] + good[2].records[:1])
    with pytest.raises(BlockRejected):
        backend.append([merkle_forgery])
    assert backend.head().height == 1
    assert backend.known([r.id for r in bad.records]) == set()
    backend.append(good[2:])  # the honest block still commits after the refusals
    assert [b.id for b in backend.blocks()] == [b.id for b in good]
    fraction, heads = _identical(backend.ledgers())
    assert fraction == 1.0 and len(heads) == 1
    assert backend.status()["job"]["subclusters"] == [[1, 2, 3]]


def test_more_wrong_voters_than_f_cost_availability(service_factory):
    """Beyond f the guarantee ends: two lying validators of three refuse a good block.

    (They could as well pass a bad one; ``verify-lineage`` would then catch it, as it
    recomputes every block. docs/baash.md says so.)
    """
    service = service_factory(4, "--f", "1", "--faulty-voter", "1", "--faulty-voter", "2")
    backend = open_backend(service.url)
    with pytest.raises(BlockRejected):
        backend.append(chain_of(make_records(10), 10))
    assert backend.head() is None


def test_verify_lineage_against_the_service(service_factory, workdir):
    service = service_factory(4)
    env = {"LINEAGE_LEDGER_URL": service.url, "LINEAGE_SPOOL": str(workdir / "spool")}
    (workdir / "raw.txt").write_text("raw data\n")
    run_cli("run", "-i", "raw.txt", "-o", "clean.txt", "--", "cp", "raw.txt", "clean.txt",
            cwd=workdir, env=env, check_rc=0)
    run_cli("run", "-i", "clean.txt", "-o", "result.txt", "--", "sh", "-c", "wc -l clean.txt > result.txt",
            cwd=workdir, env=env, check_rc=0)
    ok = run_cli("result.txt", "--ledger", service.url, program="verify-lineage", cwd=workdir, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (workdir / "clean.txt").write_text("edited by hand\n")
    broken = run_cli("result.txt", "--ledger", service.url, program="verify-lineage", cwd=workdir, env=env)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "clean.txt" in broken.stdout + broken.stderr


@pytest.mark.parametrize("options", [("--clusters", "2"), ("--mode", "pbft"), ("--f", "0")],
                         ids=["two-clusters", "pbft-baseline", "f0-parallel-subclusters"])
def test_other_layouts_commit_the_same_chain(service_factory, options):
    """Two clusters (two coordinators), the PBFT baseline, and sub-clusters of one."""
    service = service_factory(4, *options)
    backend = open_backend(service.url)
    chain = chain_of(make_records(60), 3)
    for start in range(0, len(chain), 7):
        backend.append(chain[start:start + 7])
    assert [b.id for b in backend.blocks()] == [b.id for b in chain]
    fraction, heads = _identical(backend.ledgers())
    assert fraction == 1.0 and heads == {(20, chain[-1].id, heads.copy().pop()[2])}
    with pytest.raises(BlockRejected):
        backend.append([_tampered(build_block([r.stored() for r in make_records(2, start=900)],
                                              backend.head()).stored())])
    status = backend.status()
    assert status["stats"]["blocks"] == 20 and status["failures"] == []


@pytest.mark.parametrize(("extend", "fallback"), [("2", "extended"), ("0", "storage")])
def test_a_silent_sub_cluster_is_extended_or_falls_back_to_storage(service_factory, extend, fallback):
    """Sub-clusters of one (f=0); rank 2 never votes, so its sub-cluster has no majority.

    With c=2 idle ranks join it and decide; with c=0 the shared-storage ledger decides.
    """
    service = service_factory(4, "--f", "0", "--c", extend, "--silent-voter", "2", "--vote-timeout", "1")
    backend = open_backend(service.url)
    chain = chain_of(make_records(27), 3)
    backend.append(chain)  # one round of 9 blocks over the three sub-clusters [1], [2], [3]
    bad = _tampered(build_block([r.stored() for r in make_records(3, start=700)], backend.head()).stored())
    with pytest.raises(BlockRejected):
        backend.append([bad])
    assert [b.id for b in backend.blocks()] == [b.id for b in chain]
    decided = backend.status()["decided_by"]
    assert decided.get(fallback, 0) >= 1, decided
    fraction, heads = _identical(backend.ledgers())
    assert fraction == 1.0 and len(heads) == 1


def test_parsl_example_records_into_the_service(service_factory, workdir):
    from tests.support.engine_example import run_parsl_example_and_verify

    summary = run_parsl_example_and_verify(service_factory(4).url, workdir)
    assert summary == {"count": 50, "sum_of_squares": 42925}
