"""``kill -9`` anywhere on the write-behind path of the CLI, with several shippers at once.

Real processes only: ``lineage-ledger run`` and ``lineage-ledger spool ship`` started side by
side on one SQLite ledger and one spool, some killed with SIGKILL at random moments (while
journaling, shipping, between the ledger's commit and the segment's removal, while replaying
what others left). Afterwards one ``spool ship`` must leave nothing waiting, every record a
``run`` said it recorded must be in the ledger exactly once, and the whole ledger must pass
``verify-lineage``: a record shipped twice is kept once, and no lock outlives its process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.faults import hold_write_lock

BIN = Path(sys.executable).parent


def _ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM ll_records")]
    finally:
        conn.close()


def _segments(workdir: Path) -> list[Path]:
    return sorted((workdir / ".lineage" / "spool").glob("*/*.log"))


def test_a_segment_shipped_again_after_its_commit_is_kept_once(workdir):
    """The state a kill between the ledger's commit and the segment's removal leaves: the
    segment is still there, its records are in the ledger. Shipping it again adds nothing."""
    run_cli("run", "--", "true", cwd=workdir, check_rc=0)  # the ledger exists
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:  # the record waits in the spool
        run_cli("run", "--ship-wait", "0", "-n", "twice", "--", "true", cwd=workdir, check_rc=0)
    finally:
        holder.communicate("")
    segment, = [p for p in _segments(workdir) if p.stat().st_size]  # (and the empty one it rotated to)
    kept = workdir / "copy.log"
    shutil.copy(segment, kept)
    run_cli("spool", "ship", cwd=workdir, check_rc=0)
    before = _ids(workdir / ".lineage" / "ledger.db")
    assert len(before) == 2 and _segments(workdir) == []
    shutil.copy(kept, segment)  # as if killed before the unlink
    shipped = run_cli("spool", "ship", cwd=workdir, check_rc=0)
    assert "shipped 0 record(s)" in shipped.stderr
    assert _ids(workdir / ".lineage" / "ledger.db") == before and _segments(workdir) == []
    run_cli("verify", cwd=workdir, check_rc=0)


@pytest.mark.slow
def test_runs_and_shippers_killed_at_random_lose_and_duplicate_nothing(workdir):
    run_cli("run", "--", "true", cwd=workdir, check_rc=0)
    seed = os.getpid()  # named in the failures below, to replay the same kills
    chance = random.Random(seed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_SHIP_WAIT"] = "3"
    running: list[tuple[subprocess.Popen, float]] = []
    reported: list[str] = []
    killed = 0

    def settle(process: subprocess.Popen) -> None:
        _, err = process.communicate(timeout=120)
        assert process.returncode in (0, -signal.SIGKILL), err[-2000:]
        reported.extend(line.split()[1] for line in err.splitlines() if line.startswith("recorded "))

    started = 0

    def more() -> bool:
        # 60 processes, and more (up to 200) until a few were killed: on a fast, quiet machine
        # every one of a seed's first 60 could end before its kill time, and nothing is tested.
        return started < 60 or (killed < 5 and started < 200)

    while more() or running:
        for process, kill_at in list(running):
            if process.poll() is not None:
                running.remove((process, kill_at))
                settle(process)
            elif time.monotonic() >= kill_at:
                process.send_signal(signal.SIGKILL)
                killed += 1
                running.remove((process, kill_at))
                settle(process)
        while len(running) < 4 and more():
            if chance.random() < 0.25:
                command = [str(BIN / "lineage-ledger"), "spool", "ship"]
            else:
                command = [str(BIN / "lineage-ledger"), "run", "-n", f"t{started}", "--", "true"]
            # Most are killed somewhere between start-up and the end of shipping (about 0.4-0.8 s).
            delay = chance.uniform(0.3, 1.0) if chance.random() < 0.7 else float("inf")
            running.append((subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True), time.monotonic() + delay))
            started += 1
        time.sleep(0.02)
    assert killed > 0
    final = run_cli("spool", "ship", cwd=workdir)
    assert final.returncode == 0, (seed, final.stderr)  # no lock left held, no damaged line
    status = json.loads(run_cli("spool", "status", "--json", cwd=workdir, check_rc=0).stdout)
    assert status == [], seed
    ids = _ids(workdir / ".lineage" / "ledger.db")
    assert len(set(ids)) == len(ids), seed
    missing = [prefix for prefix in reported if not any(i.startswith(prefix) for i in ids)]
    assert missing == [], seed
    run_cli("verify", cwd=workdir, check_rc=0)
