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
#: A job whose parameter (and so its command) holds the byte of ``$ODD``.
SNAKEFILE = ('import os\nrule all:\n    output: "a.txt"\n    params: x=os.environ["ODD"]\n'
             '    shell: "echo {params.x} > {output}"\n')


def _records(cwd, ledger) -> list[dict]:
    shown = run_cli("log", "--json", "-n", "0", "--ledger", str(ledger), cwd=cwd, check_rc=0)
    return [json.loads(line) for line in shown.stdout.splitlines()]


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


def test_snakemake_records_a_job_whose_user_parameter_and_command_are_not_utf8(tmp_path):
    """One Snakemake run serves both checks (each was a run of its own): the job run by a user
    whose name is not UTF-8 is recorded, the name escaped in the environment; its parameter
    and command, not UTF-8 either, are escaped in the record."""
    require_snakemake()
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = clean_env(LOGNAME="u" + BYTE, ODD="v" + BYTE, LINEAGE_STATE_DIR=str(tmp_path / "state"))
    done = run("snakemake-ledger", "-c1", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "could not record" not in done.stderr, done.stderr
    [record] = _records(tmp_path, tmp_path / ".lineage" / "ledger.db")
    assert record["task_name"] == "all"
    assert record["environment"]["user"] == "u\\xff"
    assert record["environment"]["escaped"] == ["user"]
    assert record["parameters"]["x"] == "v\\xff"
    assert "parameters.x" in record["extra"]["escaped"]
    assert (tmp_path / "a.txt").read_bytes() == b"v\xff\n"  # the command ran with the parameter's byte


def test_a_capture_records_an_engines_text_that_is_not_utf8_escaped(tmp_path, Capture):  # noqa: N803
    from lineage_ledger import TaskRun, open_ledger, utcnow

    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    now = utcnow()
    run_ = TaskRun(task_id="1", task_name="t" + BYTE, status="succeeded", started=now, ended=now,
                   run_id="r" + BYTE, parameters={"k" + BYTE: "a", "k\\xff": "b", "plain": "p" + BYTE, "ok": "c\\d"},
                   extra={"cmd": ["x", "y" + BYTE], "fine": "f"}, environment_extra={"conda_env": "/c" + BYTE})
    with Capture(url, engine="test", spool=spool, raise_errors=True) as capture:
        record_id = capture.record_now(run_)
    with open_ledger(url, spool=spool) as ledger:
        [record] = [entry.record for entry in ledger.recent(10) if entry.id == record_id]
    assert record.task_name == "t\\xff" and record.run_id == "r\\xff"
    # The key that is not UTF-8, and the one whose escape it could have been taken for, both escaped.
    assert record.parameters == {"k\\xff": "a", "k\\\\xff": "b", "plain": "p\\xff", "ok": "c\\d"}
    assert record.extra["cmd"] == ["x", "y\\xff"] and record.extra["fine"] == "f"
    assert record.extra["escaped"] == ["cmd", "parameters.k\\\\xff", "parameters.k\\xff", "parameters.plain",
                                       "run_id", "task_name"]
    assert record.environment["conda_env"] == "/c\\xff" and "conda_env" in record.environment["escaped"]
