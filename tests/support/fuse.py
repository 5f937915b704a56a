"""A real file system whose file locks behave as a test needs: a FUSE mount (fusepy, Debian's
python3-fusepy, run by the system's Python) passing every call through to a directory on a
local disk, but answering lock requests with the test's own ``lock`` method (ENOLCK, as NFS
without its lock daemon does; or a lock that waits, to catch a process inside its lock call)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["SYSTEM_PYTHON", "fuse_mount", "unmount"]

SYSTEM_PYTHON = "/usr/bin/python3"

_PASSTHROUGH = r'''
import errno, os, sys
from fusepy import FUSE, FuseOSError, Operations

class Passthrough(Operations):
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
'''


@contextlib.contextmanager
def fuse_mount(tmp_path: Path, lock_method: str, *args: str) -> Iterator[tuple[Path, Path, subprocess.Popen]]:
    """(the mount, the directory behind it, the file system's process): ``lock_method`` is
    the source of a ``def lock(self, path, fh, cmd, lock):`` method (``args`` reach it as
    ``sys.argv[3:]``). Skipped where FUSE or fusepy is missing; unmounted at the end."""
    if not os.path.exists(SYSTEM_PYTHON) or not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse and the system's python3")
    if subprocess.run([SYSTEM_PYTHON, "-c", "import fusepy"], capture_output=True).returncode:
        pytest.skip("needs fusepy for the system's python3 (Debian: python3-fusepy)")
    back, mount = tmp_path / "back", tmp_path / "mnt"
    back.mkdir()
    mount.mkdir()
    script = tmp_path / "test_fs.py"
    script.write_text(_PASSTHROUGH + "\nclass TestFs(Passthrough):\n" + textwrap.indent(textwrap.dedent(lock_method), "    ")
                      + "\nFUSE(TestFs(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True)\n")
    log = open(tmp_path / "fs.log", "wb")
    server = subprocess.Popen([SYSTEM_PYTHON, str(script), str(back), str(mount), *args], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mount):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"cannot mount a FUSE file system here: {(tmp_path / 'fs.log').read_text()[-500:]}")
            time.sleep(0.1)
        yield mount, back, server
    finally:
        unmount(mount, server)
        log.close()


def unmount(mount: Path, server: subprocess.Popen) -> None:
    if os.path.ismount(mount):
        for command in (["fusermount3", "-u", str(mount)], ["umount", str(mount)]):
            if shutil.which(command[0]) and subprocess.run(command, capture_output=True).returncode == 0:
                break
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
