"""What the BAASH benchmarks share: a real service started and stopped, and a chain to send."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import synthetic_record

from lineage_ledger import build_block
from lineage_ledger._model import StoredBlock
from lineage_ledger.backends import open_backend

CORES = os.cpu_count() or 1


def oversubscribed(ranks: int) -> str:
    return f"{ranks} ranks on {CORES} cores" + (" (oversubscribed)" if ranks > CORES else "")


def make_chain(blocks: int, per_block: int = 4, run_id: str = "bench") -> list[StoredBlock]:
    """``blocks`` blocks of ``per_block`` records (the paper's default batch is 4)."""
    chain, prev = [], None
    for height in range(blocks):
        records = [synthetic_record(height * per_block + i, run_id).stored() for i in range(per_block)]
        block = build_block(records, prev)
        chain.append(block.stored())
        prev = block.header
    return chain


class Service:
    """``lineage-ledger baash serve`` in a temporary directory, as a user runs it."""

    def __init__(self, ranks: int, *extra: str) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-baash-")
        self.storage = Path(self.tmp.name) / "storage"
        ready = Path(self.tmp.name) / "ready.json"
        sock = Path(self.tmp.name) / "run" / "baash.sock"
        script = Path(sys.executable).parent / "lineage-ledger"
        self.proc = subprocess.Popen(
            [str(script), "baash", "serve", "--ranks", str(ranks), "--storage", str(self.storage),
             "--socket", str(sock), "--ready-file", str(ready), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the BAASH service did not start")
            time.sleep(0.05)
        self.url = json.loads(ready.read_text())["url"]
        self.backend = open_backend(self.url)

    def send(self, chain: list[StoredBlock], per_append: int) -> float:
        """Append ``chain`` in appends of ``per_append`` blocks; seconds taken."""
        started = time.perf_counter()
        for start in range(0, len(chain), per_append):
            self.backend.append(chain[start:start + per_append])
        return time.perf_counter() - started

    def stop(self) -> None:
        if hasattr(self, "backend"):
            self.backend.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.tmp.cleanup()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
