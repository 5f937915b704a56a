"""A real process caught in the middle of reading a file, for tests of what it does when
another process truncates the file under it.

The moment is read from the kernel, not guessed with a sleep: the process is stopped
(SIGSTOP, every thread of it) once ``/proc`` shows it has begun reading the file and not
finished: a mapping of the file in ``/proc/PID/maps`` (a read through an mmap), or a
descriptor of the file whose offset is past 0 and short of the file's size (``read`` or
``readinto`` in chunks). While it is stopped the test changes the file, then lets it go on
(SIGCONT). Linux only.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["stop_while_reading"]


def _reading(pid: int, path: str, size: int) -> bool:
    """Whether process ``pid`` has begun reading ``path`` (``size`` bytes) and not finished."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            if any(line.rstrip("\n").endswith(" " + path) for line in maps):
                return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != path:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    pos = int(next(line for line in info if line.startswith("pos:")).split()[1])
            except (OSError, StopIteration):
                continue  # closed meanwhile
            if 0 < pos < size:
                return True
    except OSError:
        return False  # the process is gone
    return False


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("T", "t")
    except OSError:
        return True  # gone: nothing left to wait for


def stop_while_reading(pid: int, path: str, size: int, *, timeout: float = 120.0) -> bool:
    """Stop process ``pid`` while it is in the middle of reading ``path`` (of ``size``
    bytes): True once it is stopped there (the caller sends SIGCONT), False if it ended, or
    finished with the file, before it was caught (the caller runs it again). A stop that
    lands just after the read ended is undone (SIGCONT) and watching goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
            return False
        if not _reading(pid, path, size):
            time.sleep(0.0005)  # pacing the polls only: the stop below is what decides
            continue
        os.kill(pid, signal.SIGSTOP)
        while not _stopped(pid):
            time.sleep(0.0005)
        if _reading(pid, path, size):
            return True
        os.kill(pid, signal.SIGCONT)
    raise TimeoutError(f"process {pid} did not read {path} within {timeout} s")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
