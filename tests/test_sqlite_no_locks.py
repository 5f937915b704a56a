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
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

SYSTEM_PYTHON = "/usr/bin/python3"

NO_LOCKS_FS = r'''
import errno, os, sys
from fusepy import FUSE, FuseOSError, Operations

class NoLocks(Operations):
    def __init__(self, root):
        self.root = root
    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))
    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                                            "st_size", "st_uid")}
    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._p(path))]
    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)
    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)
    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid)
    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)
    def rmdir(self, path):
        os.rmdir(self._p(path))
    def unlink(self, path):
        os.unlink(self._p(path))
    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))
    def utimens(self, path, times=None):
        os.utime(self._p(path), times)
    def open(self, path, flags):
        return os.open(self._p(path), flags)
    def create(self, path, mode, fi=None):
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)
    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)
    def truncate(self, path, length, fh=None):
        os.truncate(self._p(path), length)
    def flush(self, path, fh):
        return 0
    def release(self, path, fh):
        os.close(fh)
    def fsync(self, path, datasync, fh):
        os.fsync(fh)
    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}
    def lock(self, path, fh, cmd, lock):
        raise FuseOSError(errno.ENOLCK)

FUSE(NoLocks(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True)
'''


@pytest.fixture
def no_locks(tmp_path):
    """(the mount, the directory behind it, a call that unmounts it and puts that directory's
    files at the mount's path): a file system whose locks fail with ENOLCK."""
    if not os.path.exists(SYSTEM_PYTHON) or not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse and the system's python3")
    if subprocess.run([SYSTEM_PYTHON, "-c", "import fusepy"], capture_output=True).returncode:
        pytest.skip("needs fusepy for the system's python3 (Debian: python3-fusepy)")
    back, mount = tmp_path / "back", tmp_path / "mnt"
    back.mkdir()
    mount.mkdir()
    script = tmp_path / "no_locks_fs.py"
    script.write_text(NO_LOCKS_FS)
    log = open(tmp_path / "fs.log", "wb")
    server = subprocess.Popen([SYSTEM_PYTHON, str(script), str(back), str(mount)], stdout=log, stderr=log)

    def unmount() -> None:
        if os.path.ismount(mount):
            for command in (["fusermount3", "-u", str(mount)], ["umount", str(mount)]):
                if shutil.which(command[0]) and subprocess.run(command, capture_output=True).returncode == 0:
                    break
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    def locks_work() -> None:
        unmount()
        assert not os.path.ismount(mount)
        shutil.copytree(back, mount, dirs_exist_ok=True, copy_function=shutil.copy2)

    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mount):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"cannot mount a FUSE file system here: {(tmp_path / 'fs.log').read_text()[-500:]}")
            time.sleep(0.1)
        yield mount, back, locks_work
    finally:
        unmount()
        log.close()


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


