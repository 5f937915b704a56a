"""A lineage deeper than Python's recursion limit: a file updated in place by a task a day
has a chain of versions as long as its age in days. Every command walked trees by recursion
and refused past about 900 generations (exit 2, "the lineage is too deep to walk"), the full
audit of the whole ledger included. They walk without recursion now, print the first
``DEPTH_SHOWN`` generations, and still check every one: a file edited far back in the chain
fails the verification of its last version."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from lineage_ledger import Record, open_ledger
from lineage_ledger._cli.render import DEPTH_SHOWN
from lineage_ledger._files.hashing import hash_file
from tests.conftest import run_cli

DEPTH = 1_500  # generations: past the default recursion limit (1,000) with room to spare
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def build_chain(base, url: str, depth: int = DEPTH) -> str:
    """state-0 (a source) -> task 1 -> state-1 -> task 2 -> ... -> state-``depth``, each
    version a file of its own under ``base``, in the ledger at ``url`` (any back-end)."""
    (base / "f").mkdir()
    (base / "f" / "state-0").write_text("initial")
    previous = hash_file(str(base / "f" / "state-0"))
    records = []
    for i in range(1, depth + 1):
        out = base / "f" / f"state-{i}"
        out.write_text(f"state after step {i}")
        written = hash_file(str(out))
        records.append(Record(engine="test", run_id="daily", task_id=f"day-{i}", task_name="update",
                              status="succeeded", started=T0 + timedelta(days=i), ended=T0 + timedelta(days=i, hours=1),
                              inputs={previous.path: previous.entry()}, outputs={written.path: written.entry()}))
        previous = written
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        ledger.append_records([r.stored() for r in records], block_size=500)
    return url


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    base = tmp_path_factory.mktemp("deep")
    return base, build_chain(base, f"sqlite:///{base}/ledger.db")


def _cli(base, url, tmp_path, *args, program="lineage-ledger", env=None):
    env = {**(env or {}), "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    return run_cli(*args, "--ledger", url, cwd=base, env=env, program=program) if program == "verify-lineage" \
        else run_cli(args[0], "--ledger", url, *args[1:], cwd=base, env=env)


def test_the_last_version_verifies_and_its_tree_is_cut_where_it_gets_deep(chain, tmp_path):
    base, url = chain
    result = _cli(base, url, tmp_path, str(base / "f" / f"state-{DEPTH}"), program="verify-lineage")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "too deep" not in result.stderr
    hidden = DEPTH + 1 - DEPTH_SHOWN
    assert f"... and {hidden} more files further back in its lineage, not shown" in result.stdout
    assert result.stdout.rstrip().endswith("verified")


def test_an_edit_far_back_in_the_chain_fails_the_last_version(chain, tmp_path):
    base, url = chain
    check_an_edit_far_back(base, url, tmp_path, DEPTH)


def check_an_edit_far_back(base, url, tmp_path, depth, env=None):
    """Only printing stops at DEPTH_SHOWN generations: the check goes to the source. The
    version edited is ``depth - 10`` generations back from the last (``env``: more settings)."""
    edited = base / "f" / "state-10"
    original = edited.read_text()
    edited.write_text("edited by hand")
    try:
        result = _cli(base, url, tmp_path, str(base / "f" / f"state-{depth}"), "--json", program="verify-lineage",
                      env=env)
    finally:
        edited.write_text(original)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    report = json.loads(result.stdout)
    assert [f["path"] for f in report["failures"]] == [str(edited)]
    node, shown = report["targets"][0]["lineage"], 0
    while node["inputs"]:
        node, shown = node["inputs"][0], shown + 1
    assert shown == DEPTH_SHOWN - 1 and node["inputs_not_shown"] == depth + 1 - DEPTH_SHOWN


def test_the_full_audit_walks_every_chain(chain, tmp_path):
    base, url = chain
    result = _cli(base, url, tmp_path, program="verify-lineage")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert f"audited {DEPTH} records, {DEPTH} recorded outputs" in result.stdout
    # Each version is drawn with its inputs once in the whole report, not once a target:
    # the 1,000 targets shown drew fifty generations each (51,000 lines).
    lines = result.stdout.splitlines()
    assert len(lines) < 4_000 and sum("(see above)" in line for line in lines) >= 999, len(lines)


def test_why_and_depends_answer_for_a_deep_chain(chain, tmp_path):
    base, url = chain
    why = _cli(base, url, tmp_path, "why", str(base / "f" / f"state-{DEPTH}"), "--json")
    assert why.returncode == 0, why.stderr
    assert '"inputs_not_shown"' in why.stdout
    depends = _cli(base, url, tmp_path, "depends", str(base / "f" / "state-0"))
    assert depends.returncode == 0, depends.stderr
    assert f"... and {DEPTH - DEPTH_SHOWN} more records further on, not shown" in depends.stdout
    every = _cli(base, url, tmp_path, "depends", str(base / "f" / "state-0"), "--all")
    assert every.returncode == 0 and "more records further on, not shown" in every.stdout, every.stderr
