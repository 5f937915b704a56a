"""Start and stop a real BAASH service (``lineage-ledger baash serve``) for the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def require_mpi() -> None:
    try:
        import mpi4py  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("mpi4py is not installed: pip install 'lineage-ledger[mpi]' (make install does)")
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")) and not shutil.which("mpiexec"):
        pytest.skip("no mpiexec: pip install 'lineage-ledger[mpi]' brings MPICH's")


class BaashService:
    """``lineage-ledger baash serve`` on a Unix socket in the test's directory."""

    def __init__(self, workdir: Path, ranks: int = 4, *extra: str, socket: Path | None = None) -> None:
        require_mpi()
        self.workdir = workdir
        self.storage = workdir / "shared-storage"
        self.socket = socket or workdir / "run" / "baash.sock"
        self.ready = workdir / "ready.json"
        self.ready.unlink(missing_ok=True)  # a service restarted on the same storage writes it anew
        self.log = open(workdir / "service.log", "w")  # noqa: SIM115 - closed in stop()
        script = Path(sys.executable).parent / "lineage-ledger"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
        self.proc = subprocess.Popen(
            [str(script), "baash", "serve", "--ranks", str(ranks), "--storage", str(self.storage),
             "--socket", str(self.socket), "--ready-file", str(self.ready), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the BAASH service did not start:\n" + self.output())
            time.sleep(0.05)
        self.info = json.loads(self.ready.read_text())
        self.url = self.info["url"]

    def output(self) -> str:
        self.log.flush()
        return (self.workdir / "service.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

