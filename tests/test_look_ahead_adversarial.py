"""An adversarial review of reading ahead (``Ledger.looking_ahead``), by tests.

``verify-lineage`` of 16 paths or more, and the plugins' pre-run check (``check_before_run``)
of as many inputs, read the index rows of a window of paths together: a file's latest
writer is taken from its producers read ahead, directories are resolved once each
(``resolving_keeps``), and a list of one record per kept name is settled without a
``Listing``. Fewer paths are looked up one at a time. Both must give the same answer.

One small real ledger (:func:`_build`) holds what makes the look-ups differ: a file written
by two tasks where the later in ledger order ended first, a directory output (with its
manifest record), a file written through a symbolic link to a directory, a symbolic link
output, and a file in a directory that was replaced by a symbolic link after recording.
It is verified once while intact (the trusted head, copied for each reader), then tampered
with on disk or in its SQLite file, and the same list of paths (duplicates and relative
spellings included) is checked with reading ahead on and off.

Where the two ways part, neither answers from the row in question: an edited end-time column
of a producer row (test_look_ahead pins that), and rows a look-up one file at a time never
reads, which make a pre-run batch that reads them refuse (the plugins then check each file
on their own and end where the small batch did). The last five tests are the bugs this
review found (each failed before its fix): a name that is not UTF-8 or holds a NUL byte among
16 or more paths, an index row whose record row was deleted read ahead (raised out of
verify_lineage), and a lineage walk that failed left half-built in the memo (a later target
reaching it answered OK). Each case takes about 0.3 s; the file 7-21 s (load 1-2.5).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lineage_ledger import VerificationError, check_before_run, check_each, open_ledger
from lineage_ledger._capture.files import entries_of, manifest_records_of
from lineage_ledger._cli.render import report_json
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from lineage_ledger._verification import prerun as prerun_module
from lineage_ledger._verification import verify as verify_module
from lineage_ledger._verification.verify import verify_lineage
from tests.conftest import run_cli

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
PARTS = 20


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _task(name: str, ended: int, inputs=(), outputs=(), status: str = "succeeded") -> list[Record]:
    """The records a capture makes of a task that ended ``ended`` seconds after T0: its
    directories' manifest records, then its own (paths through a link kept as aliases)."""
    ins = [hash_file(p) for p in inputs]
    outs = [hash_file(p) for p in outputs]
    record = Record(engine="test", run_id="r", task_id=name, task_name=name, status=status,
                    started=T0 + timedelta(seconds=ended - 1), ended=T0 + timedelta(seconds=ended),
                    inputs=entries_of(ins), outputs=entries_of(outs))
    return [*manifest_records_of(outs), record]


def _append(url: str, base: Path, records: list[Record]) -> None:
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        ledger.append_records([r.stored() for r in records])


def _build(base: Path) -> str:
    src = [_write(base / "src" / f"s{i}.txt", f"source {i}") for i in range(3)]
    parts = [_write(base / "out" / f"p{i:02d}.txt", f"part {i}") for i in range(PARTS)]
    records = _task("split", 10, src, parts)
    records += _task("merge", 20, parts[5:8], [_write(base / "merged.txt", "merged")])
    # Two writers of twice_*.txt: the first in ledger order ended last, so it is the latest
    # (a spool replayed late lands late in the ledger but is not newer).
    _write(base / "twice_a.txt", "A-old")
    _write(base / "twice_b.txt", "B-old")
    records += _task("w-late-end", 100, [src[0]], [str(base / "twice_a.txt"), str(base / "twice_b.txt")])
    _write(base / "twice_a.txt", "A-new")
    _write(base / "twice_b.txt", "B-new")
    records += _task("w-early-end", 50, [src[1]], [str(base / "twice_a.txt"), str(base / "twice_b.txt")])
    _write(base / "twice_a.txt", "A-old")  # the latest writer's: OK; twice_b keeps the other: MODIFIED
    # A directory output, a file written through a linked directory, a link output.
    _write(base / "dirout" / "a.txt", "a")
    _write(base / "dirout" / "sub" / "c.txt", "c")
    records += _task("mkdir", 30, [src[2]], [str(base / "dirout")])
    _write(base / "realdir" / "x.txt", "x")
    os.symlink("realdir", base / "linkdir")
    records += _task("via-link", 31, [src[0]], [str(base / "linkdir" / "x.txt")])
    _write(base / "targets" / "t1.txt", "t1")
    os.symlink("targets/t1.txt", base / "lnout.txt")
    records += _task("link-out", 32, [src[1]], [str(base / "lnout.txt")])
    _write(base / "moved" / "y.txt", "y")
    records += _task("moved", 33, [src[2]], [str(base / "moved" / "y.txt")])
    url = f"sqlite:///{base}/ledger.db"
    _append(url, base, records)
    # Its directory replaced by a link to it after recording (moved/y.txt is still the file).
    os.rename(base / "moved", base / "moved2")
    os.symlink("moved2", base / "moved")
    return url


