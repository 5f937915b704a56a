"""What waits in the spool while a PostgreSQL ledger is down, as an operator is told it: by
``lineage-ledger spool status``, and by the lines a Snakemake run ends with.

A directory output is kept in the ledger with a manifest record whose times are the epoch
(its bytes depend on the manifest alone, core/_files/manifest.py). While such a record waits
in the spool with its task's, "the oldest ended" must be the task's end, not 1970: an alert
on ``oldest_age_s`` (records waiting for over an hour, say) must not fire for a run that
ended seconds ago.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.support.snakemake import require_snakemake, run

pytest.importorskip("psycopg", reason="a postgresql:// ledger needs lineage-ledger[postgres]")

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/ledger"  # nothing listens on port 1


def test_the_oldest_waiting_record_is_a_task_not_a_directory_manifest(cli, workdir):
    began = datetime.now(timezone.utc)
    made = cli("run", "--ledger", UNREACHABLE, "-n", "index", "-o", "ref", "--",
               "sh", "-c", "mkdir -p ref && echo x > ref/genome.idx")
    assert made.returncode == 0 and "waits" in made.stderr, made.stderr
    waiting, = json.loads(cli("spool", "status", "--json", check_rc=0).stdout)
    assert waiting["records"] == 2  # the task's record and the directory's manifest
    oldest = datetime.fromisoformat(waiting["oldest"])
    assert began - timedelta(seconds=5) <= oldest <= datetime.now(timezone.utc), waiting
    assert 0 <= waiting["oldest_age_s"] < 600, waiting
    text = cli("spool", "status", check_rc=0).stdout
    assert " d ago" not in text, text


def test_a_snakemake_run_says_how_its_records_wait_without_a_zero_second_wait(tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n')
    result = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-url", UNREACHABLE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    told = [line for line in result.stderr.splitlines() if line.startswith("lineage-ledger:")]
    assert any("wait in the spool" in line and "lineage-ledger spool ship" in line for line in told), told
    assert not any("within 0.0s" in line for line in told), told
