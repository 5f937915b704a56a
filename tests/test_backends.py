"""The conformance suite against each built-in back-end, plus back-end specific faults."""

from __future__ import annotations

import uuid

import pytest

from lineage_ledger import open_ledger
from tests.backend_conformance import BackendConformance
from tests.support.factories import make_records


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    def url(self):
        return f"memory://{uuid.uuid4().hex}"


class TestSQLiteBackend(BackendConformance):
    concurrent_writers = 8
    records_per_writer = 1000  # the acceptance case: 8 processes x 1,000 records

    @pytest.fixture
    def url(self, tmp_path):
        return f"sqlite:///{tmp_path}/ledger.db"


@pytest.mark.postgres
class TestPostgresBackend(BackendConformance):
    concurrent_writers = 8
    records_per_writer = 250

    @pytest.fixture
    def url(self, postgres_url):
        return postgres_url


@pytest.mark.postgres
def test_postgres_server_stopped_mid_write_loses_nothing(postgres_server, tmp_path):
    """Stop the server while a recorder ships: records wait in the spool, then arrive."""
    url = postgres_server.create_database()
    ledger = open_ledger(url, spool=str(tmp_path / "spool"))
    recorder = ledger.recorder(batch_size=100, max_age=0.05)
    records = make_records(600)
    for record in records[:300]:
        recorder.record(record)
    postgres_server.stop(immediate=True)
    for record in records[300:]:
        recorder.record(record)  # the task path does not notice the server is gone
    assert not recorder.flush(timeout=1.0)
    assert recorder.pending > 0
    postgres_server.start()
    assert recorder.flush(timeout=60)
    recorder.close()
    assert ledger.verify_chain().records == 600
    assert {e.record.task_id for e in ledger.run("run-1")} == {r.task_id for r in records}
    ledger.close()
