"""A lineage too wide to draw: a summary made from the outputs of thousands of tasks. Its
tree drew every file (45 MB of text for 150,000); it now draws ``NODES_SHOWN`` lines and says
how many files it holds besides, all of them still checked: one edited far down the list
fails the verification, named under FAILED, and ``--json`` lists every file."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from lineage_ledger import Record, open_ledger
from lineage_ledger._cli.render import NODES_SHOWN
from lineage_ledger._files.hashing import hash_file
from tests.conftest import run_cli

PARTS = NODES_SHOWN + 100  # source files the summary was made from
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    base = tmp_path_factory.mktemp("wide")
    (base / "parts").mkdir()
    inputs = {}
    for i in range(PARTS):
        part = base / "parts" / f"part-{i:05d}.txt"
        part.write_text(f"part {i}")
        inputs[str(part)] = hash_file(str(part)).entry()
    (base / "summary.txt").write_text("summary")
    made = hash_file(str(base / "summary.txt"))
    record = Record(engine="test", run_id="merge", task_id="merge", task_name="merge", status="succeeded",
                    started=T0, ended=T0 + timedelta(minutes=1), inputs=inputs, outputs={made.path: made.entry()})
    url = f"sqlite:///{base}/ledger.db"
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        ledger.append_records([record.stored()])
    return base, url


def _verify(base, url, tmp_path, *args):
    return run_cli(*args, "--ledger", url, str(base / "summary.txt"), cwd=base, program="verify-lineage",
                   env={"LINEAGE_STATE_DIR": str(tmp_path / "state")})


def test_the_tree_is_cut_after_so_many_lines_and_says_how_many_more(summary, tmp_path):
    base, url = summary
    result = _verify(base, url, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) < NODES_SHOWN + 20, len(lines)
    assert f"... and {PARTS + 1 - NODES_SHOWN} more files in this lineage, checked, not shown" in result.stdout
    listed = json.loads(_verify(base, url, tmp_path, "--json").stdout)
    assert len(listed["targets"][0]["lineage"]["inputs"]) == PARTS  # JSON lists every one


def test_a_file_past_those_drawn_is_still_checked(summary, tmp_path):
    base, url = summary
    edited = base / "parts" / f"part-{PARTS - 3:05d}.txt"  # sorted last: past the lines drawn
    original = edited.read_text()
    edited.write_text("edited by hand")
    try:
        result = _verify(base, url, tmp_path)
    finally:
        edited.write_text(original)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    assert "FAILED" in result.stdout and edited.name in result.stdout.split("FAILED", 1)[1]
