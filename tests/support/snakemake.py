"""Running the real ``snakemake`` and ``snakemake-ledger`` commands in tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "snakemake"
BIN = Path(sys.executable).parent


def require_snakemake() -> None:
    if not (BIN / "snakemake").exists() or not (BIN / "snakemake-ledger").exists():
        pytest.skip("snakemake or snakemake-ledger is not installed; `make install` installs both")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LINEAGE_", "SNAKEMAKE_LOGGER_LEDGER_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(program: str, *args: str, cwd: Path, timeout: float = 180, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / program), *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".snakemake", ".lineage", "results",
                                                                   "work", "logs", "__pycache__"))
    return dest
