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


def test_a_wide_lineage_holds_its_producers_summed_up_not_whole(tmp_path):
    """A summary made from the outputs of many tasks: its tree has a node per output, each
    naming the task that made it. The nodes kept each producer's record whole (its outputs,
    parameters and captured environment: about 20 KB here), so a summary of 150,000 tasks'
    outputs held 1.2 GB. Once a node's inputs are walked it keeps who ran which task, when,
    and how it ended; the tree and its checks answer as before."""
    import gc
    import tracemalloc

    from lineage_ledger._verification.verify import verify_lineage

    producers = 600
    source = tmp_path / "src.txt"
    source.write_text("source")
    src = hash_file(str(source))
    environment = {f"PKG_{i}": "x" * 40 for i in range(80)}  # a captured environment's size
    (tmp_path / "parts").mkdir()
    records, inputs = [], {}
    for i in range(producers):
        part = tmp_path / "parts" / f"part-{i:04d}.txt"
        part.write_text(f"part {i}")
        made = hash_file(str(part))
        inputs[made.path] = made.entry()
        records.append(Record(engine="test", run_id="wide", task_id=f"t{i}", task_name="chunk", status="succeeded",
                              started=T0, ended=T0 + timedelta(seconds=i), inputs={src.path: src.entry()},
                              outputs={made.path: made.entry()}, environment=environment).stored())
    (tmp_path / "summary.txt").write_text("summary")
    made = hash_file(str(tmp_path / "summary.txt"))
    records.append(Record(engine="test", run_id="wide", task_id="merge", task_name="merge", status="succeeded",
                          started=T0, ended=T0 + timedelta(days=1), inputs=inputs,
                          outputs={made.path: made.entry()}).stored())
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "build-state")) as ledger:
        ledger.append_records(records)
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "state")) as ledger:
        ledger.tree_head()
        tracemalloc.start()
        try:
            report = verify_lineage(ledger, [str(tmp_path / "summary.txt")])
            ledger._decoded.clear()  # the look-ups' own cache is bounded apart (10,000 records)
            ledger._placed.clear()
            gc.collect()
            held, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert report.ok, report.failures
    tree = report.targets[0].tree
    assert len(tree.parents) == producers
    assert {p.producer.record.task_name for p in tree.parents} == {"chunk"}
    assert all(p.parents[0].kind == "source" for p in tree.parents)
    # Whole records: about 20 KB a producer (12 MiB); summed up, about 2.5 KB.
    assert held < 4 * 2**20, f"the report holds {held / 2**20:.1f} MiB for {producers} producers"
