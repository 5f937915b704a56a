"""``verify-lineage`` of many files reads their index rows ahead, a few statements for
thousands of files (``Ledger.looking_ahead``). It must give exactly the answer of the
look-ups made one file at a time: on an intact ledger, with files edited or gone on disk,
and with index rows edited, moved or deleted behind the ledger's back."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._cli.render import report_json
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._verification import verify as verify_module
from lineage_ledger._verification.verify import verify_lineage
from tests.conftest import run_cli
from tests.support.factories import make_record

FILES = 40  # above verify's threshold for reading ahead (16)


def _build(base) -> str:
    """Task ``split`` writes FILES parts from ``input.txt``; task ``merge`` reads three of them."""
    out = base / "out"
    out.mkdir()
    (base / "input.txt").write_text("source")
    for i in range(FILES):
        (out / f"part-{i:03d}.txt").write_text(f"part {i}")
    (base / "merged.txt").write_text("merged")
    parts = [hash_file(str(out / f"part-{i:03d}.txt")) for i in range(FILES)]
    source = hash_file(str(base / "input.txt"))
    url = f"sqlite:///{base}/ledger.db"
    split = make_record(0, run_id="r", inputs=[source], outputs=parts)
    merge = make_record(1, run_id="r", inputs=parts[5:8], outputs=[hash_file(str(base / "merged.txt"))])
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        ledger.append_records([split.stored(), merge.stored()])
    return url


def _report(url, base, state, *, ahead: bool, monkeypatch) -> dict:
    monkeypatch.setattr(verify_module, "_LOOK_AHEAD", 16 if ahead else 10**9)
    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
        report = verify_lineage(ledger, [str(base / "out"), str(base / "merged.txt")])
    data = report_json(report)
    data.pop("verified_at", None)
    return data


def _part(base, i: int) -> str:
    return str(base / "out" / f"part-{i:03d}.txt")


TAMPERINGS = {
    "nothing": None,
    "a part edited on disk": ("file", lambda base: open(_part(base, 6), "a").write("x")),
    "a named target deleted": ("file", lambda base: os.remove(base / "merged.txt")),
    "a producer row's digest": ("sql", "UPDATE ll_artifacts SET digest = ? WHERE role = 1 AND path = ?",
                                lambda base: ("ab" * 32, _part(base, 11))),
    "a producer row deleted": ("sql", "DELETE FROM ll_artifacts WHERE role = 1 AND path = ?",
                               lambda base: (_part(base, 12),)),
    "a reader row deleted": ("sql", "DELETE FROM ll_artifacts WHERE role = 0 AND path = ?",
                             lambda base: (_part(base, 6),)),
    "a row's end time": ("sql", "UPDATE ll_artifacts SET ended = '2001-01-01T00:00:00.000000Z'"
                                " WHERE role = 0 AND path = ?", lambda base: (_part(base, 7),)),
    "a row moved to another path": ("sql", "UPDATE ll_artifacts SET path = ? WHERE role = 1 AND path = ?",
                                    lambda base: (_part(base, 39) + ".moved", _part(base, 13))),
    "a row added for another record": ("sql", "INSERT INTO ll_artifacts SELECT path, 1, 1, digest, ended"
                                              " FROM ll_artifacts WHERE role = 1 AND path = ?",
                                       lambda base: (_part(base, 20),)),
}


def _tampered(base, what: str) -> str:
    """The ledger of :func:`_build`, verified once while intact into two state directories
    (``s1``, ``s2``: later readers prove what they read against that head), then tampered
    with as ``TAMPERINGS[what]`` says. Returns its URL."""
    url = _build(base)
    with open_ledger(url, read_only=True, state_dir=str(base / "s1")) as ledger:
        assert verify_lineage(ledger, [str(base / "out")]).ok
    shutil.copytree(base / "s1", base / "s2")
    tampering = TAMPERINGS[what]
    if tampering is not None and tampering[0] == "file":
        tampering[1](base)
    elif tampering is not None:
        with sqlite3.connect(base / "ledger.db") as conn:
            assert conn.execute(tampering[1], tampering[2](base)).rowcount == 1
    return url


@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_reading_ahead_answers_as_reading_one_by_one(tmp_path, monkeypatch, what):
    url = _tampered(tmp_path, what)
    ahead = _report(url, tmp_path, tmp_path / "s1", ahead=True, monkeypatch=monkeypatch)
    one_by_one = _report(url, tmp_path, tmp_path / "s2", ahead=False, monkeypatch=monkeypatch)
    assert ahead == one_by_one
    # An edited digest changes no answer (answers come from proved records; the audit reports
    # the row); the rest fail, by the file or the row named. A deleted reader row changed no
    # answer before the names were kept beside the tree; now the read that uses it sees it.
    assert ahead["ok"] is (what in ANSWER_UNCHANGED), ahead["failures"]
    assert len(ahead["targets"]) + len(ahead["failures"]) >= FILES + 1


ANSWER_UNCHANGED = {"nothing", "a producer row's digest"}


def test_verify_lineage_of_a_directory_reads_ahead(tmp_path, monkeypatch):
    """Through the CLI: an edited part fails the run, named, with the others OK."""
    url = _build(tmp_path)
    with open(_part(tmp_path, 9), "a") as handle:
        handle.write("edited")
    result = run_cli("--ledger", url, "out", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1, result
    assert "out/part-009.txt" in result.stdout and "MODIFIED" in result.stdout
    assert result.stdout.count(" OK  <- ") == FILES - 1, result.stdout


def test_a_producer_rows_end_time_plays_no_part_when_reading_ahead(tmp_path, monkeypatch):
    """Reading ahead, the last writer of each file is found among its producers, proved and
    their list checked complete (what its lineage needs anyway): no answer comes from the
    index's end-time column, so an edited one changes none. One file at a time, the index's
    latest-writer row is the answer, and the column disagreeing with its record fails it.
    The full audit reports the row's record either way."""
    url = _build(tmp_path)
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "s1")) as ledger:
        assert verify_lineage(ledger, [str(tmp_path / "out")]).ok
    shutil.copytree(tmp_path / "s1", tmp_path / "s2")
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("UPDATE ll_artifacts SET ended = '2001-01-01T00:00:00.000000Z' WHERE role = 1 AND path = ?",
                            (_part(tmp_path, 7),)).rowcount == 1
    ahead = _report(url, tmp_path, tmp_path / "s1", ahead=True, monkeypatch=monkeypatch)
    assert ahead["ok"] is True, ahead["failures"]
    one_by_one = _report(url, tmp_path, tmp_path / "s2", ahead=False, monkeypatch=monkeypatch)
    assert [f["error"] for f in one_by_one["failures"]] == ["IndexTampered"]
    assert "ended at '2001-01-01T00:00:00.000000Z'" in one_by_one["failures"][0]["message"]
    audit = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage",
                    env={"LINEAGE_STATE_DIR": str(tmp_path / "s3")})
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert "IndexTampered: the index row of record" in audit.stdout, audit.stdout