def _paths(base: Path) -> list[str]:
    """36 paths (over the threshold of 16): every kind above, a duplicate, a relative one and
    two relative spellings of absolute ones (the working directory is ``base``)."""
    return [
        *(str(base / "out" / f"p{i:02d}.txt") for i in range(PARTS)),
        str(base / "merged.txt"), str(base / "twice_a.txt"), str(base / "twice_b.txt"),
        str(base / "dirout"), str(base / "dirout" / "a.txt"), str(base / "dirout" / "sub" / "c.txt"),
        str(base / "linkdir" / "x.txt"), str(base / "realdir" / "x.txt"), str(base / "lnout.txt"),
        str(base / "targets" / "t1.txt"), str(base / "moved" / "y.txt"), str(base / "src" / "s0.txt"),
        str(base / "out" / "p03.txt"), "out/p04.txt", "./merged.txt", "dirout/",
    ]


def _trusted(base: Path, url: str, readers: int = 2) -> None:
    """The intact ledger verified once into ``s0``, copied to ``s1``... (each reader proves
    what it reads against that head, and none sees what another remembered)."""
    with open_ledger(url, read_only=True, state_dir=str(base / "s0")) as ledger:
        report = verify_lineage(ledger, [os.path.join(base, p) for p in _paths(base)])
    assert [f.path for f in report.failures] == [str(base / "twice_b.txt")]  # the one expected
    for i in range(1, readers + 1):
        shutil.copytree(base / "s0", base / f"s{i}")


def _sql(base: Path, statement: str, *params, rows: int = 1) -> None:
    with sqlite3.connect(base / "ledger.db") as conn:
        assert conn.execute(statement, params).rowcount == rows


def _edit(base: Path, name: str) -> None:
    with open(base / name, "a") as handle:
        handle.write("edited")


def _relink(base: Path, link: str, target: str, file: str, text: str) -> None:
    """``link`` made to point at ``target`` (relative to it), once ``file`` holds ``text``."""
    _write(base / file, text)
    os.remove(base / link)
    os.symlink(target, base / link)


def _latest_seq(role: int, order: str) -> str:
    return f"(SELECT seq FROM ll_artifacts WHERE role = {role} AND path = ? ORDER BY ended {order} LIMIT 1)"


def _p(base: Path, name: str) -> str:
    return str(base / name)


