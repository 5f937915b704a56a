"""Exports of the engines' example runs (Parsl, Airflow) pass their validators.

Each example runs once with its real engine and the project's plugin, as the engine tests
run it; then every export format is written through the CLI and checked (see
``tests/test_export.py``), and the crate is verified offline with ``verify-lineage --crate``.
The CLI example is covered there; the Snakemake example's exports in tests/test_snakemake.py
(``test_the_example_runs_exports_pass_their_validators``), on the run its tests share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_export import export_everything

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def run_ids(cli, env: dict | None = None) -> dict[str, int]:
    """How many records each run of the ledger holds, by run id (``log --json``)."""
    lines = cli("log", "--json", "-n", "0", check_rc=0, **({"env": env} if env else {})).stdout.splitlines()
    counts: dict[str, int] = {}
    for line in lines:
        record = json.loads(line)
        counts[record["run_id"]] = counts.get(record["run_id"], 0) + 1
    return counts


def test_parsl_example_exports(tmp_path):
    pytest.importorskip("parsl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_SPOOL"] = str(tmp_path / "spool")
    url = f"sqlite:///{tmp_path}/ledger.db"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "parsl" / "pipeline.py"), "--workdir",
                           str(tmp_path), "--ledger", url, "-n", "20"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    def cli(*args, **kw):
        return run_cli("--ledger", url, *args, cwd=tmp_path, **kw) if args[0] in ("--crate",) else \
            run_cli(*args[:1], "--ledger", url, *args[1:], cwd=tmp_path, **kw)

    runs = run_ids(cli, {"LINEAGE_SPOOL": str(tmp_path / "spool")})
    (run_id, tasks), = runs.items()
    (tmp_path / "out").mkdir()
    export_everything(cli, tmp_path / "out", "--run", run_id, tasks=tasks, provn=False)


def test_airflow_example_exports(tmp_path):
    from tests.support.airflow_site import airflow_installed, make_site

    if not airflow_installed():
        pytest.skip("Airflow is not installed; `make install` installs it")
    site = make_site(tmp_path / "airflow-home")
    env = {"AIRFLOW__LINEAGE_LEDGER__URL": f"sqlite:///{tmp_path}/ledger.db",
           "AIRFLOW__LINEAGE_LEDGER__SPOOL": str(tmp_path / "spool"), "LINEAGE_EXAMPLE_DATA": str(tmp_path / "data")}
    done = site.cli("dags", "test", "lineage_example", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    url = env["AIRFLOW__LINEAGE_LEDGER__URL"]

    def cli(*args, **kw):
        if args[0] == "--crate":
            return run_cli(*args, cwd=tmp_path, **kw)
        return run_cli(args[0], "--ledger", url, *args[1:], cwd=tmp_path, **kw)

    runs = run_ids(cli)
    (run_id, tasks), = runs.items()
    assert run_id.startswith("lineage_example/") and tasks == 4
    (tmp_path / "out").mkdir()
    export_everything(cli, tmp_path / "out", "--run", run_id, tasks=tasks, provn=False)
