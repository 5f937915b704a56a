"""Faults the spool and ledger tests make for real: another process holding an SQLite
ledger's write lock, a small tmpfs that fills up, and a root that loses its power over file
modes. Each is a real process, a real mount or a real capability set, never a mock."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

#: A command prefix that takes from root the capabilities that let it ignore file modes, so a
#: read-only file or directory refuses root as it refuses any user (``setpriv``, util-linux).
ROOT_POWERS_OFF = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def without_root_file_powers() -> tuple[str, ...]:
    """:data:`ROOT_POWERS_OFF` when running as root, else nothing (a user has no such powers)."""
    return ROOT_POWERS_OFF if os.geteuid() == 0 else ()


def hold_write_lock(db: Path) -> subprocess.Popen:
    """Another process holding the SQLite ledger ``db``'s write lock (``BEGIN IMMEDIATE``)
    until its stdin closes: ``holder.communicate("")`` lets go."""
    code = ("import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``: "64k", "1m") mounted at the new directory
    ``mount`` (root only, else the test is skipped), unmounted afterwards."""
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextlib.contextmanager
def spool_on_a_full_disk(base: Path, size: str = "1m") -> Iterator[Path]:
    """A spool directory on a tmpfs of ``size`` below ``base`` filled to its last page
    (root only, else the test is skipped): the spool a task finds when its disk is full."""
    with small_tmpfs(base / "full-disk", size) as mount:
        (mount / "spool").mkdir()
        fill_disk(mount / "filler")
        yield mount / "spool"


def fill_disk(filler: Path) -> None:
    """Write zeros to ``filler`` until its file system has no room left (ENOSPC)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(fd)


def record_bodies(db: Path) -> list[dict]:
    """The record bodies of the SQLite ledger ``db``, oldest first, read with :mod:`sqlite3`
    (no lineage-ledger code: opening the ledger would replay, audit or ship)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT body FROM ll_records ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(bytes(body) if not isinstance(body, str) else body) for (body,) in rows]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where a connection is refused, for as long as the block runs: bound
    by this process and never listened on, so no other process can take it meanwhile (a port
    bound and closed at once could be another test run's server by the time it is dialled)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-qq", "-o", "/dev/null", "-e", "trace=none", "true"], capture_output=True)
    return probe.returncode == 0


#: Tests that hold a process in a system call with strace's syscall delays (a window of
#: microseconds made seconds long, so that what runs in it does not depend on luck).
needs_strace = pytest.mark.skipif(not _strace_works(), reason="needs strace, allowed to trace (ptrace)")