# name -> (tampering, the failures a verification reports as (error, path below base)).
# Every case lists twice_b.txt: it holds the version of the task later in ledger order,
# which ended first; the latest by end time wrote another.
TWICE_B = ("ArtifactMismatch", "twice_b.txt")
ENDED = "2001-01-01T00:00:00.000000Z"
# (test_look_ahead has the plainer index edits: a digest, a producer or reader row deleted, a
# reader's end time, a row moved to a path no record names.)
CASES = {
    "nothing": (lambda b: None, {TWICE_B}),
    "a part edited": (lambda b: _edit(b, "out/p04.txt"), {TWICE_B, ("ArtifactMismatch", "out/p04.txt")}),
    "twice_a holds the writer later in ledger order": (
        lambda b: _write(b / "twice_a.txt", "A-new"), {TWICE_B, ("ArtifactMismatch", "twice_a.txt")}),
    "a file in a directory output edited": (
        lambda b: _edit(b, "dirout/sub/c.txt"),
        {TWICE_B, ("ArtifactMismatch", "dirout"), ("ArtifactMismatch", "dirout/sub/c.txt")}),
    "a directory output replaced by a link to a copy": (
        lambda b: (shutil.copytree(b / "dirout", b / "dircopy"), shutil.rmtree(b / "dirout"),
                   os.symlink("dircopy", b / "dirout")), {TWICE_B}),
    "a file written through a linked directory edited": (
        lambda b: _edit(b, "realdir/x.txt"),
        {TWICE_B, ("ArtifactMismatch", "linkdir/x.txt"), ("ArtifactMismatch", "realdir/x.txt")}),
    "the linked directory pointed elsewhere": (
        lambda b: _relink(b, "linkdir", "otherdir", "otherdir/x.txt", "other x"),
        {TWICE_B, ("ArtifactMismatch", "linkdir/x.txt")}),
    "a link output's target edited": (
        lambda b: _edit(b, "targets/t1.txt"),
        {TWICE_B, ("ArtifactMismatch", "lnout.txt"), ("ArtifactMismatch", "targets/t1.txt")}),
    "a link output pointed elsewhere": (
        lambda b: _relink(b, "lnout.txt", "targets/t2.txt", "targets/t2.txt", "t2"),
        {TWICE_B, ("ArtifactMismatch", "lnout.txt")}),
    "a directory replaced by a link, then pointed elsewhere": (
        lambda b: _relink(b, "moved", "moved3", "moved3/y.txt", "evil y"), {TWICE_B, ("ArtifactMismatch", "moved/y.txt")}),
    "every producer row of a file written twice deleted": (
        lambda b: _sql(b, "DELETE FROM ll_artifacts WHERE role = 1 AND path = ?", _p(b, "twice_a.txt"), rows=2),
        {TWICE_B, ("IndexTampered", "twice_a.txt")}),
    "the latest writer's row deleted": (
        lambda b: _sql(b, f"DELETE FROM ll_artifacts WHERE role = 1 AND path = ? AND seq = {_latest_seq(1, 'DESC')}",
                       _p(b, "twice_a.txt"), _p(b, "twice_a.txt")), {TWICE_B, ("IndexTampered", "twice_a.txt")}),
    "the latest writer's row moved to another record": (
        lambda b: _sql(b, "UPDATE ll_artifacts SET seq = (SELECT seq FROM ll_artifacts WHERE role = 1 AND path = ?)"
                          f" WHERE role = 1 AND path = ? AND seq = {_latest_seq(1, 'DESC')}",
                       _p(b, "merged.txt"), _p(b, "twice_a.txt"), _p(b, "twice_a.txt")),
        {TWICE_B, ("IndexTampered", "twice_a.txt")}),
    "a producer row moved onto another target": (
        lambda b: _sql(b, "UPDATE ll_artifacts SET path = ? WHERE role = 1 AND path = ?", _p(b, "out/p14.txt"),
                       _p(b, "merged.txt")),
        {TWICE_B, ("IndexTampered", "out/p14.txt"), ("IndexTampered", "merged.txt")}),
    "a producer row added, the latest by its end time": (
        lambda b: _sql(b, "INSERT INTO ll_artifacts SELECT path, 1, (SELECT seq FROM ll_artifacts WHERE role = 1"
                          " AND path = ?), digest, '2099-01-01T00:00:00.000000Z' FROM ll_artifacts"
                          " WHERE role = 1 AND path = ?", _p(b, "merged.txt"), _p(b, "out/p15.txt")),
        {TWICE_B, ("IndexTampered", "out/p15.txt")}),
    "a reader row added": (
        lambda b: _sql(b, "INSERT INTO ll_artifacts SELECT path, 0, (SELECT seq FROM ll_artifacts WHERE role = 1"
                          " AND path = ?), digest, ? FROM ll_artifacts WHERE role = 1 AND path = ?",
                       _p(b, "merged.txt"), ENDED, _p(b, "out/p16.txt")),
        {TWICE_B, ("IndexTampered", "out/p16.txt")}),
    "a directory output's producer row deleted": (
        lambda b: _sql(b, "DELETE FROM ll_artifacts WHERE role = 1 AND path = ?", _p(b, "dirout")),
        # Met while the targets are expanded (is it a directory no record names?): nothing
        # after that is trusted, so it is the one failure and no target is answered.
        {("IndexTampered", "dirout")}),
    "a manifest record's run id column": (
        lambda b: _sql(b, "UPDATE ll_records SET run_id = 'other' WHERE run_id LIKE 'manifest:%'"),
        {TWICE_B, ("IndexTampered", None)}),
    "a record body edited": (
        lambda b: _sql(b, "UPDATE ll_records SET body = CAST(replace(CAST(body AS TEXT), 'split', 'splat') AS BLOB)"
                          f" WHERE seq = {_latest_seq(1, 'DESC')}", _p(b, "out/p01.txt")),
        {TWICE_B, ("RecordTampered", None)}),
    "a record's id column": (
        lambda b: _sql(b, f"UPDATE ll_records SET id = ? WHERE seq = {_latest_seq(1, 'DESC')}", "cd" * 32,
                       _p(b, "merged.txt")), {TWICE_B, ("RecordTampered", None)}),
    "a record's height column": (
        lambda b: _sql(b, f"UPDATE ll_records SET height = height + 5 WHERE seq = {_latest_seq(1, 'DESC')}",
                       _p(b, "out/p01.txt")), {TWICE_B, ("IndexTampered", None)}),
    "a record's position column": (
        lambda b: _sql(b, f"UPDATE ll_records SET pos = pos - 1 WHERE seq = {_latest_seq(1, 'DESC')}",
                       _p(b, "moved/y.txt")), {TWICE_B, ("IndexTampered", None)}),
    "two records' rows swapped between their places in ll_records": (
        lambda b: _swap_records(b, 0, 1),
        {TWICE_B, ("IndexTampered", "merged.txt"), *(("IndexTampered", f"out/p{i:02d}.txt") for i in range(PARTS))}),
}


