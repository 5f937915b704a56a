"""``verify-lineage DIR`` of many files verifies their last part in a second process
(``_verification.verify_ahead``), and takes from it only "verified, no problem met" a path.
An adversarial review, by tests: whatever is tampered with in that part (a record's body,
an index row, a row deleted, a file on disk, the source every task read), the answer is the
one this process gives alone, failures named, exit 1; a child that verifies against
another tree head than the parent's answers nothing; a path kept with its tree is verified
by the parent.

In process, the thresholds are lowered (``AT_LEAST``, ``SHOWN``, the child's start cost) so
that a few dozen files engage the child; through the CLI, a directory past ``AT_LEAST``."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lineage_ledger import Hasher, Record, open_ledger
from lineage_ledger._files.manifest import walk_tree
from lineage_ledger._verification import report as report_module
from lineage_ledger._verification import verify as verify_module
from lineage_ledger._verification import verify_ahead
from lineage_ledger._verification.verify import verify_lineage
from tests.conftest import run_cli

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _build(base: Path, files: int) -> str:
    """``files`` outputs in out/, each the one output of its own task, all reading input.txt
    (the results directory of a scatter step); the ledger verified once (the trusted state
    in base/state)."""
    out = base / "out"
    out.mkdir()
    for i in range(files):
        (out / f"part-{i:05d}.txt").write_text(f"part {i}")  # not walked in this order (see _part)
    (base / "input.txt").write_text("source")
    hashed = Hasher().hash_many([str(p) for p in sorted(out.iterdir())] + [str(base / "input.txt")])
    url = f"sqlite:///{base}/ledger.db"
    with open_ledger(url, spool=str(base / "spool")) as ledger:
        ledger.append_records([Record(engine="test", run_id="r", task_id=f"t{i}", task_name="split",
                                      status="succeeded", started=T0, ended=T0, inputs=hashed[-1:],
                                      outputs=[f]).stored() for i, f in enumerate(hashed[:-1])])
    run_cli("--ledger", url, cwd=base, program="verify-lineage", env={"LINEAGE_STATE_DIR": str(base / "state")},
            check_rc=0)
    return url


def _part(base: Path, i: int) -> str:
    """The ``i``-th file of out/ in the order verify-lineage walks it (the directory's own:
    the child verifies the last part of that order)."""
    return list(walk_tree(str(base / "out")))[i]


def _tamper(base: Path, what: str, i: int) -> set[str]:
    """Tamper with the file ``i`` (its record, its index row, itself); the paths the failures
    then name."""
    db = sqlite3.connect(base / "ledger.db")
    path = _part(base, i)
    (seq,) = db.execute("SELECT seq FROM ll_artifacts WHERE path = ? AND role = 1", (path,)).fetchone()
    expected: set[str | None] = {path}
    if what == "its record's body edited":
        expected = {None}  # RecordTampered names the record (its id), not a file
        db.execute("UPDATE ll_records SET body = replace(body, 'split', 'spliT') WHERE seq = ?", (seq,))
    elif what == "its writer row pointed at another record":
        db.execute("UPDATE ll_artifacts SET seq = ? WHERE path = ? AND role = 1", (seq - 1, path))
    elif what == "its writer row's digest changed":
        expected = set()  # the answer is the proved record's digest, not the row's (the audit compares them)
        db.execute("UPDATE ll_artifacts SET digest = ? WHERE path = ? AND role = 1", ("0" * 64, path))
    elif what == "its writer row deleted":
        db.execute("DELETE FROM ll_artifacts WHERE path = ? AND role = 1", (path,))
    elif what == "the file edited":
        Path(path).write_text("edited")
    elif what == "the source edited":
        (base / "input.txt").write_text("edited")
        expected = {str(base / "input.txt")}
    elif what == "nothing":
        expected = set()
    else:
        raise AssertionError(what)
    db.commit()
    db.close()
    return expected


def _answers(report) -> dict:
    return {"ok": report.ok, "targets": sorted(t.path for t in report.targets), "not_shown": report.not_shown,
            "failures": sorted((type(f).__name__, f.path, str(f)) for f in report.failures)}


def _verify(url: str, base: Path, *, child: bool, monkeypatch) -> tuple[dict, list[bool]]:
    """The report of ``verify-lineage out`` in process (its answers), with or without the
    child; and every verdict the parent took from the child."""
    taken: list[bool] = []
    with monkeypatch.context() as patch:
        patch.setenv("LINEAGE_STATE_DIR", str(base / "state"))
        patch.setenv("LINEAGE_VERIFY_AHEAD", "always")  # whatever the machine's load
        patch.setattr(verify_ahead, "AT_LEAST", 16)
        patch.setattr(verify_ahead, "_START_COST", 0)
        patch.setattr(verify_ahead, "_SLOWER", 1.0)  # half each: the child verifies the last 20 of 40
        patch.setattr(verify_module, "SHOWN", 4)
        patch.setattr(report_module, "SHOWN", 4)
        if child:
            original = verify_ahead.VerifyAhead.verdicts

            def verdicts(self, count):
                found = original(self, count)
                taken.extend(found)
                return found

            patch.setattr(verify_ahead.VerifyAhead, "verdicts", verdicts)
        else:
            patch.setattr(verify_module, "verify_ahead", lambda *args: None)
        with open_ledger(url, read_only=True) as ledger:
            return _answers(verify_lineage(ledger, [str(base / "out")])), taken


TAMPERINGS = ["nothing", "its record's body edited", "its writer row pointed at another record",
              "its writer row's digest changed", "its writer row deleted", "the file edited", "the source edited"]


@pytest.mark.parametrize("what", TAMPERINGS)
def test_the_second_process_answers_as_this_one_alone(tmp_path, monkeypatch, what):
    """40 files, the last 20 verified by the child: one of those tampered with; the report
    (every failure, what is kept and counted) is the one the parent gives alone, and the
    child answered for every path of its part (verified, or not: then verified here)."""
    url = _build(tmp_path, 40)
    expected = _tamper(tmp_path, what, 33)
    alone, _ = _verify(url, tmp_path, child=False, monkeypatch=monkeypatch)
    both, taken = _verify(url, tmp_path, child=True, monkeypatch=monkeypatch)
    assert both == alone
    assert len(taken) == 20
    if not expected:
        assert alone["ok"] and all(taken)
    else:
        assert not alone["ok"] and {path for _kind, path, _text in alone["failures"]} == expected
        # The tampered file's verdict is never "verified" (others may fail with it: a shared
        # source edited fails them all, a body edited fails the check of the source its record read).
        assert taken[33 - 20] is False
        assert taken.count(True) <= (0 if what == "the source edited" else 19)


def test_a_child_verifying_against_another_tree_head_answers_nothing(tmp_path, monkeypatch):
    """The child reads the verified tree head itself: one that is not the parent's (another
    size or root) makes it answer nothing, and the parent verifies every path."""
    url = _build(tmp_path, 20)
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    paths = [_part(tmp_path, i) for i in range(20)]
    with open_ledger(url, read_only=True) as ledger:
        head = ledger.tree_head()
        state = str(tmp_path / "state")
        with verify_ahead.VerifyAhead(ledger, paths, 10, (), head, state) as same:
            assert same.verdicts(10) == [True] * 10
        for other in (dataclasses.replace(head, root="0" * 64), dataclasses.replace(head, size=head.size - 1)):
            with verify_ahead.VerifyAhead(ledger, paths, 10, (), other, state) as ahead:
                assert ahead.verdicts(10) == [False] * 10


def test_paths_kept_with_their_trees_are_verified_here(tmp_path, monkeypatch):
    """Where fewer than SHOWN paths verified before the child's part (the first ones failed),
    the parent verifies the child's part itself, so that the report keeps their trees."""
    url = _build(tmp_path, 30)
    for i in range(4):
        Path(_part(tmp_path, i)).write_text("edited")
    alone, _ = _verify(url, tmp_path, child=False, monkeypatch=monkeypatch)
    both, taken = _verify(url, tmp_path, child=True, monkeypatch=monkeypatch)
    assert both == alone
    assert len(alone["targets"]) == 8 and len(alone["failures"]) == 4  # 4 failing, 4 verified kept
    assert taken and all(taken)  # the child verified them; the parent did again, to keep the trees


