"""``verify-lineage`` with no target checks every recorded output still on disk, in bounded
memory: the paths the audit found are kept on disk (``_log.found``), and the report keeps the
first ``SHOWN`` targets of each kind and counts the rest (``_verification.report``). What it
decides must not change: a tampered output among the ones not shown still fails, is shown
with its tree, and gives exit 1."""

from __future__ import annotations

import json
import os

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._errors import ArtifactMismatch
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._log.found import FoundOutputs
from lineage_ledger._verification import report as report_module
from lineage_ledger._verification.report import SHOWN, Bounded, Report
from lineage_ledger._verification.verify import verify_lineage
from tests.conftest import run_cli
from tests.support.factories import make_record

OUTPUTS = SHOWN + 30

# The three ways an audit reads the ledger, each with its own collection of found outputs.
WAYS = {
    "workers": {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "200", "LINEAGE_AUDIT_WORKERS": "2"},
    "bulk here": {"LINEAGE_AUDIT_WORKERS": "1"},
    "record by record": {"LINEAGE_AUDIT_WORKERS": "1", "LINEAGE_AUDIT_BULK": "0"},
}


def build_outputs(base, url: str) -> str:
    """OUTPUTS tasks, each reading a shared source and writing a file of its own under
    ``base`` that is still on disk, plus one whose output was cleaned up (not a failure in
    an audit), in the ledger at ``url`` (any back-end: the PostgreSQL tests use it too)."""
    (base / "data").mkdir()
    source = base / "data" / "reference.fa"
    source.write_text("ACGT" * 100)
    ref = hash_file(str(source))
    records = []
    for i in range(OUTPUTS + 1):
        out = base / "data" / f"sample-{i:05d}.out"
        out.write_text(f"result {i}")
        records.append(make_record(i, run_id=f"run-{i // 500}", inputs=[ref], outputs=[hash_file(str(out))]))
    os.remove(base / "data" / f"sample-{OUTPUTS:05d}.out")
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        ledger.append_records([r.stored() for r in records], block_size=100)
    return url


@pytest.fixture(scope="module")
def ledger_with_outputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("outputs")
    return base, build_outputs(base, f"sqlite:///{base}/ledger.db")


