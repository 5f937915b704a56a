"""A Parsl run (``parsl.load(Config)``, the example pipeline, cleanup, exit, in a process of its
own) whose SQLite ledger is locked by another process, or whose spool's disk is full, as its
tries end: the run finishes in bounded time, and every try's record reaches the ledger (later,
through ``lineage-ledger spool ship``, where the ledger was locked)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402
from tests.support.faults import fill_disk, hold_write_lock, small_tmpfs  # noqa: E402

pytestmark = pytest.mark.slow

#: Generous: Python and Parsl start-up, four tiny tasks, cleanup, exit take about 5 s here.
BOUND_S = 60
TRIES = {"generate", "square", "total", "report"}

PROGRAM = """
    import json, logging, sys
    sys.path.insert(0, {example!r})
    import parsl
    import pipeline
    from lineage_ledger_parsl import ParslLedger

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    ledger = ParslLedger({url!r}, spool={spool!r})
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger))
    summary = pipeline.run_pipeline({workdir!r}, 5)
    dfk.cleanup()
    print(json.dumps(summary), flush=True)
"""


def run_parsl(workdir: Path, url: str, spool: Path) -> str:
    """Run the pipeline; its stderr. Asserts it succeeded within ``BOUND_S``."""
    script = workdir / "run.py"
    script.write_text(textwrap.dedent(PROGRAM.format(example=str(support.EXAMPLE_DIR), url=url, spool=str(spool),
                                                     workdir=str(workdir))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=workdir,
                            env=env)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"count": 5, "sum_of_squares": 55}
    assert elapsed < BOUND_S, result.stderr[-3000:]
    return result.stderr


def _tries(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT body FROM ll_records").fetchall()
    finally:
        conn.close()
    bodies = [json.loads(bytes(body) if not isinstance(body, str) else body) for (body,) in rows]
    return {b["task_name"] for b in bodies if b["engine"] == "parsl"}


def test_a_locked_sqlite_ledger_delays_the_records_of_a_parsl_run(tmp_path):
    ledger = tmp_path / "ledger.db"
    spool = tmp_path / "spool"
    run_cli("run", "--ledger", str(ledger), "--", "true", cwd=tmp_path, env={"LINEAGE_SPOOL": str(spool)},
            check_rc=0)
    holder = hold_write_lock(ledger)
    try:
        stderr = run_parsl(tmp_path, str(ledger), spool)
        assert "wait in the spool" in stderr, stderr[-3000:]
    finally:
        holder.communicate("")
    assert _tries(ledger) == set()
    run_cli("spool", "ship", "--ledger", str(ledger), "--spool", str(spool), cwd=tmp_path, check_rc=0)
    assert _tries(ledger) == TRIES


@pytest.fixture
def full_disk(tmp_path):
    """A full 1 MiB tmpfs (root only), else skip."""
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        fill_disk(mount / "filler")
        yield mount


def test_a_parsl_run_whose_spool_disk_is_full_records_its_tries_in_the_ledger(tmp_path, full_disk):
    ledger = tmp_path / "ledger.db"
    stderr = run_parsl(tmp_path, str(ledger), full_disk / "spool")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "straight into the ledger" in stderr, stderr[-3000:]  # the user is told why
    assert _tries(ledger) == TRIES, stderr[-3000:]