def _swap_records(base: Path, first: int, second: int) -> None:
    """The ``first`` and ``second`` records' rows (id, place, body) swapped: the index rows of
    each now lead to the other."""
    with sqlite3.connect(base / "ledger.db") as conn:
        seqs = [seq for (seq,) in conn.execute("SELECT seq FROM ll_records ORDER BY seq")]
        a, b = seqs[first], seqs[second]
        conn.execute("UPDATE ll_records SET seq = -1 WHERE seq = ?", (a,))
        conn.execute("UPDATE ll_records SET seq = ? WHERE seq = ?", (a, b))
        conn.execute("UPDATE ll_records SET seq = ? WHERE seq = -1", (b,))


# The same record found left out, explained as the check that found it: reading ahead, the
# producers' list is short; one by one, the latest writer's look-up is not the latest.
EXPLAINED_OTHERWISE = {"the latest writer's row deleted"}


def _tampered(base: Path, what: str, readers: int = 2) -> str:
    url = _build(base)
    _trusted(base, url, readers)
    CASES[what][0](base)
    return url


def _verify(monkeypatch, url: str, state: Path, paths: list[str], *, ahead: bool) -> dict:
    monkeypatch.setattr(verify_module, "_LOOK_AHEAD", 16 if ahead else 10**9)
    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
        data = report_json(verify_lineage(ledger, paths))
    data.pop("verified_at", None)
    return data


def _pre_run(monkeypatch, url: str, state: Path, paths: list[str], *, ahead: bool):
    """What a plugin ends up with: the batch's answer, else each file's own (``check_each``)."""
    monkeypatch.setattr(prerun_module, "_LOOK_AHEAD", 16 if ahead else 10**9)
    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
        try:
            return "returned", sorted((c.path, c.status.value) for c in check_before_run(ledger, paths, "warn"))
        except VerificationError as failure:
            raised = type(failure).__name__, failure.path
            changed, failing, whole = check_each(ledger, paths)
            return raised, sorted((c.path, c.status.value) for c in changed), sorted(set(failing)), whole


