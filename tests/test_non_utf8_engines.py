"""A user name that is not UTF-8 (``LOGNAME=$'\\xff'``) in a real Snakemake run and a real Parsl
run: each task ran, and each record was lost ("could not record task ...: not valid UTF-8
text"), the Snakemake plugin's pending-jobs journal failing the same way on the next run.
Both take the environment from the core's capture (``current_environment``), which now keeps
it in the escape of docs/guide.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_cli
from tests.support.parsl import EXAMPLE_DIR
from tests.support.snakemake import clean_env, require_snakemake, run

BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)
SNAKEFILE = 'rule all:\n    output: "a.txt"\n    shell: "echo hi > {output}"\n'


def _records(cwd, ledger) -> list[dict]:
    shown = run_cli("log", "--json", "-n", "0", "--ledger", str(ledger), cwd=cwd, check_rc=0)
    return [json.loads(line) for line in shown.stdout.splitlines()]


def test_snakemake_records_a_job_run_by_a_user_whose_name_is_not_utf8(tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = clean_env(LOGNAME="u" + BYTE, LINEAGE_STATE_DIR=str(tmp_path / "state"))
    done = run("snakemake-ledger", "-c1", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "could not record" not in done.stderr, done.stderr
    [record] = _records(tmp_path, tmp_path / ".lineage" / "ledger.db")
    assert record["task_name"] == "all"
    assert record["environment"]["user"] == "u\\xff"
    assert record["environment"]["escaped"] == ["user"]


def test_parsl_records_the_tasks_of_a_user_whose_name_is_not_utf8(tmp_path):
    pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env.update(LOGNAME="u" + BYTE, LINEAGE_STATE_DIR=str(tmp_path / "state"))
    work = tmp_path / "demo"
    done = subprocess.run([sys.executable, str(EXAMPLE_DIR / "pipeline.py"), "--workdir", str(work)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "could not record" not in done.stderr, done.stderr
    records = _records(tmp_path, work / "ledger.db")
    assert sorted(r["task_name"] for r in records) == ["generate", "report", "square", "total"]
    assert {r["environment"]["user"] for r in records} == {"u\\xff"}
