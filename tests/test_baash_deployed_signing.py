"""BAASH as deployed: a rank that dies after a round commits and before it signs the new head.

A real 2-rank service (a quorum is both keys). Rank 1 is stopped (SIGSTOP) before an append:
the round commits through shared storage, the gateway waits for rank 1's acknowledgement,
which carries its signature of the new tree head, and gives up after the vote timeout; then
rank 1 gets SIGKILL, as a node that died in the middle of the commit phase. What a user
checks the service with is ``lineage-ledger baash checkpoint --keys DIR/keys/ranks.pub``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lineage_ledger import build_block
from lineage_ledger.backends.baash.client import BaashBackend
from tests.conftest import run_cli
from tests.support.baash import BaashService, job_back
from tests.support.factories import make_records

pytestmark = pytest.mark.mpi


def _append(backend: BaashBackend, run_id: str) -> None:
    records = [r.stored() for r in make_records(2, run_id=run_id)]
    backend.append([build_block(records, backend.head()).stored()])


def test_a_rank_killed_before_signing_leaves_the_endorsed_head_and_later_ones(tmp_path):
    """Bug: the gateway sends the daemon the note of each round with the signatures it got,
    however few, and the daemon served it and kept it in DIR/checkpoint in place of the last
    endorsed one. A rank that died before signing left a note signed by 1 of 2 keys: `baash
    checkpoint --keys ranks.pub` exited 1, and after the restart every rank refused to
    endorse anything ('the last endorsed tree head ... does not verify'), for good. Now a
    note without a quorum of the ranks' keys is neither served nor kept (and logged)."""
    service = BaashService(tmp_path, 2, "--vote-timeout", "2")
    backend = BaashBackend(service.url, timeout=120)
    keys = service.storage / "keys" / "ranks.pub"
    env = {"LINEAGE_LEDGER_URL": service.url}

    def endorsed() -> str:
        done = run_cli("baash", "checkpoint", "--keys", str(keys), cwd=tmp_path, env=env)
        assert done.returncode == 0, (done.stderr, service.output()[-2000:])
        return done.stdout

    try:
        _append(backend, "before")
        assert "\n2\n" in endorsed()  # both keys signed the head of its 2 records
        status = backend.status()
        generation, pid = status["job"]["generation"], status["job"]["pids"][1]
        os.kill(pid, signal.SIGSTOP)
        try:
            _append(backend, "unsigned")  # decided by shared storage; rank 1 never acknowledges
        finally:
            os.kill(pid, signal.SIGKILL)
        assert "\n2\n" in endorsed()  # still the last head a quorum signed
        job_back(backend, generation)
        _append(backend, "after")
        assert f"\n{backend.record_count()}\n" in endorsed()  # the restarted ranks endorse again
    finally:
        backend.close()
        service.stop()
    assert "endorsing no tree head" not in service.output()


def test_a_rank_key_others_may_read_is_named_at_start_and_does_not_stop_the_job(tmp_path):
    """Bug: a rank's private key that others may read (an admin's `chmod -R g+r` on the
    storage, to share the job's logs) made that rank die at start (the core refuses to sign
    with such a key), and the job with it. A running service whose rank then failed never got
    its job back (each try waited 90 s for the ranks); `baash serve` waited 120 s, then ended
    with 'unexpected RuntimeError' and a traceback's pieces. Now the service refuses to start
    at once (exit 2), naming the key and what to do; a running job's rank signs nothing with
    it and keeps validating, and the job comes back."""
    service = BaashService(tmp_path, 2, "--vote-timeout", "2")
    backend = BaashBackend(service.url, timeout=120)
    key = service.storage / "keys" / "rank-1"
    try:
        _append(backend, "before")
        status = backend.status()
        key.chmod(0o640)
        os.kill(status["job"]["pids"][1], signal.SIGKILL)
        job_back(backend, status["job"]["generation"], timeout=60, said=service.output)
        _append(backend, "after")  # validated and committed by the job, rank 1 signing nothing
        assert backend.record_count() == 4
    finally:
        backend.close()
        service.stop()
    job_log = "".join(path.read_text() for path in (service.storage / "logs").glob("mpiexec-*.log"))
    assert f"baash rank 1: endorsing no tree head: {key}: a private key that other users may read" in job_log
    script = Path(sys.executable).parent / "lineage-ledger"  # at most 60 s: it waited 120 s, then ended
    serve = subprocess.run([str(script), "baash", "serve", "--ranks", "2", "--storage", str(service.storage),
                            "--socket", str(tmp_path / "again.sock")], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2, serve.stderr
    assert f"{key}: a private key that other users may read" in serve.stderr and "chmod 600" in serve.stderr