def _below(base: Path, path: str | None) -> str | None:
    return None if path is None else os.path.relpath(path, base)


@pytest.mark.parametrize("what", list(CASES))
def test_reading_ahead_answers_as_looking_up_one_by_one(tmp_path, monkeypatch, what):
    """verify_lineage and check_before_run of the 36 paths, reading ahead and not: the same
    report (answers, lineages, failures and their messages) and the same pre-run answer."""
    monkeypatch.chdir(tmp_path)
    url = _tampered(tmp_path, what, readers=4)
    paths = _paths(tmp_path)
    ahead = _verify(monkeypatch, url, tmp_path / "s1", paths, ahead=True)
    one_by_one = _verify(monkeypatch, url, tmp_path / "s2", paths, ahead=False)
    if what in EXPLAINED_OTHERWISE:
        for report in (ahead, one_by_one):
            for failure in report["failures"]:
                failure["message"] = failure["message"].split(": ")[0]
    assert ahead == one_by_one
    assert ahead["ok"] is False
    assert {(f["error"], _below(tmp_path, f["path"])) for f in ahead["failures"]} == CASES[what][1]
    # Every target either has an answer or a failure names it (a record's failure: none).
    answered = {t["path"] for t in ahead["targets"]}
    assert len(answered) <= len(set(map(os.path.abspath, paths)))
    if answered and all(path is not None for _error, path in CASES[what][1]):
        named = {os.path.join(tmp_path, p) for _e, p in CASES[what][1]}
        assert {os.path.abspath(p) for p in paths} <= answered | named

    absolute = [os.path.abspath(p) for p in paths]
    before_run = _pre_run(monkeypatch, url, tmp_path / "s3", absolute, ahead=True)
    assert before_run == _pre_run(monkeypatch, url, tmp_path / "s4", absolute, ahead=False)
    # A file the disk changed under its latest writer is named whatever the index says.
    modified = {p for e, p in CASES[what][1] | {TWICE_B} if e == "ArtifactMismatch"}
    if before_run[0] == "returned":
        assert {_below(tmp_path, p) for p, status in before_run[1]} == modified
    else:
        assert {_below(tmp_path, p) for p, status in before_run[1]} <= modified


@pytest.mark.parametrize("forged", [False, True], ids=["intact", "a forged row below it"])
def test_recorded_files_gone_from_a_directory_are_read_ahead_as_one_by_one(tmp_path, monkeypatch, forged):
    """verify-lineage DIR lists the recorded files gone from it, their rows read ahead past
    16 (_absent_under); an index row that names a file below it no record names fails."""
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    _trusted(tmp_path, url, 2)
    for i in range(1, 19):
        os.remove(tmp_path / "out" / f"p{i:02d}.txt")
    if forged:
        _sql(tmp_path, "INSERT INTO ll_artifacts SELECT ?, 1, seq, digest, ended FROM ll_artifacts"
                       " WHERE role = 1 AND path = ?", _p(tmp_path, "out/p99.txt"), _p(tmp_path, "out/p00.txt"))
    ahead = _verify(monkeypatch, url, tmp_path / "s1", ["out"], ahead=True)
    assert ahead == _verify(monkeypatch, url, tmp_path / "s2", ["out"], ahead=False)
    assert [t["path"] for t in ahead["targets"]] == [_p(tmp_path, "out/p00.txt"), _p(tmp_path, "out/p19.txt")]
    if forged:
        assert ahead["absent"] == [] and [f["error"] for f in ahead["failures"]] == ["IndexTampered"]
        assert "out/p99.txt" in ahead["failures"][0]["message"]
    else:
        [absent] = ahead["absent"]
        assert (len(absent["paths"]), absent["more"]) == (10, 8) and ahead["failures"] == []


