"""The conformance suite against each built-in back-end, plus back-end specific faults."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from lineage_ledger import open_ledger
from lineage_ledger.testing import BackendConformance, make_records


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


def test_import_lineage_ledger_leaves_pytest_and_the_suite_alone():
    """The conformance suite ships in the package, yet ``import lineage_ledger`` (what every
    command and plugin does) imports neither it nor pytest."""
    probe = ("import sys, lineage_ledger, lineage_ledger.backends; "
             "print(sorted(m for m in sys.modules if m == 'pytest' or m.startswith(('_pytest', 'lineage_ledger.testing'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_third_party_subclass_in_its_own_file_runs_the_suite(tmp_path):
    """What docs/backends.md tells a back-end author to write, outside this test tree:
    a subclass with a ``url`` fixture, run by pytest, passes every check of the suite."""
    (tmp_path / "test_my_backend.py").write_text(
        "import uuid\n"
        "import pytest\n"
        "from lineage_ledger.testing import BackendConformance\n\n"
        "class TestMyBackend(BackendConformance):\n"
        "    @pytest.fixture\n"
        "    def url(self):\n"
        "        return f'memory://{uuid.uuid4().hex}'\n"
    )
    # Without the plugins installed beside pytest (xdist, hypothesis, typeguard, randomly...):
    # the suite needs none of them, and loading them cost 2.5 s of CPU of the 4 the run took.
    # Options for them that a caller's PYTEST_ADDOPTS may hold would then be unknown.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--rootdir", str(tmp_path), "test_my_backend.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stdout[-3000:]
    checks = len([name for name in dir(BackendConformance) if name.startswith("test_")])
    # the two multi-process checks skip (a memory:// ledger lives in one process), and the
    # one of an index of end times (it keeps none)
    assert f"{checks - 3} passed, 3 skipped in" in result.stdout, result.stdout[-1000:]
