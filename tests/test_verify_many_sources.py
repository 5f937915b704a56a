"""verify-lineage of a file made from many sources (a merge of 1,500 per-sample files): the
files of its tree are checked a window at a time, their index rows read together and the
files hashed ahead in a child process, as a results directory's are. The answers are the
ones a check file by file gives: an edited source fails, naming it; a source removed since
is not a failure; the report is the same on one processor, where no child is started."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lineage_ledger import Hasher, Record, open_ledger
from tests.conftest import run_cli

COUNT = 1_500  # past the thousand files from which a child process hashes them


def _merged(tmp_path: Path) -> tuple[str, Path, Path]:
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(COUNT):
        (parts / f"sample-{i:05d}.tsv").write_text(f"sample\t{i}\n")
    merged = tmp_path / "merged.tsv"
    merged.write_text("all samples\n")
    hasher = Hasher()
    inputs = hasher.hash_many([str(p) for p in sorted(parts.iterdir())])
    now = datetime.now(timezone.utc)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "state")) as ledger:
        ledger.append_records([Record(engine="test", run_id="r", task_id="merge", task_name="merge",
                                      status="succeeded", started=now, ended=now, inputs=inputs,
                                      outputs=hasher.hash_many([str(merged)])).stored()])
    return url, parts, merged


def test_an_edited_source_among_many_fails_naming_it_and_a_removed_one_does_not(tmp_path):
    url, parts, merged = _merged(tmp_path)
    done = run_cli("--ledger", url, str(merged), program="verify-lineage", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    (parts / "sample-00777.tsv").write_text("sample\t777 edited by hand\n")
    (parts / "sample-01234.tsv").unlink()  # cleaned up since: intermediate files may be gone
    done = run_cli("--json", "--ledger", url, str(merged), program="verify-lineage", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    report = json.loads(done.stdout)
    failed = [f for f in report["failures"] if "sample-00777.tsv" in json.dumps(f)]
    assert failed, report["failures"]
    assert not [f for f in report["failures"] if "sample-01234.tsv" in json.dumps(f)], report["failures"]
    assert len(report["failures"]) == 1, report["failures"]


def test_the_report_is_the_same_on_one_processor_where_no_child_hashes(tmp_path):
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and two processors")
    url, parts, merged = _merged(tmp_path)
    (parts / "sample-00003.tsv").write_text("edited\n")
    (parts / "sample-01400.tsv").unlink()
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "state")}
    two = run_cli("--ledger", url, "--json", merged, cwd=tmp_path, env=env, program="verify-lineage")
    one = run_cli("--ledger", url, "--json", merged, cwd=tmp_path, env=env, program="verify-lineage",
                  prefix=("taskset", "-c", "0"))
    assert two.returncode == one.returncode == 1, (two.stderr, one.stderr)
    assert _same(two) == _same(one)


def _same(result) -> dict:
    """The report, less what differs from run to run (the first audit's note)."""
    report = json.loads(result.stdout)
    report.pop("first_audit", None)
    return report