def test_a_failed_producer_and_a_version_changed_before_it_was_read_break_lineage_either_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    bad, final = _write(tmp_path / "bad.txt", "bad"), _write(tmp_path / "final.txt", "final")
    records = [*_task("fails", 40, [_p(tmp_path, "out/p01.txt")], [bad], status="failed"),
               *_task("final", 41, [bad, _p(tmp_path, "merged.txt")], [final])]
    _write(tmp_path / "merged.txt", "merged, edited")  # then read by a task, then put back
    read = _write(tmp_path / "read.txt", "read")
    _append(url, tmp_path, [*records, *_task("reads", 42, [_p(tmp_path, "merged.txt")], [read])])
    _write(tmp_path / "merged.txt", "merged")
    paths = [*_paths(tmp_path), final, read]
    ahead = _verify(monkeypatch, url, tmp_path / "s1", paths, ahead=True)
    assert ahead == _verify(monkeypatch, url, tmp_path / "s2", paths, ahead=False)
    assert {(f["error"], _below(tmp_path, f["path"])) for f in ahead["failures"]} == {
        TWICE_B, ("ArtifactMismatch", "merged.txt"), ("LineageBroken", "bad.txt"), ("LineageBroken", "merged.txt")}


# -- where the two ways part, and no answer comes from the row either way ----------------------
# A plugin's pre-run check of many inputs meets rows that a look-up one file at a time never
# reads (it asks the index for the latest writer only): the batch raises IndexTampered and the
# plugin checks each file on its own (check_each), which ends where the small batch did.
PLUGIN_CONVERGES = {
    "the earlier-ending writer's row deleted": lambda b: _sql(
        b, f"DELETE FROM ll_artifacts WHERE role = 1 AND path = ? AND seq = {_latest_seq(1, 'ASC')}",
        _p(b, "twice_b.txt"), _p(b, "twice_b.txt")),
    "a producer row added, ended before the real one": lambda b: _sql(
        b, "INSERT INTO ll_artifacts SELECT path, 1, (SELECT seq FROM ll_artifacts WHERE role = 1 AND path = ?),"
           " digest, ? FROM ll_artifacts WHERE role = 1 AND path = ?",
        _p(b, "merged.txt"), ENDED, _p(b, "out/p15.txt")),
    "a reader row made a producer row": lambda b: _sql(
        b, "UPDATE ll_artifacts SET role = 1, ended = ? WHERE role = 0 AND path = ?", ENDED, _p(b, "out/p05.txt")),
}


@pytest.mark.parametrize("what", list(PLUGIN_CONVERGES))
def test_what_a_plugin_is_left_with_is_the_same_reading_ahead_or_not(tmp_path, monkeypatch, what):
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    _trusted(tmp_path, url, 2)
    PLUGIN_CONVERGES[what](tmp_path)
    paths = [os.path.abspath(p) for p in _paths(tmp_path)]
    ahead = _pre_run(monkeypatch, url, tmp_path / "s1", paths, ahead=True)
    one_by_one = _pre_run(monkeypatch, url, tmp_path / "s2", paths, ahead=False)
    twice_b = [(str(tmp_path / "twice_b.txt"), "MODIFIED")]
    assert one_by_one == ("returned", twice_b)
    # Reading ahead, the batch may refuse (it read the forged or missing row); the files'
    # own checks then say what the small batch said: twice_b changed, none failing.
    assert ahead == one_by_one or (ahead[0][0] == "IndexTampered" and ahead[1:] == (twice_b, [], False)), ahead


def test_a_deleted_row_of_the_earlier_ending_writer_fails_verification_either_way(tmp_path, monkeypatch):
    """Reading ahead, the producers' list is found short before the file is compared (one
    failure); one by one, the latest writer's look-up passes, the file is compared (MODIFIED)
    and the lineage's look-up of the producers finds the list short. Both name the file."""
    url = _build(tmp_path)
    _trusted(tmp_path, url, 2)
    PLUGIN_CONVERGES["the earlier-ending writer's row deleted"](tmp_path)
    monkeypatch.chdir(tmp_path)
    paths = _paths(tmp_path)
    ahead = _verify(monkeypatch, url, tmp_path / "s1", paths, ahead=True)
    one_by_one = _verify(monkeypatch, url, tmp_path / "s2", paths, ahead=False)
    assert ahead["targets"] == one_by_one["targets"]
    assert {(f["error"], _below(tmp_path, f["path"])) for f in ahead["failures"]} == {("IndexTampered", "twice_b.txt")}
    assert {(f["error"], _below(tmp_path, f["path"])) for f in one_by_one["failures"]} == {
        ("IndexTampered", "twice_b.txt"), TWICE_B}