@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_a_pre_run_check_of_many_inputs_reads_ahead_and_answers_as_one_by_one(tmp_path, monkeypatch, what):
    """A task with many inputs (a merge of the parts): the plugins' pre-run check reads their
    index rows ahead, as verify-lineage does a directory's, and returns or raises exactly
    what the look-ups one file at a time do."""
    from lineage_ledger import VerificationError, check_before_run
    from lineage_ledger._verification import prerun as prerun_module

    url = _tampered(tmp_path, what)
    inputs = [_part(tmp_path, i) for i in range(FILES)] + [str(tmp_path / "merged.txt")]

    def outcome(state, ahead: bool):
        monkeypatch.setattr(prerun_module, "_LOOK_AHEAD", 16 if ahead else 10**9)
        with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
            try:
                return "returned", sorted((c.path, c.status.value) for c in check_before_run(ledger, inputs, "warn"))
            except VerificationError as failure:
                return type(failure).__name__, str(failure)

    ahead = outcome(tmp_path / "s1", True)
    assert ahead == outcome(tmp_path / "s2", False)
    if what == "nothing":
        assert ahead == ("returned", [])
    if what == "a part edited on disk":
        assert ahead == ("returned", [(_part(tmp_path, 6), "MODIFIED")])
    if what == "a producer row deleted":
        assert ahead[0] == "IndexTampered"


@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_a_file_settled_from_the_rows_read_ahead_gets_the_general_answer(tmp_path, what):
    """``last_seen`` of a file one record wrote and none read is settled from the rows read
    ahead (``Ledger._last_seen_ahead``: no general look-up), and only there: the parts that
    ``merge`` read, and a part whose row was tampered with, take the general look-ups. Either
    way the answer (or the refusal) is the one a look-up without reading ahead gives."""
    url = _tampered(tmp_path, what)
    parts = [_part(tmp_path, i) for i in range(FILES)]

    def answer(ledger, path):
        try:
            seen = ledger.last_seen(path)
        except Exception as exc:  # noqa: BLE001 - the refusal is part of the answer compared
            return type(exc).__name__
        return None if seen is None else (seen[0].id, seen[1], seen[2]["blake3"])

    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "s2")) as ledger:
        alone = {path: answer(ledger, path) for path in parts}
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "s1")) as ledger:
        settled: dict[str, bool] = {}
        with ledger.looking_ahead(parts):
            for path in parts:
                try:
                    settled[path] = ledger._last_seen_ahead(ledger.query_path(path)) is not None
                except Exception:  # noqa: BLE001 - it proves the row; a refusal is the general path's to give
                    settled[path] = False
            ahead = {path: answer(ledger, path) for path in parts}
    assert ahead == alone
    read_by_merge = {_part(tmp_path, i) for i in (5, 6, 7)}
    assert not any(settled[p] for p in read_by_merge)
    # The part whose producer row is gone (12), moved away (13) or doubled (20) is not settled.
    unsettled = read_by_merge | {_part(tmp_path, i) for i in SETTLED_NOT.get(what, ())}
    assert {p for p in parts if not settled[p]} == unsettled


SETTLED_NOT = {"a producer row deleted": (12,), "a row moved to another path": (13,),
               "a row added for another record": (20,)}
