"""An engine's example workflow recorded into any back-end, then verified, as a user would.

The BAASH and Fabric tests use it so that a real engine (Parsl's example pipeline, through
its own ``Config`` and the executor wrapper) records into each of them, not only the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
PARSL_EXAMPLE = REPO / "examples" / "parsl" / "pipeline.py"


def run_parsl_example_and_verify(url: str, workdir: Path) -> dict:
    """Run the four-stage Parsl pipeline against ``url``; assert verify-lineage passes, and
    that a hand edit of the intermediate file is then caught. Returns the pipeline's summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_SPOOL"] = str(workdir / "spool")
    done = subprocess.run(
        [sys.executable, str(PARSL_EXAMPLE), "--workdir", str(workdir), "--ledger", url, "-n", "50"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    spool = {"LINEAGE_SPOOL": str(workdir / "spool")}
    ok = run_cli("--ledger", url, "report.json", program="verify-lineage", cwd=workdir, env=spool)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for stage in ("generate", "square", "total", "report"):
        assert f"parsl:{stage}" in ok.stdout, ok.stdout
    (workdir / "squares.txt").write_text("1\n4\n9\n")  # edited by hand
    broken = run_cli("--ledger", url, "report.json", program="verify-lineage", cwd=workdir, env=spool)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "squares.txt" in broken.stdout
    return summary