# -- exit statuses: one run of many paths, and runs of fewer than 16 ---------------------------
def test_exit_statuses_of_one_run_of_many_paths_and_of_runs_of_fewer(tmp_path, monkeypatch):
    """0 verified, 1 a check failed, 2 bad input: the same for one run of 34 paths (read
    ahead) as for the worst of its runs of 15 at most (looked up one by one)."""
    url = _build(tmp_path)
    _trusted(tmp_path, url, 1)
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "s1")}
    paths = [p for p in _paths(tmp_path) if not p.endswith("twice_b.txt")]

    def statuses(paths):
        whole = run_cli("--ledger", url, *paths, cwd=tmp_path, env=env, program="verify-lineage")
        groups = [run_cli("--ledger", url, *paths[i : i + 15], cwd=tmp_path, env=env, program="verify-lineage")
                  for i in range(0, len(paths), 15)]
        return whole.returncode, [g.returncode for g in groups], whole.stdout + whole.stderr

    assert statuses(paths)[:2] == (0, [0, 0, 0])
    _sql(tmp_path, "DELETE FROM ll_artifacts WHERE role = 1 AND path = ?", _p(tmp_path, "out/p12.txt"))
    whole, groups, said = statuses(paths)
    assert (whole, groups) == (1, [1, 0, 0]), said
    assert "IndexTampered" in said and "out/p12.txt" in said
    whole, groups, said = statuses([*paths, "out/p-typo.txt"])
    assert (whole, groups) == (2, [1, 0, 2]), said
    assert "p-typo.txt" in said


def test_the_pre_run_check_of_many_inputs_returns_what_its_checks_of_few_do(tmp_path, monkeypatch):
    """check_before_run of 36 paths (read ahead) returns what its runs of 15 at most (one by
    one) return together, with files edited through links and links pointed elsewhere."""
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    _trusted(tmp_path, url, 2)
    for what in ("a part edited", "the linked directory pointed elsewhere", "a link output's target edited",
                 "a directory replaced by a link, then pointed elsewhere", "a file in a directory output edited"):
        CASES[what][0](tmp_path)
    paths = [os.path.abspath(p) for p in _paths(tmp_path)]
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "s1")) as ledger:
        whole = check_before_run(ledger, paths, "warn")
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "s2")) as ledger:
        groups = [c for i in range(0, len(paths), 15) for c in check_before_run(ledger, paths[i : i + 15], "warn")]
    assert whole == groups
    assert sorted({_below(tmp_path, c.path) for c in whole}) == [
        "dirout", "dirout/sub/c.txt", "linkdir/x.txt", "lnout.txt", "moved/y.txt", "out/p04.txt",
        "targets/t1.txt", "twice_b.txt"]


# -- bugs: reading ahead answers otherwise ------------------------------------------------------
def _latin1_file(directory: Path) -> str:
    name = os.fsencode(str(directory)) + b"/caf\xe9.txt"  # a name no record can hold
    with open(name, "wb") as handle:
        handle.write(b"x")
    return os.fsdecode(name)


def test_a_directory_of_many_files_with_a_name_not_utf8_is_checked_as_one_of_few(tmp_path):
    said = {}
    for count in (5, PARTS):
        directory = tmp_path / f"d{count}"
        files = [_write(directory / f"f{i:02d}.txt", str(i)) for i in range(count)]
        _append(f"sqlite:///{tmp_path}/ledger.db", tmp_path, _task(f"write-{count}", count, (), files))
        _latin1_file(directory)
        said[count] = run_cli("--ledger", f"sqlite:///{tmp_path}/ledger.db", directory.name, cwd=tmp_path,
                              program="verify-lineage", env={"LINEAGE_STATE_DIR": str(tmp_path / "state")})
    assert said[5].returncode == 1 and "UNREADABLE" in said[5].stdout, said[5]
    assert said[PARTS].returncode == 1 and "UNREADABLE" in said[PARTS].stdout, said[PARTS].stdout + said[PARTS].stderr


