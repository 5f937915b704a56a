"""A record whose straight write is still pending when its process ends normally.

A write is pending only where the spool refused the record (its disk full): the record is
in no spool, and the write's thread ends with the process. What the user must get at exit
is one line that leaves no doubt: the record waits in the spool (the disk has room again)
and ``lineage-ledger spool ship`` ships it, or it is NOT recorded. Real processes: a real
SQLite ledger whose write lock another process holds, a real full tmpfs (root only, else
skipped), the real CLI.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.faults import fill_disk, hold_write_lock, record_bodies, small_tmpfs

# A process that records one task with record_now while the spool's disk is full and the
# ledger locked, frees the disk (or not), and ends normally.
RECORD_THEN_EXIT = """
import os, sys
from lineage_ledger import TaskCapture, TaskRun, utcnow
url, spool, filler, free = sys.argv[1:]
now = utcnow()
cap = TaskCapture(url, engine="test", spool=spool)
run = TaskRun(task_id="t1", task_name="late", status="succeeded", started=now, ended=now)
print("returned", cap.record_now(run, straight_wait=1), flush=True)
if free == "free":
    os.unlink(filler)  # the disk has room again before the process ends
cap.close(timeout=2)
"""


@pytest.fixture
def disk(tmp_path):
    """A 1 MiB tmpfs (root only, else skipped) holding the spool root, filled to its last page."""
    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        (mount / "spool").mkdir(mode=0o700)
        yield mount


@pytest.fixture
def ledger(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_ledger(url, spool=str(tmp_path / "other-spool")).close()
    return url


def _record_then_exit(tmp_path, disk, ledger, free: str) -> subprocess.CompletedProcess:
    fill_disk(disk / "filler")
    holder = hold_write_lock(tmp_path / "ledger.db")
    try:
        return subprocess.run([sys.executable, "-c", RECORD_THEN_EXIT, ledger, str(disk / "spool"),
                               str(disk / "filler"), free], capture_output=True, text=True, timeout=120)
    finally:
        holder.communicate("")


def _tasks(tmp_path) -> list[str]:
    return [r["task_name"] for r in record_bodies(tmp_path / "ledger.db") if r["engine"] == "test"]


def test_a_pending_record_is_kept_in_the_spool_at_exit_and_shipped_later(tmp_path, disk, ledger):
    result = _record_then_exit(tmp_path, disk, ledger, "free")
    assert result.returncode == 0 and "returned None" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr
    assert "task late (t1) is not recorded yet" in result.stderr
    # At exit, one line: where the record waits, and what ships it.
    said = [line for line in result.stderr.splitlines() if "task late (t1)" in line and "not recorded yet" not in line]
    assert len(said) == 1, result.stderr
    assert "waits in the spool" in said[0] and "lineage-ledger spool ship" in said[0], said
    assert str(disk / "spool") in said[0]
    assert _tasks(tmp_path) == []  # the ledger was locked until now
    shipped = run_cli("spool", "ship", "--ledger", ledger, "--spool", str(disk / "spool"), cwd=tmp_path)
    assert shipped.returncode == 0, shipped.stderr
    assert _tasks(tmp_path) == ["late"]
    again = run_cli("spool", "ship", "--ledger", ledger, "--spool", str(disk / "spool"), cwd=tmp_path)
    assert again.returncode == 0 and _tasks(tmp_path) == ["late"], again.stderr  # once, not twice


def test_a_pending_record_the_spool_still_refuses_at_exit_is_said_not_recorded(tmp_path, disk, ledger):
    result = _record_then_exit(tmp_path, disk, ledger, "full")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if "task late (t1)" in line and "not recorded yet" not in line]
    assert len(said) == 1, result.stderr
    assert "NOT recorded" in said[0] and "this process ends" in said[0], said
    shipped = run_cli("spool", "ship", "--ledger", ledger, "--spool", str(disk / "spool"), cwd=tmp_path)
    assert shipped.returncode == 0 and _tasks(tmp_path) == [], shipped.stderr  # nothing anywhere: as said


# The command fills the spool's disk, and a process it leaves behind frees it once ``run`` has
# opened the ledger (its straight write, after the spool refused the record): the spool has room
# again before ``run`` gives up waiting for the locked ledger.
FILL_THEN_FREE_LATER = (
    "head -c 64000000 /dev/zero > {filler} 2>/dev/null; "
    "(for i in $(seq 1200); do ls -l /proc/$PPID/fd 2>/dev/null | grep -q ledger.db && break; sleep 0.05; done; "
    "rm -f {filler}) >/dev/null 2>&1 & true")


def test_run_keeps_in_the_spool_a_record_the_locked_ledger_did_not_take_once_the_disk_has_room(workdir):
    with small_tmpfs(workdir / "disk", "1m") as disk:
        run_cli("run", "--", "true", cwd=workdir, check_rc=0)  # the ledger exists
        env = {"LINEAGE_SPOOL": str(disk / "spool")}
        holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
        try:
            result = run_cli("run", "--ship-wait", "1", "-n", "filler", "--", "sh", "-c",
                             FILL_THEN_FREE_LATER.format(filler=disk / "filler"), cwd=workdir, env=env)
        finally:
            holder.communicate("")
        assert "Traceback" not in result.stderr and "No space left on device" in result.stderr, result.stderr
        assert "NOT recorded" not in result.stderr
        assert "waits in the spool" in result.stderr and "lineage-ledger spool ship" in result.stderr
        assert result.returncode == 0, result.stderr  # the command succeeded, its record is kept
        assert [r for r in record_bodies(workdir / ".lineage" / "ledger.db") if r["task_name"] == "filler"] == []
        run_cli("spool", "ship", cwd=workdir, env=env, check_rc=0)
        run_cli("spool", "ship", cwd=workdir, env=env, check_rc=0)
        tasks = [r for r in record_bodies(workdir / ".lineage" / "ledger.db") if r["task_name"] == "filler"]
        assert [t["status"] for t in tasks] == ["succeeded"]
