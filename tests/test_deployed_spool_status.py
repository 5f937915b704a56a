"""What waits in the spool while a PostgreSQL ledger is down, as an operator is told it: by
``lineage-ledger spool status``. (The lines a Snakemake run ends with, without a wait of zero
seconds: tests/test_snakemake_spool_first.py::test_an_unreachable_ledger_leaves_the_records_in_the_spool.)

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