def test_a_pre_run_check_of_many_inputs_skips_a_name_not_utf8_as_of_few(tmp_path, monkeypatch):
    url = _build(tmp_path)
    _trusted(tmp_path, url, 2)
    paths = [str(tmp_path / "out" / f"p{i:02d}.txt") for i in range(PARTS)] + [_latin1_file(tmp_path)]
    one_by_one = _pre_run(monkeypatch, url, tmp_path / "s2", paths, ahead=False)
    assert one_by_one == ("returned", [])
    assert _pre_run(monkeypatch, url, tmp_path / "s1", paths, ahead=True) == one_by_one


def test_a_pre_run_check_of_many_inputs_skips_a_path_with_a_nul_byte_as_of_few(tmp_path, monkeypatch):
    url = _build(tmp_path)
    _trusted(tmp_path, url, 2)
    paths = [str(tmp_path / "out" / f"p{i:02d}.txt") for i in range(PARTS)] + [str(tmp_path / "a\0b.txt")]
    one_by_one = _pre_run(monkeypatch, url, tmp_path / "s2", paths, ahead=False)
    assert one_by_one == ("returned", [])
    assert _pre_run(monkeypatch, url, tmp_path / "s1", paths, ahead=True) == one_by_one


def test_a_deleted_record_row_is_reported_with_the_other_answers_reading_ahead_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    _trusted(tmp_path, url, 4)
    _sql(tmp_path, f"DELETE FROM ll_records WHERE seq = {_latest_seq(1, 'DESC')}", _p(tmp_path, "merged.txt"))
    paths = _paths(tmp_path)
    # The pre-run check raises either way (nothing can be answered for the batch).
    absolute = [os.path.abspath(p) for p in paths]
    assert _pre_run(monkeypatch, url, tmp_path / "s3", absolute, ahead=True)[0] == ("IndexTampered", None)
    assert _pre_run(monkeypatch, url, tmp_path / "s4", absolute, ahead=False)[0] == ("IndexTampered", None)
    one_by_one = _verify(monkeypatch, url, tmp_path / "s2", paths, ahead=False)
    assert "IndexTampered" in {f["error"] for f in one_by_one["failures"]}
    assert len(one_by_one["targets"]) >= PARTS
    assert _verify(monkeypatch, url, tmp_path / "s1", paths, ahead=True) == one_by_one


def test_a_lineage_that_failed_is_not_answered_cut_short_for_a_later_target(tmp_path):
    src = _write(tmp_path / "src.txt", "source")
    a = _write(tmp_path / "a.txt", "a")
    m = _write(tmp_path / "m.txt", "m")
    f = _write(tmp_path / "f.txt", "f")
    url = f"sqlite:///{tmp_path}/ledger.db"
    _append(url, tmp_path, [*_task("split", 1, [src], [a]), *_task("merge", 2, [a], [m]),
                            *_task("final", 3, [m], [f])])
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "state")) as ledger:
        assert verify_lineage(ledger, [f]).ok
    _sql(tmp_path, "UPDATE ll_records SET body = CAST(replace(CAST(body AS TEXT), 'split', 'splat') AS BLOB)"
                   f" WHERE seq = {_latest_seq(1, 'DESC')}", a)
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "state")) as ledger:
        alone = [verify_lineage(ledger, [path]) for path in (m, f)]
        together = verify_lineage(ledger, [m, f, m])
    assert [r.ok for r in alone] == [False, False]
    assert not together.ok
    assert [t.path for r in alone for t in r.targets] == []  # each lineage reaches the tampered record
    assert [(t.path, t.check.status.value) for t in together.targets] == []