def test_the_split_keeps_what_is_shown_here():
    """The child's part starts past the paths kept with their trees, and shares the rest so
    that both end together: the child starts late and is slower a path."""
    assert verify_ahead.split_at(4_000, 1_000) >= 1_000 + verify_ahead._START_COST
    first = verify_ahead.split_at(10_000, 1_000)
    assert first == pytest.approx(verify_ahead._START_COST + verify_ahead._SLOWER * (10_000 - first), abs=2)
    assert verify_ahead.split_at(100, 1_000) == 100


def test_never_and_a_busy_machine_start_no_second_process(tmp_path, monkeypatch):
    """``LINEAGE_VERIFY_AHEAD=never``: no child; on a machine with no processor idle (as
    /proc/loadavg says), none either; ``always``: one whatever the load."""
    url = _build(tmp_path, 20)
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(verify_ahead, "AT_LEAST", 16)
    paths = [_part(tmp_path, i) for i in range(20)]
    with open_ledger(url, read_only=True) as ledger:
        head = ledger.tree_head()
        monkeypatch.setenv("LINEAGE_VERIFY_AHEAD", "never")
        assert verify_ahead.verify_ahead(ledger, paths, (), head, 4) is None
        monkeypatch.setenv("LINEAGE_VERIFY_AHEAD", "")
        monkeypatch.setattr(verify_ahead, "_idle_processor", lambda: False)
        assert verify_ahead.verify_ahead(ledger, paths, (), head, 4) is None
        monkeypatch.setenv("LINEAGE_VERIFY_AHEAD", "always")
        with verify_ahead.verify_ahead(ledger, paths, (), head, 4) as ahead:
            assert ahead is not None and ahead.verdicts(20 - ahead.first) == [True] * (20 - ahead.first)


def test_through_the_cli_each_tampering_in_the_childs_part_is_named_and_exits_1(tmp_path):
    """Where users meet it: ``verify-lineage out`` of 4,200 files; a file's record's body edited, an index row of another pointed at another record, a third file edited, all
    in the child's part: each named, exit 1; untampered, exit 0 and every file counted."""
    files = verify_ahead.AT_LEAST + 200
    copy = tmp_path
    url = _build(copy, files)
    env = {"LINEAGE_STATE_DIR": str(copy / "state"), "LINEAGE_VERIFY_AHEAD": "always"}
    result = run_cli("--ledger", url, "--json", "out", cwd=copy, program="verify-lineage", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert f'"targets_not_shown": {files - report_module.SHOWN}' in result.stdout
    first = verify_ahead.split_at(files, report_module.SHOWN)
    named = set()
    # Not the last record: it is the last to read input.txt, whose check in every tree then fails.
    for what, i in (("its record's body edited", files - 50), ("its writer row pointed at another record", first + 7),
                    ("the file edited", first + 100)):
        named |= _tamper(copy, what, i)
    result = run_cli("--ledger", url, "out", cwd=copy, program="verify-lineage", env=env)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    failed = result.stdout[result.stdout.index("FAILED:"):]
    assert "FAILED: 3 problem(s)" in failed and "does not hash to its id" in failed
    assert all(path in failed for path in named - {None}), failed
