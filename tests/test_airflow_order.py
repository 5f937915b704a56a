"""Issue 18: the Airflow tests pass in any order and never write to the real home directory.

The digest tests used to read Airflow's configuration before any AIRFLOW_HOME was set, so
Airflow settled on ``~/airflow`` (and created ``~/airflow/airflow.db`` there) and the
``dag.test()`` tests that followed found no tables. Here pytest runs that order in a
subprocess whose HOME is a temporary directory, which must stay free of ``airflow/``.
The ``dag.test()`` test it runs is the shortest one (a DAG of two tasks): any of them
found no tables, and the example DAG's test took 7 of this test's 20 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.airflow_site import MIGRATED_BY_PARENT, airflow_installed, migrated_database

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not airflow_installed(), reason="apache-airflow is not installed (make install-airflow)"),
]


def test_digest_tests_then_dag_tests_in_a_fresh_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LINEAGE_", "PYTEST_"))}
    env["HOME"] = str(home)
    # The child copies this session's migrated metadata database into its fresh home, as any
    # fresh home here gets one, instead of running `airflow db migrate` again (3.5 s): the
    # database Airflow opens is still the one in the private home, or the test fails.
    env[MIGRATED_BY_PARENT] = str(migrated_database())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "tests/test_airflow_digests.py", "tests/test_airflow.py",
         "-k", "sweep or claim or failed_try_lists_only_the_outlets"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout, result.stdout[-2000:]
    assert not (home / "airflow").exists(), sorted(p.name for p in (home / "airflow").iterdir())
