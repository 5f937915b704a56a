"""A bioinformatics-shaped Snakemake workflow for tests and benchmarks (issues 16, 17).

``prepare(dest)`` copies the Snakefile and its script into ``dest`` and simulates its
inputs under ``dest/data`` (or, with ``data_dir``, in that directory, with ``dest/data`` a
symbolic link to it). Needs bwa, samtools and bcftools on PATH (Debian packages of those
names); ``require_tools()`` skips a test without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = ("bwa", "samtools", "bcftools")
SAMPLES = ("A", "B")
#: Jobs of one full run: bwa_index, 2 bwa_map, 2 samtools_sort, 2 index_and_qc, bcftools_call, report.
JOBS = {"bwa_index": 1, "bwa_map": 2, "samtools_sort": 2, "index_and_qc": 2, "bcftools_call": 1, "report": 1}


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_tools() -> None:
    import pytest

    missing = missing_tools()
    if missing:
        pytest.skip(f"the bioinformatics workflow needs {', '.join(missing)} "
                    "(apt-get install bwa samtools bcftools; .ci/run installs them)")


def prepare(dest: Path, *, data_dir: Path | None = None, reads: int = 2000) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "Snakefile", dest / "Snakefile")
    shutil.copytree(HERE / "scripts", dest / "scripts", dirs_exist_ok=True)
    target = data_dir or dest / "data"
    subprocess.run([sys.executable, str(HERE / "simulate.py"), str(target), "--reads", str(reads),
                    "--samples", *SAMPLES], check=True)
    if data_dir is not None:
        os.symlink(data_dir, dest / "data")
    return dest
