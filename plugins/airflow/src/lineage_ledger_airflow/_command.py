"""A LedgerOperator's shell command, run as a process group that ends with its try.

Airflow ends a try that overruns its ``execution_timeout`` by raising in the task process,
and one killed from outside (marked failed in the UI, cleared) by calling the operator's
``on_kill``. Either way only ``bash`` was ended (``subprocess.run`` kills the process it
started): a program or subshell the command had started ran on, and wrote the declared
outputs after the try was recorded failed (``outputs_not_written`` named the very file), or
beside the retry. So the command runs in a session of its own, and the whole group is ended
(SIGTERM, then SIGKILL), as Airflow's ``BashOperator`` ends its command's group.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping

log = logging.getLogger("lineage_ledger.airflow")

#: How long the group has to leave after SIGTERM before SIGKILL.
GRACE_S = 5.0


class Command:
    """One run of ``bash -c COMMAND``; :meth:`end` may be called from a signal handler."""

    def __init__(self, command: str, cwd: str, env: Mapping[str, str]) -> None:
        self.command = command
        self.cwd = cwd
        self.env = dict(env)
        self.process: subprocess.Popen[str] | None = None

    def run(self) -> tuple[int, str]:
        """Run it to its end: (exit status, what it wrote to stdout and stderr). Anything that
        interrupts the wait (Airflow's timeout, a signal) ends the whole group first."""
        self.process = subprocess.Popen(["bash", "-c", self.command], cwd=self.cwd, env=self.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        try:
            output, _ = self.process.communicate()
        except BaseException:
            self.end()
            raise
        return self.process.returncode, output

    def end(self) -> None:
        """End every process of the command's group (still running, or left by ``bash``)."""
        process = self.process
        if process is None:
            return
        group = process.pid  # the session leader's: the group's id while any member lives
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError:  # not ours any more: bash left, and another group has the id
            return
        log.warning("lineage-ledger: ended the command of this try (process group %d)", group)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline:
            process.poll()  # reap bash: a zombie still counts as a member
            try:
                os.killpg(group, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.poll()
