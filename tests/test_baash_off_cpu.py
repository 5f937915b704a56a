"""BAASH's failure detector when the daemon itself is off the CPU.

The daemon takes a rank for hung when it has not heard the rank's heartbeat (one every
0.5 s) for the heartbeat timeout (20 s unless ``--heartbeat-timeout``; 8 s here, to keep
the waits short). On a loaded machine (or after Ctrl-Z of ``baash serve``, or a paused VM)
the daemon is the one that may not run for that long: it must not blame a rank for a
silence it could not hear. A rank that does stop while the daemon runs is still found by
the same timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from lineage_ledger import build_block
from lineage_ledger.backends.baash.client import BaashBackend
from tests.support.baash import BaashService, job_back
from tests.support.factories import make_records

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

#: The service's --heartbeat-timeout: past the 3 s gap in its looks at which the daemon counts
#: itself off the CPU, and long enough that a rank's beats (every 0.5 s) are not late under load.
HEARTBEAT_TIMEOUT_S = 8
#: How long the daemon keeps looking at its ranks, awake, while they are still stopped: the
#: monitor looks every 0.05 s, so the unfixed daemon blames one within this.
AWAKE_ALONE_S = 1.0


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[BaashService, BaashBackend]]:
    service = BaashService(tmp_path_factory.mktemp("baash-off-cpu"), 2, "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S))
    backend = BaashBackend(service.url, timeout=120)
    yield service, backend
    backend.close()
    service.stop()


def _append(backend: BaashBackend, run_id: str) -> None:
    backend.append([build_block([r.stored() for r in make_records(1, run_id=run_id)], backend.head()).stored()])


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        os.kill(pid, signum)


def test_a_daemon_off_the_cpu_past_the_heartbeat_timeout_takes_no_rank_for_hung(service):
    """Bug: the monitor counted a rank's silence from the last beat its reader thread had
    read, whether or not the daemon had been running since. Every process of the service
    stopped for 2 s past the heartbeat timeout and the daemon given the CPU back first (ranks
    beating again 1 s later): the monitor saw no beat for longer than the timeout, took the
    job for hung, killed it and logged a rank failure. (The daemon alone stopped so, its ranks
    beating all along: the same in 2 of 3 tries, as its reader threads and the monitor raced
    for the queued beats.) Now a silence counts only from the end of the daemon's own break."""
    svc, backend = service
    _append(backend, "before")
    status = backend.status()
    generation, failures, ranks = status["job"]["generation"], len(status["failures"]), status["job"]["pids"]
    _signal([svc.proc.pid, *ranks], signal.SIGSTOP)
    try:
        time.sleep(HEARTBEAT_TIMEOUT_S + 2)  # the stimulus: the machine away for longer than the timeout
        _signal([svc.proc.pid], signal.SIGCONT)
        backend.status()  # answered: the daemon runs again, its ranks still stopped
        awake_until = time.monotonic() + AWAKE_ALONE_S
        while time.monotonic() < awake_until and len(backend.status()["failures"]) == failures:
            time.sleep(0.05)
    finally:
        _signal([svc.proc.pid, *ranks], signal.SIGCONT)
    _append(backend, "after")
    status = backend.status()
    assert status["failures"][failures:] == [], status["failures"][failures:]
    assert status["job_up"] and status["job"]["generation"] == generation, status["job"]


def test_a_rank_stopped_while_the_daemon_runs_is_taken_for_hung(service):
    """The other side of the same timeout: rank 1 stopped (its connection open, its beats
    gone) is named after the heartbeat timeout, and the job comes back without it."""
    svc, backend = service
    status = job_back(backend, 0, said=svc.output)  # up (whatever the other test left)
    generation, failures, rank_1 = status["job"]["generation"], len(status["failures"]), status["job"]["pids"][1]
    stopped_at = time.time()
    os.kill(rank_1, signal.SIGSTOP)
    try:
        back = job_back(backend, generation, timeout=HEARTBEAT_TIMEOUT_S + 120, said=svc.output)
    finally:  # gone by now (the monitor kills a hung job's ranks); else let it run
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank_1, signal.SIGCONT)
    failure, = back["failures"][failures:]
    assert (failure["generation"], failure["rank"], failure["pid"]) == (generation, 1, rank_1), failure
    assert failure["at"] - stopped_at >= HEARTBEAT_TIMEOUT_S, "named before its beats were overdue"
    _append(backend, "after a restart")
