"""What the plugin imports into Snakemake's own process (issue 16: overhead where users run it).

Importing ``lineage_ledger`` costs Snakemake's main thread about 0.1 s of CPU; the ledger
URL's check did it before the DAG was even built, and the temp() hashing and the end of the
run did it again. With the default SQLite ledger, a first run does not import it into
Snakemake's process at all (the recording process does the ledger work); a later run, whose
pre-run check reads the ledger, does. ``bench/bench_snakemake_bio.py`` measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.snakemake import clean_env, require_snakemake

pytestmark = pytest.mark.slow

# `snakemake` (snakemake.cli.main) with an atexit hook that says what the process imported.
LAUNCHER = """
import atexit, json, os, sys
def said():
    with open(os.environ["IMPORTED"], "w") as out:
        json.dump("lineage_ledger" in sys.modules, out)
atexit.register(said)
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
"""

WORKFLOW = """
rule all:
    input: "b.txt"

rule a:
    input: "src.txt"
    output: temp("t.txt")
    shell: "tr a-z A-Z < {input} > {output}"

rule b:
    input: "t.txt"
    output: "b.txt"
    shell: "cat {input} {input} > {output}"
"""


def imported(workflow: Path, *args: str) -> bool:
    report = workflow / "imported.json"
    result = subprocess.run([sys.executable, "-c", LAUNCHER, "--cores", "1", "--logger", "ledger", *args],
                            cwd=workflow, env=clean_env(IMPORTED=str(report)), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report.read_text())


def test_a_first_run_does_not_import_the_ledger_into_snakemakes_process(tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text(WORKFLOW)
    (tmp_path / "src.txt").write_text("some text\n")
    # A first run with a source file (checked), a temp() output (hashed on Snakemake's
    # main thread before Snakemake deletes it), the URL check, the default policy.
    assert imported(tmp_path) is False
    assert (tmp_path / ".lineage" / "ledger.db").exists()
    # The second run's check reads the ledger: then it is imported (the check shows it ran).
    (tmp_path / "src.txt").write_text("other text\n")
    assert imported(tmp_path, "--logger-ledger-url", f"sqlite:///{tmp_path / '.lineage' / 'ledger.db'}") is True