def _verify(url, base, tmp_path, way, *extra, env=None):
    env = {**WAYS[way], **(env or {}), "LINEAGE_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path)}
    return run_cli("--ledger", url, *extra, cwd=base, env=env, program="verify-lineage")


@pytest.mark.parametrize("way", list(WAYS))
def test_an_audit_counts_the_outputs_it_does_not_show(ledger_with_outputs, tmp_path, way):
    base, url = ledger_with_outputs
    result = _verify(url, base, tmp_path, way)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"audited {OUTPUTS + 1} records, {OUTPUTS} recorded outputs" in out
    assert f"... and {OUTPUTS - SHOWN} more recorded outputs checked, not shown here" in out
    shown = [line for line in out.splitlines() if ".out " in line and "<-" in line and "sample-" in line]
    assert len(shown) == SHOWN, len(shown)
    assert out.rstrip().endswith("verified")
    # The scratch file of found paths is gone (TMPDIR is this test's directory).
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lineage-audit-")]


@pytest.mark.parametrize("way", list(WAYS))
def test_a_tampered_output_past_those_shown_still_fails_and_is_shown(ledger_with_outputs, tmp_path, way):
    base, url = ledger_with_outputs
    check_a_tampered_output_fails(base, url, tmp_path, way)


def check_a_tampered_output_fails(base, url, tmp_path, way, env=None):
    """The last output shown by no audit is edited: the audit fails on it alone, shows it,
    counts the rest it checked, and leaves no scratch file behind (``env``: more settings)."""
    last = base / "data" / f"sample-{OUTPUTS - 1:05d}.out"
    original = last.read_text()
    last.write_text("edited by hand")
    try:
        result = _verify(url, base, tmp_path, way, "--json", env=env)
    finally:
        last.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["outputs_checked"] == OUTPUTS
    assert data["targets_not_shown"] == OUTPUTS - SHOWN - 1  # the failing one is shown
    assert str(last) in [t["path"] for t in data["targets"]]
    assert [f["path"] for f in data["failures"]] == [str(last)]
    assert data["failures"][0]["error"] == "ArtifactMismatch"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lineage-audit-")]


def test_found_outputs_come_back_once_each_in_first_seen_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    found = FoundOutputs()
    assert list(found) == [] and not list(tmp_path.iterdir())  # nothing made for nothing
    odd = "/data/caf\udce9.txt"  # a file name that is not UTF-8, as the ledger keeps it
    found.add(["/b", "/a", odd])
    found.add([])
    found.add(["/a", "/c", "/b"])
    assert [list(w) for w in found.windows(2)] == [["/b", "/a"], [odd, "/c"]]
    assert found.added == 6
    scratch = list(tmp_path.iterdir())
    assert len(scratch) == 1 and oct(scratch[0].stat().st_mode & 0o777) == "0o700"
    found.close()
    assert not list(tmp_path.iterdir())
    found.close()  # twice is fine


def test_problems_past_the_kept_ones_are_counted_and_still_fail(monkeypatch):
    monkeypatch.setattr(report_module, "FAILURES_KEPT", 3)
    report = Report()
    for i in range(5):
        report.fail(ArtifactMismatch(f"file {i} changed", path=f"/f{i}"))
    report.fail(ArtifactMismatch("file 0 changed", path="/f0"))  # the same problem again: once
    assert len(report.failures) == 3 and report.more_failures == 2 and report.problems == 5
    assert not report.ok


def test_a_bounded_cache_keeps_what_is_used_and_forgets_the_oldest_half():
    cache = Bounded(4)
    for key in "abcd":
        cache[key] = key.upper()
    assert cache.get("a") == "A"  # used: now the newest
    cache["d"] = "D2"  # an update does not evict
    cache.trim()
    assert len(cache) == 4
    cache["e"] = "E"
    cache.trim()  # past the bound: the oldest go, down to half, in one pass
    assert set(cache) == {"a", "e"} and cache["a"] == "A"
    assert cache.get("zz", 7) == 7
    for i in range(10_000):  # forgetting stays cheap however many were forgotten before
        cache[i] = i
        if i % 100 == 0:
            cache.trim()
    cache.trim()
    assert len(cache) <= 4 and 9_999 in cache


def test_a_targeted_check_of_a_few_files_keeps_every_target(ledger_with_outputs, tmp_path):
    """Files named one by one, up to SHOWN of them, are all kept and shown."""
    base, url = ledger_with_outputs
    named = [str(base / "data" / f"sample-{i:05d}.out") for i in range(0, OUTPUTS, 7)]
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "state")) as ledger:
        report = verify_lineage(ledger, named)
    assert report.ok and report.not_shown == 0
    assert [t.path for t in report.targets] == named


def test_a_directory_of_many_files_is_checked_in_bounded_memory(tmp_path):
    """A results directory of more than SHOWN files is checked as an audit's outputs are:
    the first SHOWN verified trees are kept, the rest counted (a million files kept a
    million trees). What it decides must not change: a file edited among those not shown
    still fails, is shown with its tree, and gives exit 1."""
    base = tmp_path / "many"
    base.mkdir()
    url = build_outputs(base, f"sqlite:///{base}/ledger.db")
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "state")}
    clean = run_cli("--ledger", url, "data", cwd=base, env=env, program="verify-lineage")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # reference.fa and the outputs: SHOWN kept, the rest counted
    assert f"... and {OUTPUTS + 1 - SHOWN} more files checked, not shown here" in clean.stdout
    late = base / "data" / f"sample-{OUTPUTS - 3:05d}.out"
    late.write_text("edited by hand")
    edited = run_cli("--ledger", url, "--json", "data", cwd=base, env=env, program="verify-lineage")
    assert edited.returncode == 1, edited.stdout + edited.stderr
    data = json.loads(edited.stdout)
    assert [f["path"] for f in data["failures"]] == [str(late)]
    assert str(late) in [t["path"] for t in data["targets"]]  # the failing one is kept
    assert data["targets_not_shown"] == OUTPUTS + 1 - SHOWN - 1
