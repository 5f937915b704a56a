"""A BAASH daemon told to stop (SIGTERM: ``systemctl stop``, Ctrl-C) stops at once, and cleanly.

Clean: the MPI job that is up is told to stop and exits by itself (mpiexec's status 0, not a
kill), what was committed is in shared storage for the next start, and the socket and every
process of the job are gone. At once: the daemon waits on the events it stops for, not on a
polling tick, also while the job is still starting (ranks restoring a long chain, or an
``srun`` of ``$BAASH_MPIEXEC`` still waiting for its allocation), which a SIGTERM did not end:
the daemon kept waiting for the job to come up, for two minutes, then failed and left the
job's launcher running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lineage_ledger.backends import open_backend
from lineage_ledger.backends.baash.liveness import process_gone
from tests.backend_conformance import chain_of
from tests.support.baash import BaashService, require_mpi
from tests.support.factories import make_records

pytestmark = pytest.mark.mpi

#: Far more than a prompt stop needs on a loaded machine (it takes well under a second), and
#: far less than the two minutes the daemon waited before for a job that was starting.
STOP_BOUND = 60.0


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the daemon exited early:\n" + log.read_text()
        assert time.monotonic() < deadline, f"{path.name} did not appear:\n" + log.read_text()
        time.sleep(0.05)


def test_sigterm_while_the_job_starts_ends_the_daemon_and_its_launcher_at_once(tmp_path):
    require_mpi()
    started = tmp_path / "launcher.pid"
    # The job's launcher as $BAASH_MPIEXEC names it: one that has not started the ranks yet
    # (an srun waiting in the queue). It says it runs, then waits; only a kill ends it.
    launcher = tmp_path / "queued-srun"
    launcher.write_text(f'#!/bin/sh\necho $$ > "{started}.tmp" && mv "{started}.tmp" "{started}"\nexec sleep 3600\n')
    launcher.chmod(0o700)
    socket_path, ready, log_path = tmp_path / "run" / "baash.sock", tmp_path / "ready.json", tmp_path / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["BAASH_MPIEXEC"] = str(launcher)
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "lineage-ledger"), "baash", "serve", "--ranks", "2",
             "--storage", str(tmp_path / "storage"), "--socket", str(socket_path), "--ready-file", str(ready),
             "--start-timeout", "600"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for(started, daemon, log_path)
        pid = int(started.read_text())
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon was still running {STOP_BOUND:g} s after SIGTERM, its job still starting:\n"
                        + log_path.read_text())
        said = log_path.read_text()
        assert code == 0, said
        assert "Traceback" not in said and "failed" not in said, said  # a stop, not a failed start
        assert process_gone(pid), "the job's launcher was left running"
        assert not ready.exists(), "a daemon stopped before its job came up said it was ready"
        assert not socket_path.exists(), "the daemon's socket was left behind"
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        if started.exists() and not process_gone(int(started.read_text())):
            os.kill(int(started.read_text()), signal.SIGKILL)


def test_sigterm_stops_a_running_job_cleanly_and_keeps_what_it_committed(tmp_path):
    (tmp_path / "svc").mkdir()
    service = BaashService(tmp_path / "svc", 2)
    blocks = chain_of(make_records(5), 2)
    try:
        ranks = list(service.info["job"]["pids"])
        open_backend(service.url).append(blocks)
        service.proc.send_signal(signal.SIGTERM)
        try:
            code = service.proc.wait(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon was still running {STOP_BOUND:g} s after SIGTERM:\n" + service.output())
        said = service.output()
        assert code == 0, said
        # Told to stop, the job ended by itself: mpiexec's status 0 (a killed job has none).
        assert "the MPI job stopped (mpiexec exited with status 0" in said, said
        assert all(process_gone(pid) for pid in ranks), said
        assert not service.socket.exists(), "the daemon's socket was left behind"
    finally:
        service.stop()
    again = BaashService(tmp_path / "svc", 2)
    try:
        head = open_backend(again.url).head()
        assert head is not None and (head.height, head.id) == (blocks[-1].height, blocks[-1].id)
    finally:
        again.stop()
