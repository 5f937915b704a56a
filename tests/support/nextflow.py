"""Running the real ``nextflow-ledger`` (and ``nextflow``) in tests.

Nextflow comes from ``plugins/nextflow/tools/install-nextflow.sh`` (``make install-nextflow``),
cached outside the checkout; without it :func:`require_nextflow` skips the test with the
reason. Each run gets its own ``NXF_HOME`` under the test's directory, never the real home.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "nextflow"
BIN = Path(sys.executable).parent
NXF_RELEASE = "25.04.4"

#: A pipeline with a task that fails for good (errorStrategy 'ignore', so the run goes on)
#: and one that fails on its first attempt and succeeds on its retry, whose output is published
#: in publishDir's default mode (a symbolic link into the work directory).
FAILING_PIPELINE = """
process BROKEN {
  errorStrategy 'ignore'
  output: path 'never.txt'
  script: "echo 'broken on purpose' >&2; exit 7"
}
process FLAKY {
  errorStrategy 'retry'
  maxRetries 1
  publishDir 'results'
  output: path 'flaky.txt'
  script:
  \"\"\"
  if [ ${task.attempt} -eq 1 ]; then echo 'first try fails' >&2; exit 3; fi
  echo 'second try works' > flaky.txt
  \"\"\"
}
workflow {
  BROKEN()
  FLAKY()
}
"""


def launcher() -> Path | None:
    """The launcher install-nextflow.sh builds, or ``None``."""
    explicit = os.environ.get("LINEAGE_LEDGER_NEXTFLOW_CACHE")
    cache = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineage-ledger"
    path = cache / f"nextflow-{NXF_RELEASE}" / "bin" / "nextflow"
    return path if os.access(path, os.X_OK) else None


def require_nextflow() -> Path:
    path = launcher()
    if path is None:
        pytest.skip(f"Nextflow {NXF_RELEASE} is not built; `make install-nextflow` assembles it from Maven Central "
                    "(needs mvn and Java 17..24)")
    if not (BIN / "nextflow-ledger").exists():
        pytest.skip("nextflow-ledger is not installed; `make install` installs plugins/nextflow")
    return path


def env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a run: no LINEAGE_ settings of the caller, a private NXF_HOME."""
    result = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "NXF_"))}
    result.update(NXF_HOME=str(home / ".nxf-home"), NXF_ANSI_LOG="false", NXF_OFFLINE="true",
                  LINEAGE_NEXTFLOW=str(require_nextflow()), PATH=f"{BIN}{os.pathsep}{result.get('PATH', '')}")
    result.update(extra)
    return result


def run(program: str, *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``nextflow-ledger``, ``verify-lineage`` or ``lineage-ledger``; ``nextflow`` is the launcher."""
    command = str(require_nextflow()) if program == "nextflow" else str(BIN / program)
    return subprocess.run([command, *args], cwd=cwd, env=env(cwd), capture_output=True, text=True,
                          timeout=timeout)


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".nextflow*", ".lineage", "results", "work"))
    return dest


def records(cwd: Path) -> list[dict[str, Any]]:
    """Every record of the ledger in ``cwd/.lineage``, through ``lineage-ledger log --json``."""
    result = run("lineage-ledger", "log", "-n", "0", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
