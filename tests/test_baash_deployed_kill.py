"""BAASH as deployed: ``lineage-ledger run`` steps of a pipeline record into a real service
while one of its MPI ranks is SIGKILLed, then ``verify-lineage`` checks the result.

What docs/baash.md promises and this checks end to end, with the project's own commands:
the daemon answers while the job restarts (a step's record is committed through shared
storage, or waits in the spool and is shipped by the next command), so every step's record
is in the ledger afterwards, ``verify-lineage`` of the last output exits 0, and exits 1
naming the file once a middle step's output is edited.
"""

from __future__ import annotations

import os
import random
import signal
import threading

import pytest

from lineage_ledger.backends import open_backend
from tests.conftest import run_cli
from tests.support.baash import BaashService, job_back

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

STEPS = 8


def test_run_steps_record_through_a_rank_killed_mid_write(tmp_path):
    (tmp_path / "svc").mkdir()
    service = BaashService(tmp_path / "svc", 4, "--vote-timeout", "3")
    work = tmp_path / "work"
    work.mkdir()
    env = {"LINEAGE_LEDGER_URL": service.url, "LINEAGE_SPOOL": str(tmp_path / "spool")}
    probe = open_backend(service.url)
    rng = random.Random(116)
    kills: list[tuple[int, int]] = []
    try:
        (work / "f0.txt").write_text("raw\n")
        for step in range(STEPS):
            killer = None
            if step in (2, 5):  # a rank dies while this step runs and writes its record
                status = probe.status()
                rank = rng.randrange(1, len(status["job"]["pids"]))
                pid = status["job"]["pids"][rank]
                kills.append((status["job"]["generation"], rank))
                killer = threading.Timer(rng.uniform(0.05, 0.6), os.kill, (pid, signal.SIGKILL))
                killer.start()
            result = run_cli("run", "-n", f"step{step}", "-i", f"f{step}.txt", "-o", f"f{step + 1}.txt", "--",
                             "sh", "-c", f"sleep 0.3; cat f{step}.txt > f{step + 1}.txt; echo {step} >> f{step + 1}.txt",
                             cwd=work, env=env)
            assert result.returncode == 0, (step, result.stdout, result.stderr)
            if killer is not None:
                killer.join()
        for generation, _rank in kills:
            job_back(probe, generation)
        ok = run_cli(f"f{STEPS}.txt", program="verify-lineage", cwd=work, env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert probe.record_count() == STEPS, ok.stdout + ok.stderr
        failures = probe.status()["failures"]
        assert [(f["generation"], f["rank"]) for f in failures] == kills, failures
        (work / "f3.txt").write_text("edited\n")
        broken = run_cli(f"f{STEPS}.txt", program="verify-lineage", cwd=work, env=env)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "f3.txt" in broken.stdout + broken.stderr
    finally:
        service.stop()
