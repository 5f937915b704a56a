"""An SQLite ledger on a file system that gives no file locks (NFS without its lock daemon:
``fcntl`` fails with ENOLCK, "No locks available").

SQLite takes ENOLCK for a lock another process holds ("a random NFS retry error") and
waits out its busy timeout: ``verify-lineage`` sat for two minutes and then said "database
is locked"; ``run`` left its record in the spool saying the ledger was "locked or slow?",
every run, and its writer left an empty ledger file behind. Nothing was locked, and no wait
would help. Now a ledger whose file system refuses locks is refused at once, saying so; the
records wait in the spool (nothing is lost) and ship once the locks work.

The file system is a real one: a FUSE mount (fusepy, Debian's python3-fusepy, run by the
system's Python) passing through to a directory, whose lock requests fail with ENOLCK.
"Once the locks work" is that directory's content on a local disk at the same path (the
mount gone), as after a remount with working locks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.fuse import fuse_mount, unmount

ENOLCK = """
def lock(self, path, fh, cmd, lock):
    raise FuseOSError(errno.ENOLCK)
"""


@pytest.fixture
def no_locks(tmp_path):
    """(the mount, the directory behind it, a call that unmounts it and puts that directory's
    files at the mount's path): a file system whose locks fail with ENOLCK."""
    with fuse_mount(tmp_path, ENOLCK) as (mount, back, server):

        def locks_work() -> None:
            unmount(mount, server)
            assert not os.path.ismount(mount)
            shutil.copytree(back, mount, dirs_exist_ok=True, copy_function=shutil.copy2)

        yield mount, back, locks_work


def waiting(cwd: Path) -> list[int]:
    return [entry["records"] for entry in json.loads(run_cli("spool", "status", "--json", cwd=cwd, check_rc=0).stdout)]


def test_run_keeps_its_record_says_why_and_ships_once_locks_work(no_locks, tmp_path):
    mount, back, locks_work = no_locks
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text("in\n")
    ledger = mount / "ledger.db"
    result = run_cli("run", "--ledger", ledger, "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c",
                     "cat in.txt > out.txt", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (f"{ledger}: opening the ledger failed: the file system of {mount} gives no file locks "
            "(No locks available)") in result.stderr, result.stderr
    assert "locked or slow?" not in result.stderr, result.stderr
    assert waiting(work) == [1]
    assert sorted(os.listdir(back)) == []  # no empty ledger file left behind
    locks_work()
    shipped = run_cli("spool", "ship", "--ledger", ledger, cwd=work)
    assert shipped.returncode == 0 and "shipped 1 record(s)" in shipped.stderr, shipped.stderr
    verified = run_cli("--ledger", ledger, "out.txt", cwd=work, program="verify-lineage")
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


def test_verify_lineage_of_a_ledger_there_says_why_at_once(no_locks, tmp_path):
    mount, back, locks_work = no_locks
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text("in\n")
    local = work / "ledger.db"
    run_cli("run", "--ledger", local, "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c", "cat in.txt > out.txt",
            cwd=work, check_rc=0)
    shutil.copy(local, back / "ledger.db")  # a closed ledger: its WAL checkpointed into the file
    ledger = mount / "ledger.db"
    result = run_cli("--ledger", ledger, "out.txt", cwd=work, program="verify-lineage")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert (f"error: {ledger}: opening the ledger failed: the file system of {mount} gives no file locks "
            "(No locks available)") in result.stderr, result.stderr
    assert sorted(os.listdir(back)) == ["ledger.db"]  # nothing left beside it
    locks_work()
    verified = run_cli("--ledger", ledger, "out.txt", cwd=work, program="verify-lineage")
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


