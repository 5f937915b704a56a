"""The full audit at scale (``verify-lineage --ledger URL`` with no target), on PostgreSQL:
the four ways it broke on a lab's ledger, each fixed and tested on SQLite
(test_audit_outputs, test_audit_dedup / test_audit_parallel, test_deep_lineage,
test_audit_wide), run end to end through the CLI on a real server, small:

* recorded outputs on disk: 1,030 through two workers, only 1,000 shown and the rest
  counted, a tampered one past those shown still failing;
* a record stored twice, found through the exact scratch table (not the Bloom filter);
* lineage 1,100 generations deep (past Python's recursion limit): an edit 1,090 generations
  back fails the last version, where it exited 2 before;
* wide records: the PostgreSQL reads weigh blocks as SQLite's do, and plan the same ranges.

The ledgers are the SQLite tests' own, built here on PostgreSQL (or copied block by block
where those tests build them only as SQLite files). About 9 s in all with the machine's load
at 5 (two cores), besides the server's start, which the PostgreSQL tests share.
"""

from __future__ import annotations

import pytest

from lineage_ledger import build_block
from lineage_ledger._log import audit_bulk
from lineage_ledger._log import audit_parallel as parallel
from lineage_ledger._model import StoredBlock, StoredRecord
from lineage_ledger.backends import open_backend
from tests.conftest import run_cli
from tests.test_audit_outputs import build_outputs, check_a_tampered_output_fails
from tests.test_audit_parallel import pristine  # noqa: F401 - a fixture: 40 task-shaped records
from tests.test_audit_wide import PARALLEL as WIDE_PARALLEL
from tests.test_audit_wide import wide  # noqa: F401 - a fixture: 80 records, 40 of them wide
from tests.test_deep_lineage import build_chain, check_an_edit_far_back

pytestmark = pytest.mark.postgres

# Two workers on ranges of a few blocks each, and duplicate ids through the scratch table.
WORKERS = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_WORKERS": "2", "LINEAGE_AUDIT_BLOOM_MAX": "0"}


def _copy(sqlite_db, url: str) -> str:
    """The SQLite ledger's blocks appended, as stored, to the PostgreSQL database at ``url``
    (each record with the keys it is indexed by, which a read does not give back)."""
    with open_backend(f"sqlite:///{sqlite_db}", create=False) as source, open_backend(url) as target:
        target.append([StoredBlock(b.height, b.id, b.header, tuple(map(_indexed, b.records)))
                       for b in source.blocks()])
    return url


def _indexed(record: StoredRecord) -> StoredRecord:
    return StoredRecord.from_body(record.body)


def test_outputs_on_disk_past_those_shown(postgres_url, tmp_path):
    base = tmp_path / "ledger"
    base.mkdir()
    build_outputs(base, postgres_url)
    check_a_tampered_output_fails(base, postgres_url, tmp_path, "workers", env={"LINEAGE_AUDIT_BLOOM_MAX": "0"})


def test_a_deep_lineage(postgres_url, tmp_path):
    base = tmp_path / "ledger"
    base.mkdir()
    build_chain(base, postgres_url, 1_100)
    # The ledger is audited in full first (nothing is remembered), then the last version's
    # lineage is walked back to the edited one: four look-ups a generation on the server.
    check_an_edit_far_back(base, postgres_url, tmp_path, 1_100)


def test_a_record_stored_twice_through_the_scratch_table(pristine, postgres_url, tmp_path):  # noqa: F811
    url = _copy(pristine, postgres_url)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:  # rebuilt by someone with write access
        conn.execute("ALTER TABLE ll_records DROP CONSTRAINT ll_records_id_key")
        conn.execute("CREATE INDEX ll_records_id ON ll_records (id)")
    with open_backend(url) as backend:
        # Record 5 again, in a block of its own at the end: another worker's range.
        again = _indexed(next(b for b in backend.blocks() if b.height == 1).records[1])
        backend.append([build_block([again], backend.head()).stored()])
        assert len(backend.by_id_prefix(again.id, limit=2)) == 2
    result = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage",
                     env={**WORKERS, "LINEAGE_AUDIT_TASK_RECORDS": "8", "LINEAGE_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ChainBroken: record {again.id[:16]} appears twice in the ledger" in result.stdout


def test_wide_records_weigh_the_same_and_audit(wide, postgres_url, tmp_path, monkeypatch):  # noqa: F811
    url = _copy(wide, postgres_url)
    for name, value in WIDE_PARALLEL.items():
        monkeypatch.setenv(name, value)
    with open_backend(f"sqlite:///{wide}", create=False) as lite, open_backend(url, create=False) as pg:
        weights = pg.block_weights()  # (height, records, first body's bytes)
        assert weights == lite.block_weights()
        assert [row[5] for row in pg.audit_blocks(0, 20)] == [first for _h, _c, first in weights]
        assert parallel.plan(pg, 80, 20) == parallel.plan(lite, 80, 20)
    shares = [audit_bulk.weight(count, first) for _h, count, first in weights]
    assert shares[4] == 4 and min(shares[5:15]) >= 4 * 10, shares  # narrow blocks, wide ones
    result = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage",
                     env={**WIDE_PARALLEL, "LINEAGE_AUDIT_BLOOM_MAX": "0", "LINEAGE_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audited 80 records" in result.stdout and result.stdout.rstrip().endswith("verified")
