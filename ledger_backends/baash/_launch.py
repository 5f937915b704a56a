"""Starting the MPI job's ``mpiexec`` and keeping what it prints (the monitor's helpers)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import subprocess
import sys
from collections import deque

__all__ = ["YIELD_SETTINGS", "keep_output", "mpiexec_command", "wait_exited"]

log = logging.getLogger("lineage_ledger.baash")

# MPICH spins in its progress loop; with more ranks than cores (4 on 2 in CI) a spinning
# rank takes the core from the one it waits for. The ranks already poll with sleeps;
# these make MPICH's own waits yield (usleep in progress, sched_yield after 100 polls).
YIELD_SETTINGS = {"MPIR_CVAR_CH4_PROGRESS_THROTTLE": "1", "MPIR_CVAR_POLLS_BEFORE_YIELD": "100",
                  "MPIR_CVAR_ENABLE_GPU": "0"}


def mpiexec_command() -> list[str]:
    """``$BAASH_MPIEXEC`` if set (e.g. ``srun --mpi=pmi2``), else the ``mpiexec`` next to Python."""
    configured = os.environ.get("BAASH_MPIEXEC")
    if configured:
        return shlex.split(configured)
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return [local if os.path.exists(local) else "mpiexec", "-launcher", "fork"]


def keep_output(proc: subprocess.Popen[str], path: str, lines: deque[str]) -> None:
    """Keep the job's output: the last lines in ``lines``, all of it in ``path`` (DIR/logs/)."""
    assert proc.stdout is not None
    log_file = None
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        # Private (the job's output names hosts and paths): opened so, not umask's 0644.
        log_file = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600), "a")
    except OSError as err:
        log.warning("baash: cannot write the MPI job's output to %s: %s", path, err)
    # Read to the end whatever happens to the file: a reader that stopped (a full disk)
    # would leave the job blocked on a full pipe.
    for line in proc.stdout:
        lines.append(line.rstrip())
        if log_file is None:
            continue
        try:
            log_file.write(line)
            log_file.flush()
        except OSError as err:
            log.warning("baash: stopped writing the MPI job's output to %s: %s", path, err)
            with contextlib.suppress(OSError):
                log_file.close()
            log_file = None
    if log_file is not None:
        with contextlib.suppress(OSError):
            log_file.close()


def wait_exited(proc: subprocess.Popen[str], timeout: float) -> bool:
    """Whether ``proc`` exited within ``timeout`` seconds, woken by its exit itself.

    ``Popen.wait(timeout)`` polls, sleeping up to 50 ms between looks: that much of every stop
    and every restart went by after mpiexec had already exited. A pidfd becomes readable the
    moment the process exits (Linux 5.3). The pid stays ``proc``'s until it is reaped, which
    only ``poll``/``wait`` do, from the one thread that waits for this job.
    """
    if proc.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # an older kernel (or not Linux): Popen's own wait
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        select.select([pidfd], [], [], timeout)  # retried with the time left if a signal interrupts it
    finally:
        os.close(pidfd)
    return proc.poll() is not None
