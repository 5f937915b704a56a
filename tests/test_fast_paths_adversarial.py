"""An adversarial review, by tests, of three short cuts of ``verify-lineage DIR``.

1. ``Ledger._last_seen_ahead``: within ``looking_ahead``, a file one index row says one
   record wrote, and no row says a record read, is settled from the rows read ahead where
   the names kept beside the verified tree list exactly that record's leaf.
2. ``ProvedLookups._proved`` keeps the proved ``LedgerRecord`` by id with its place and
   verifier (``_placed``), and answers a row at that place from it.
3. ``LineageQueries._lineage`` (slim): another output of a record walked before takes the
   first walk's parents and summary from the memo (key ``("walked", producer id)``); and the
   walk's listing spares an ``lstat`` for the files it saw as regular (``plain``).

Each is compared with the general path it stands for: one mode with every short cut on and
reading ahead (what users run), one with each short cut turned off (``_last_seen_ahead``
answering nothing, no ``_placed`` kept, no record's walk kept for its other outputs, no
``plain`` set) but reading ahead, and one with none, looking paths up one at a time. The
tamperer can write the ledger's SQLite file (index rows, record rows), append records, and
write files on disk, never the trusted state directory (each reader gets a copy of one
taken while the ledger was intact). Where the general path fails, the fast one must too.

The tests at the end are what this review found (each failed before efe51eb, which fixed
them): a walk that failed inside a loop through the ledger left a record's walk in the
memo, and its other outputs were answered OK where the general path fails them (0e1545d;
a node completed inside the failed walk was left the same way before); and a record naming
the relative input path ``walked`` (or ``summary``, before) in the "version" of another
record's id collided with the memo's own keys: verify-lineage crashed (exit 2) where the
general path fails (exit 1); a relative ``containers`` too (before these commits). The file takes 12-15 s of CPU (about 2 s of it starting PostgreSQL), longer in
wall time on a loaded machine (25-50 s at load 2-3).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._canonical import canonical_bytes
from lineage_ledger._capture.files import entries_of, manifest_records_of
from lineage_ledger._cli.render import report_json
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._files.manifest import walk_tree
from lineage_ledger._ledger.ledger import Ledger
from lineage_ledger._ledger.lineage import LedgerRecord, LineageNode
from lineage_ledger._model import Record
from lineage_ledger._verification import verify as verify_module
from lineage_ledger._verification.report import Report
from lineage_ledger._verification.verify import verify_lineage
from tests.conftest import run_cli

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
PARTS = 20  # above verify's threshold for reading ahead (16)


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _task(name: str, ended: int, inputs=(), outputs=(), status: str = "succeeded",
          raw_inputs: dict | None = None) -> list[Record]:
    """The records a capture makes of a task that ended ``ended`` seconds after T0 (its
    directories' manifest records first); ``raw_inputs``: entries added as given."""
    ins = [hash_file(p) for p in inputs]
    outs = [hash_file(p) for p in outputs]
    record = Record(engine="test", run_id="r", task_id=name, task_name=name, status=status,
                    started=T0 + timedelta(seconds=ended - 1), ended=T0 + timedelta(seconds=ended),
                    inputs=entries_of(ins), outputs=entries_of(outs))
    if raw_inputs:
        record = _as_written(record, inputs=raw_inputs)
    return [*manifest_records_of(outs), record]


def _as_written(record: Record, **extra: dict) -> Record:
    """``record`` with ``extra`` entries added to its inputs or outputs as a writer that
    bypasses :class:`Record` (which makes paths absolute) stores them: a relative name such
    as ``walked`` stays relative, as an earlier release's Record kept it, and reads back so."""
    body = json.loads(record.encode())
    for side, entries in extra.items():
        body[side] = {**body[side], **entries}
    return Record.decode(canonical_bytes(body))


def _append(url: str, base: Path, records: list[Record]) -> None:
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
        ledger.append_records([r.stored() for r in records])


def _trust(base: Path, url: str, targets: list[str]) -> None:
    """The intact ledger verified into ``s0`` (its trusted head and names): each reader
    gets a copy of it, so none sees what another remembered."""
    with open_ledger(url, read_only=True, state_dir=str(base / "s0")) as ledger:
        verify_lineage(ledger, targets)


def _copy_trust(base: Path, name: str) -> Path:
    target = base / name
    shutil.copytree(base / "s0", target)
    return target


def _sql(base: Path, statement: str, *params, rows: int = 1) -> None:
    with sqlite3.connect(base / "ledger.db") as conn:
        assert conn.execute(statement, params).rowcount == rows, statement


# -- the general path: every short cut turned off ------------------------------------------
class _NoWalkedMemo(dict):
    """A lineage memo that keeps no record's walk for its other outputs: each output walks
    its producer's inputs (each found in the memo, as before the short cut). Kept are the
    nodes, the producers' summaries and the containers found, whatever their keys; the
    walks kept (a tuple now, whatever a later form) are dropped."""

    dropped = 0  # walks refused (a test checks there were some: the reference is general)

    def __setitem__(self, key, value):
        if isinstance(value, (LineageNode, LedgerRecord, dict)):
            super().__setitem__(key, value)
        else:
            type(self).dropped += 1


@dataclass
class _GeneralReport(Report):
    lineage_memo: dict = field(default_factory=_NoWalkedMemo, repr=False)


class _NothingKept(dict):
    def __setitem__(self, key, value):
        pass


def _general(monkeypatch, *, ahead: bool, look_ahead: int = 16) -> None:
    monkeypatch.setattr(verify_module, "_LOOK_AHEAD", look_ahead if ahead else 10**9)
    monkeypatch.setattr(verify_module, "Report", _GeneralReport)
    monkeypatch.setattr(Ledger, "_last_seen_ahead", lambda self, path: None)

    def walk_without_plain(*args, plain=None, **kwargs):
        return walk_tree(*args, **kwargs)

    monkeypatch.setattr(verify_module, "walk_tree", walk_without_plain)


def _verify(url: str, state: Path, targets: list[str], *, keep_placed: bool = True) -> dict:
    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
        if not keep_placed:
            ledger._placed = _NothingKept()
        data = report_json(verify_lineage(ledger, targets))
    data.pop("verified_at", None)
    return data


def _three_ways(monkeypatch, base: Path, url: str, targets: list[str], *, window: int | None = None,
                crashes: bool = False, settled: list | None = None):
    """The report with every short cut (and reading ahead), with none but reading ahead, and
    with none looking up one path at a time. ``window``: paths checked together (and read
    ahead from 4 on). ``crashes``: an exception out of verify_lineage is the answer (its
    type), not raised. ``settled``: given the paths the short cut settled (with all on)."""
    reports = []
    for name, mode in (("fast", None), ("ahead", True), ("alone", False)):
        state = _copy_trust(base, f"s-{name}-{len(list(base.glob('s-*')))}")
        with monkeypatch.context() as m:
            if window is not None:
                m.setattr(verify_module, "_WINDOW", window)
                m.setattr(verify_module, "_LOOK_AHEAD", 4)
            if mode is not None:
                _general(m, ahead=mode, look_ahead=4 if window is not None else 16)
            elif settled is not None:
                m.setattr(Ledger, "_last_seen_ahead", _spy(Ledger._last_seen_ahead, settled))
            try:
                reports.append(_verify(url, state, targets, keep_placed=mode is None))
            except Exception as exc:  # noqa: BLE001 - a crash is the answer compared
                if not crashes:
                    raise
                reports.append(type(exc).__name__)
    return reports


def _spy(method, settled: list):
    def spied(self, path):
        answer = method(self, path)
        if answer is not None:
            settled.append(path)
        return answer
    return spied


def _failures(base: Path, report: dict) -> set[tuple[str, str | None]]:
    return {(f["error"], None if f["path"] is None else os.path.relpath(f["path"], base)) for f in report["failures"]}


def _ok_targets(base: Path, report: dict) -> set[str]:
    failed = {f["path"] for f in report["failures"]}
    return {os.path.relpath(t["path"], base) for t in report["targets"] if t["path"] not in failed}


# -- a walked directory: every kind of file the short cuts meet -----------------------------
def _p(base: Path, name: str) -> str:
    return str(base / name)


def _build(base: Path, url: str | None = None) -> str:
    """out/ holds: 20 parts one task wrote (``split``); io.txt, read and written by one task
    (``touch``); tw.txt written twice in one batch of records; tb.txt written twice, the
    second verified in a later batch (its names kept apart); ln.txt, a link to a file outside
    written through it (an ``alias_of`` entry); sub/, a directory output; q0-q5, six outputs
    of one task (``multi``) that read a source and mid.txt, which ``mid`` wrote."""
    src = [_write(base / "src" / f"s{i}.txt", f"source {i}") for i in range(3)]
    parts = [_write(base / "out" / f"p{i:02d}.txt", f"part {i}") for i in range(PARTS)]
    records = _task("split", 10, [src[0]], parts)
    io = _write(base / "out" / "io.txt", "io")
    records += _task("touch", 11, [io], [io])
    _write(base / "out" / "tw.txt", "tw 1")
    records += _task("tw1", 12, [src[1]], [_p(base, "out/tw.txt")])
    _write(base / "out" / "tw.txt", "tw 2")
    records += _task("tw2", 13, [src[1]], [_p(base, "out/tw.txt")])
    _write(base / "out" / "tb.txt", "tb 1")
    records += _task("tb1", 14, [src[2]], [_p(base, "out/tb.txt")])
    _write(base / "elsewhere" / "t.txt", "t")
    os.symlink("../elsewhere/t.txt", base / "out" / "ln.txt")
    records += _task("ln", 15, [src[0]], [_p(base, "out/ln.txt")])
    _write(base / "out" / "sub" / "a.txt", "a")
    _write(base / "out" / "sub" / "b.txt", "b")
    records += _task("mkdir", 16, [src[1]], [_p(base, "out/sub")])
    mid = _write(base / "mid.txt", "mid")
    records += _task("mid", 17, [src[2]], [mid])
    records += _task("multi", 18, [src[1], mid], [_write(base / "out" / f"q{i}.txt", f"q {i}") for i in range(6)])
    url = url or f"sqlite:///{base}/ledger.db"
    _append(url, base, records)
    _trust(base, url, [_p(base, "out")])
    _write(base / "out" / "tb.txt", "tb 2")
    _append(url, base, _task("tb2", 19, [src[2]], [_p(base, "out/tb.txt")]))
    _trust(base, url, [_p(base, "out")])
    return url


def _row(role: int, name: str, order: str = "ASC") -> str:
    return f"(SELECT seq FROM ll_artifacts WHERE role = {role} AND path = '{{base}}/{name}' ORDER BY seq {order} LIMIT 1)"


def _edit(base: Path, name: str) -> None:
    with open(base / name, "a") as handle:
        handle.write("edited")


def _relink(base: Path, name: str, target: str, text: str) -> None:
    _write(base / "elsewhere" / target, text)
    os.remove(base / name)
    os.symlink(f"../elsewhere/{target}", base / name)


def _linked_copy(base: Path, name: str, text: str | None = None) -> None:
    """out/``name`` replaced by a link to a copy outside (``text``: the copy's content)."""
    copy = base / "elsewhere" / f"copy-{name}"
    shutil.copyfile(base / "out" / name, copy)
    if text is not None:
        copy.write_text(text)
    os.remove(base / "out" / name)
    os.symlink(f"../elsewhere/copy-{name}", base / "out" / name)


OUT, IN = 1, 0
# name -> SQL (``{base}`` filled in) or a function of the base directory.
TAMPERINGS = {
    "nothing": None,
    "tw.txt's earlier writer's row deleted, the later's pointed at it": (
        f"CREATE TEMP TABLE first AS SELECT {_row(OUT, 'out/tw.txt')} AS seq",
        f"DELETE FROM ll_artifacts WHERE role = 1 AND path = '{{base}}/out/tw.txt' AND seq = {_row(OUT, 'out/tw.txt')}",
        "UPDATE ll_artifacts SET seq = (SELECT seq FROM first) WHERE role = 1 AND path = '{base}/out/tw.txt'"),
    "tw.txt's earlier writer's row deleted (one batch)": (
        f"DELETE FROM ll_artifacts WHERE role = 1 AND path = '{{base}}/out/tw.txt' AND seq = {_row(OUT, 'out/tw.txt')}"),
    "tw.txt's later writer's row deleted (one batch)": (
        f"DELETE FROM ll_artifacts WHERE role = 1 AND path = '{{base}}/out/tw.txt'"
        f" AND seq = {_row(OUT, 'out/tw.txt', 'DESC')}"),
    "tb.txt's earlier writer's row deleted (two batches)": (
        f"DELETE FROM ll_artifacts WHERE role = 1 AND path = '{{base}}/out/tb.txt' AND seq = {_row(OUT, 'out/tb.txt')}"),
    "tb.txt's later writer's row deleted (two batches)": (
        f"DELETE FROM ll_artifacts WHERE role = 1 AND path = '{{base}}/out/tb.txt'"
        f" AND seq = {_row(OUT, 'out/tb.txt', 'DESC')}"),
    "io.txt's reader row deleted (its writer read it)": (
        "DELETE FROM ll_artifacts WHERE role = 0 AND path = '{base}/out/io.txt'"),
    "io.txt's reader row moved to a part": (
        "UPDATE ll_artifacts SET path = '{base}/out/p04.txt' WHERE role = 0 AND path = '{base}/out/io.txt'"),
    "a part's writer row pointed at a record that writes another file": (
        f"UPDATE ll_artifacts SET seq = {_row(OUT, 'out/io.txt')} WHERE role = 1 AND path = '{{base}}/out/p05.txt'"),
    "a part's writer row pointed at a record that reads it as well as writing it elsewhere": (
        f"UPDATE ll_artifacts SET seq = {_row(IN, 'out/io.txt')} WHERE role = 1 AND path = '{{base}}/out/p06.txt'"),
    "a part's row moved onto tw.txt": (
        "UPDATE ll_artifacts SET path = '{base}/out/tw.txt' WHERE role = 1 AND path = '{base}/out/p07.txt'"),
    "a part's writer row made a reader row": (
        "UPDATE ll_artifacts SET role = 0 WHERE role = 1 AND path = '{base}/out/p08.txt'"),
    "a reader row added for a part, of the record that wrote it": (
        "INSERT INTO ll_artifacts SELECT path, 0, seq, digest, ended FROM ll_artifacts"
        " WHERE role = 1 AND path = '{base}/out/p09.txt'"),
    "the alias's writer row deleted": "DELETE FROM ll_artifacts WHERE role = 1 AND path = '{base}/out/ln.txt'",
    "the alias's real path's writer row deleted": (
        "DELETE FROM ll_artifacts WHERE role = 1 AND path = '{base}/elsewhere/t.txt'"),
    "multi's rows pointed at split": (
        f"UPDATE ll_artifacts SET seq = {_row(OUT, 'out/p00.txt')} WHERE role = 1 AND path LIKE '{{base}}/out/q%'"),
    "mid.txt's writer row deleted (every q's lineage)": "DELETE FROM ll_artifacts WHERE role = 1 AND path = '{base}/mid.txt'",
    "a part's record row placed one later": (
        f"UPDATE ll_records SET pos = pos + 1 WHERE seq = {_row(OUT, 'out/p00.txt')}"),
    "split's body replaced by touch's": (
        f"UPDATE ll_records SET body = (SELECT body FROM ll_records WHERE seq = {_row(OUT, 'out/io.txt')})"
        f" WHERE seq = {_row(OUT, 'out/p00.txt')}"),
    "a part edited": lambda b: _edit(b, "out/p10.txt"),
    "a part replaced by a link to an outside copy": lambda b: _linked_copy(b, "p11.txt"),
    "a part replaced by a link to an outside file of other content": lambda b: _linked_copy(b, "p12.txt", "other"),
    "io.txt edited": lambda b: _edit(b, "out/io.txt"),
    "the alias pointed elsewhere": lambda b: _relink(b, "out/ln.txt", "t2.txt", "t2"),
    "the alias's target edited": lambda b: _edit(b, "elsewhere/t.txt"),
    "a file in the directory output edited": lambda b: _edit(b, "out/sub/a.txt"),
    "a source of multi edited": lambda b: _edit(b, "src/s1.txt"),
    "mid.txt edited": lambda b: _edit(b, "mid.txt"),
    # Recorded files gone from the directory: listed as absent, read ahead past 16.
    "18 parts deleted from disk": lambda b: _remove_parts(b),
    "18 parts deleted from disk, one's writer row pointed at another record": lambda b: (
        _remove_parts(b), _sql(b, f"UPDATE ll_artifacts SET seq = {_row(OUT, 'out/io.txt')} WHERE role = 1"
                                  f" AND path = '{{base}}/out/p05.txt'".format(base=b))),
}


def _remove_parts(base: Path) -> None:
    for i in range(18):
        os.remove(base / "out" / f"p{i:02d}.txt")


# Reading ahead, the producers' list is found short; one by one, the latest writer's look-up
# finds the record it should have answered: the same failure, explained as the check that
# found it (as in test_look_ahead_adversarial; reading ahead, not the short cuts).
EXPLAINED_OTHERWISE = {"tw.txt's earlier writer's row deleted, the later's pointed at it",
                       "tw.txt's later writer's row deleted (one batch)", "tb.txt's later writer's row deleted (two batches)"}


def _tamper(base: Path, what: str, url: str | None = None) -> None:
    tampering = TAMPERINGS[what]
    if callable(tampering):
        tampering(base)
    elif tampering is not None:
        statements = [tampering] if isinstance(tampering, str) else tampering
        if url is not None and url.startswith("postgresql"):
            import psycopg

            with psycopg.connect(url, autocommit=True) as pg:
                for statement in statements:
                    assert pg.execute(statement.format(base=base)).rowcount != 0, (what, statement)
            return
        with sqlite3.connect(base / "ledger.db") as conn:
            for statement in statements:
                assert conn.execute(statement.format(base=base)).rowcount != 0, (what, statement)


# Those run again in windows of 8 too: multi's outputs in two windows, the parts in three.
WINDOWED = ["nothing", "io.txt's reader row moved to a part", "multi's rows pointed at split",
            "mid.txt's writer row deleted (every q's lineage)", "a part edited", "a source of multi edited",
            "mid.txt edited"]


@pytest.mark.parametrize(("what", "window"), [*((w, None) for w in TAMPERINGS), *((w, 8) for w in WINDOWED)])
def test_verify_lineage_of_a_directory_answers_as_the_general_path(tmp_path, monkeypatch, what, window):
    """verify-lineage out/, the index or the disk tampered with: the same report with the short
    cuts as without (answers, lineages, failures), and a failure wherever one matters. In
    windows of 8, multi's outputs (q0-q5) are checked in two windows, its walk kept between."""
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    _tamper(tmp_path, what)
    settled: list[str] = []
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, ["out"], window=window, settled=settled)
    assert fast == ahead
    if what in EXPLAINED_OTHERWISE:
        for report in (fast, alone):
            for failure in report["failures"]:
                failure["message"] = ""
    assert fast == alone
    assert fast["ok"] is (what in OK_ANYWAY), fast["failures"]
    # The short cut was taken: the parts no one read and no tampering touched were settled
    # from the rows read ahead (p04-p09 are the ones the index edits above touch).
    untouched = {_p(tmp_path, f"out/p{i:02d}.txt") for i in (*range(4), *range(13, 20))}
    if window is None:
        inputs = sorted(str(p) for p in (tmp_path / "out").iterdir() if p.is_file())
        assert _pre_run(url, _copy_trust(tmp_path, "s-pre1"), inputs) == _pre_run(
            url, _copy_trust(tmp_path, "s-pre2"), inputs, monkeypatch=monkeypatch)
    if what.startswith("18 parts"):  # the gone ones, looked up by _absent_under; too few left to read ahead
        untouched -= {_p(tmp_path, f"out/p{i}.txt") for i in (18, 19)}
        if what.endswith("another record"):  # _absent_under stops at p05's failure
            untouched = {_p(tmp_path, f"out/p{i:02d}.txt") for i in range(4)}
    assert untouched <= set(settled) or what.startswith("split's") or what == "a part's record row placed one later"


def _pre_run(url: str, state: Path, inputs: list[str], monkeypatch=None):
    """The plugins' pre-run check of many inputs (read ahead); with ``monkeypatch``, the
    short cut of last_seen turned off: its answer, or what it raised."""
    from lineage_ledger import VerificationError, check_before_run

    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
        if monkeypatch is not None:
            monkeypatch.setattr(ledger, "_last_seen_ahead", lambda path: None)
        try:
            return "returned", sorted((c.path, c.status.value) for c in check_before_run(ledger, inputs, "warn"))
        except VerificationError as failure:
            return type(failure).__name__, str(failure)


# The writer row of the real path behind out/ln.txt: out/ln.txt is looked up under every
# spelling its records name (query_paths), so the deleted row is a failure of the targeted read
# too (before the twenty-fourth stop, only the full audit reported it). The link to a copy has
# the content recorded.
# Files gone from a directory are listed, not failures.
OK_ANYWAY = {"nothing", "a part replaced by a link to an outside copy", "18 parts deleted from disk"}


@pytest.mark.parametrize("what", ["nothing", "a part edited", "a part's writer row pointed at a record that writes another file",
                                  "a part replaced by a link to an outside file of other content"])
def test_a_directory_walked_through_a_link_and_links_inside_it(tmp_path, monkeypatch, what):
    """viaout -> out, walked through the link (its files' directory is not its own real
    path: none of them is its own key), and inside out/ two links no record names: to a part
    (checked as that part) and to a part that is itself a link to a copy outside."""
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    os.symlink("out", tmp_path / "viaout")
    os.symlink("p10.txt", tmp_path / "out" / "to-p10.txt")
    os.symlink("p12.txt", tmp_path / "out" / "to-p12.txt")
    _tamper(tmp_path, what)
    settled: list[str] = []
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, ["viaout", "out/to-p10.txt", "out"], settled=settled)
    assert fast == ahead == alone
    # A changed part is named by each spelling it was met by (out/to-p10.txt once: the
    # target given, then met again in the walk of out/).
    spellings = ["out/{}", "viaout/{}", "out/to-{}", "viaout/to-{}"]
    expected = {"nothing": set(), "a part edited": {s.format("p10.txt") for s in spellings},
                "a part's writer row pointed at a record that writes another file": {"out/p05.txt"},
                "a part replaced by a link to an outside file of other content": {s.format("p12.txt") for s in spellings},
                }[what]
    assert {path for _error, path in _failures(tmp_path, fast)} == expected
    assert _p(tmp_path, "out/p00.txt") in settled


@pytest.mark.postgres
@pytest.mark.parametrize("what", ["nothing", "a part's writer row pointed at a record that writes another file",
                                  "tb.txt's earlier writer's row deleted (two batches)"])
def test_the_same_answers_on_postgresql(postgres_url, tmp_path, monkeypatch, what):
    """The PostgreSQL back-end's rows read ahead (find_places_many: one row object a record,
    shared by its outputs) settle the same files, with the same answers and refusals."""
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path, postgres_url)
    _tamper(tmp_path, what, postgres_url)
    settled: list[str] = []
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, ["out"], settled=settled)
    assert fast == ahead == alone
    assert fast["ok"] is (what == "nothing"), fast["failures"]
    assert _p(tmp_path, "out/p00.txt") in settled


CLI_TOGETHER = ["a part's writer row pointed at a record that writes another file",
                "io.txt's reader row deleted (its writer read it)", "multi's rows pointed at split",
                "the alias's writer row deleted", "a part replaced by a link to an outside file of other content",
                "a file in the directory output edited", "tb.txt's earlier writer's row deleted (two batches)"]


def test_verify_lineage_names_each_tampering_and_exits_1(tmp_path, monkeypatch):
    """Through the CLI, where users meet it: the tamperings above at once, each named, the
    run failed (exit 1), the untouched parts shown OK; the same failures in process."""
    monkeypatch.chdir(tmp_path)
    url = _build(tmp_path)
    for what in CLI_TOGETHER:
        _tamper(tmp_path, what)
    result = run_cli("--ledger", url, "out", cwd=tmp_path, program="verify-lineage",
                     env={"LINEAGE_STATE_DIR": str(_copy_trust(tmp_path, "s-cli"))})
    assert result.returncode == 1, result.stdout + result.stderr
    named = {"out/p05.txt", "out/io.txt", *(f"out/q{i}.txt" for i in range(6)), "out/ln.txt", "out/p12.txt",
             "out/sub", "out/tb.txt"}
    failed = result.stdout[result.stdout.index("FAILED:"):]
    assert all(any(f"{tmp_path}/{name}{end}" in failed for end in ":,") for name in named), failed
    assert f"FAILED: {len(named)} problem(s)" in failed
    assert result.stdout.count(" OK  <- ") >= PARTS - 2
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, ["out"])
    assert fast == ahead == alone
    assert {path for _error, path in _failures(tmp_path, fast)} == named


# -- many outputs of one record: the walk kept for the others ---------------------------------
def _outputs_of_two_records(base: Path, outputs: int) -> tuple[str, list[str], list[str]]:
    """``bad`` (status failed) writes out/b*.txt; ``good`` reads mid2.txt in a version no task
    wrote (``mk`` wrote it, then it was edited and read) and a source, and writes out/g*.txt.
    Every output's lineage is broken, each by its record's own cause."""
    src = _write(base / "src.txt", "src")
    mid = _write(base / "mid2.txt", "mid 1")
    records = _task("mk", 1, [src], [mid])
    _write(base / "mid2.txt", "mid 2")
    bad = [_write(base / "out" / f"b{i:03d}.txt", f"b {i}") for i in range(outputs)]
    good = [_write(base / "out" / f"g{i:03d}.txt", f"g {i}") for i in range(outputs)]
    records += _task("bad", 2, [src], bad, status="failed")
    records += _task("good", 3, [mid, src], good)
    url = f"sqlite:///{base}/ledger.db"
    _append(url, base, records)
    _trust(base, url, [src])
    return url, bad, good


def _broken_below(target: dict) -> set[str]:
    """The paths a target's lineage (as the JSON report draws it) shows broken."""
    found, stack = set(), [target["lineage"]]
    while stack:
        node = stack.pop()
        if node["kind"] == "broken":
            found.add(os.path.basename(node["path"]))
        stack.extend(node["inputs"])
    return found


@pytest.mark.parametrize("window", [None, 8])
def test_every_output_of_a_record_shows_its_records_failures(tmp_path, monkeypatch, window):
    """A failed producer, and an input changed between being written and being read: each of
    the 10 outputs of each record shows it in its own lineage (not only the first walked),
    in windows that split the outputs too, and the run exits 1."""
    url, bad, good = _outputs_of_two_records(tmp_path, 10)
    monkeypatch.setattr(_NoWalkedMemo, "dropped", 0)
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, [str(tmp_path / "out")], window=window)
    assert fast == ahead == alone
    assert _NoWalkedMemo.dropped >= 2 * 2  # each record's walk, refused in both general modes
    shown = {os.path.basename(t["path"]): _broken_below(t) for t in fast["targets"]}
    assert shown == {**{os.path.basename(p): set() for p in bad}, **{os.path.basename(p): {"mid2.txt"} for p in good}}
    # The failed producer is named once per output (the report keeps one failure per path).
    assert _failures(tmp_path, fast) == {("LineageBroken", "mid2.txt"),
                                         *(("LineageBroken", os.path.relpath(p, tmp_path)) for p in bad)}
    cli = run_cli("--ledger", url, "out", cwd=tmp_path, program="verify-lineage",
                  env={"LINEAGE_STATE_DIR": str(_copy_trust(tmp_path, "s-cli"))})
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "FAILED: 11 problem(s)" in cli.stdout and cli.stdout.count("test:bad [failed]") == 10, cli.stdout


WIDE = 160


@pytest.mark.parametrize("what", ["intact", "rows deleted and a file edited"])
def test_a_record_with_a_large_body_across_windows(tmp_path, monkeypatch, what):
    """One record writes 160 files and carries 300 KB of parameters (its body is read ahead
    once, proved once, then answered from ``_placed``); its outputs are checked in windows of
    48. Deleted rows of two outputs and a file edited are each named, whatever the window."""
    src = _write(tmp_path / "src.txt", "src")
    outs = [_write(tmp_path / "out" / f"w{i:03d}.txt", f"w {i}") for i in range(WIDE)]
    [task] = _task("wide", 1, [src], outs)
    wide = _with_parameters(task, {"blob": "x" * 300_000})
    url = f"sqlite:///{tmp_path}/ledger.db"
    _append(url, tmp_path, [wide])
    _trust(tmp_path, url, [src])
    if what != "intact":
        _sql(tmp_path, "DELETE FROM ll_artifacts WHERE role = 1 AND path IN (?, ?)", outs[10], outs[100], rows=2)
        _edit(tmp_path, "out/w070.txt")
    settled: list[str] = []
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, [str(tmp_path / "out")], window=48, settled=settled)
    assert fast == ahead == alone
    expected = set() if what == "intact" else {
        ("IndexTampered", "out/w010.txt"), ("IndexTampered", "out/w100.txt"), ("ArtifactMismatch", "out/w070.txt")}
    assert _failures(tmp_path, fast) == expected
    assert len(settled) == WIDE - 2 * (what != "intact")


def _fields(record: Record) -> dict:
    fields = record.to_dict()
    del fields["v"]
    fields.update(started=record.started, ended=record.ended)
    return fields


def _with_parameters(record: Record, parameters: dict) -> Record:
    return Record(**{**_fields(record), "parameters": parameters})


# -- what this review found (each failed before efe51eb) --------------------------------------
def _cycle(base: Path) -> tuple[str, list[str]]:
    """Task ``r`` reads a.txt and writes out/x, y, z; task ``r2`` reads out/y.txt and w.txt
    and writes a.txt (the same version ``r`` read: a loop through the ledger, which anyone who
    can append records can write); w.txt's producer row is then deleted from the index, so
    every walk that reaches w.txt raises IndexTampered."""
    a = _write(base / "a.txt", "a")
    outs = [_write(base / "out" / f"{n}.txt", n) for n in "xyz"]
    w = _write(base / "w.txt", "w")
    url = f"sqlite:///{base}/ledger.db"
    _append(url, base, [*_task("w", 1, [], [w]), *_task("r", 3, [a], outs), *_task("r2", 2, [outs[1], w], [a])])
    _trust(base, url, outs)
    _sql(base, "DELETE FROM ll_artifacts WHERE role = 1 AND path = ?", w)
    return url, outs


def test_a_loop_through_a_failed_walk_gives_other_outputs_the_general_answer(tmp_path, monkeypatch):
    """x.txt's walk reaches y.txt (through r2), whose walk of r's inputs completes (a.txt is
    in the memo, half built) and is kept as r's walk; then r2's next input fails and x.txt
    fails. The general path walks r's inputs again for z.txt and fails there too (IndexTampered
    at w.txt, z.txt left unanswered); the memo's short cut answered z.txt as if its lineage
    were whole, with the same single failure in the report (the run still exited 1)."""
    url, outs = _cycle(tmp_path)
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, outs)
    assert ahead == alone
    assert _failures(tmp_path, alone) == {("IndexTampered", "w.txt")}
    assert "out/z.txt" not in {os.path.relpath(t["path"], tmp_path) for t in alone["targets"]}
    assert fast == alone


def test_each_output_of_a_loop_fails_as_it_does_verified_alone(tmp_path, monkeypatch):
    """y.txt's node, completed inside x.txt's failed walk, stayed in the memo (before these
    commits too): verified after x.txt, y.txt was answered OK, alone it fails."""
    url, outs = _cycle(tmp_path)
    for i, path in enumerate(outs):  # each verified on its own: each fails, none answered
        alone = _verify(url, _copy_trust(tmp_path, f"s-alone{i}"), [path])
        assert (_failures(tmp_path, alone), alone["targets"]) == ({("IndexTampered", "w.txt")}, [])
    together = _verify(url, _copy_trust(tmp_path, "s-together"), outs)
    assert together["targets"] == []


@pytest.mark.parametrize("key", ["walked", "summary"])
def test_a_relative_input_path_named_like_a_memo_key(tmp_path, monkeypatch, key):
    """Record paths need not be absolute: a record appended by anyone who can write the
    ledger may read ``walked`` (or ``summary``) in a "version" that is another record's id:
    the lineage memo's key for that record's walked inputs (or its summary). The general
    path answers it as any input (missing here: the run fails, exit 1); with the memo's
    entry taken for a node (or a node for the entry), verify-lineage crashed, every other
    target unanswered, and so did the full audit."""
    monkeypatch.chdir(tmp_path)
    src = _write(tmp_path / "src.txt", "src")
    made = _write(tmp_path / "made.txt", "made")
    url = f"sqlite:///{tmp_path}/ledger.db"
    [maker] = _task("maker", 1, [src], [made])
    final = _write(tmp_path / "final.txt", "final")
    odd = {key: {"blake3": maker.id, "size": 1}}
    _append(url, tmp_path, [maker, *_task("odd", 2, [made], [final], raw_inputs=odd)])
    _trust(tmp_path, url, [made])
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, [made, final], crashes=True)
    assert ahead == alone
    cli = run_cli("--ledger", url, made, final, cwd=tmp_path, program="verify-lineage",
                  env={"LINEAGE_STATE_DIR": str(_copy_trust(tmp_path, "s-cli"))})
    assert (cli.returncode, "unexpected" in cli.stderr) == (1, False), cli.stderr
    assert not isinstance(alone, str) and alone["ok"] is False
    assert fast == alone


def test_a_relative_output_path_named_like_the_memo_containers_key(tmp_path, monkeypatch):
    """A record writes the relative path ``containers`` and another reads it: walking that
    input kept its node under ``("containers", None)`` too, where the walk keeps the
    directories it found; the next source met (src.txt) crashed the run (exit 2)."""
    monkeypatch.chdir(tmp_path)
    src = _write(tmp_path / "src.txt", "src")
    made = _write(tmp_path / "made.txt", "made")
    final = _write(tmp_path / "final.txt", "final")
    entry = {"containers": {"blake3": "ab" * 32, "size": 1}}
    [maker] = _task("maker", 1, [src], [made])
    [odd_writer] = _task("odd-writer", 2)
    odd_writer = _as_written(odd_writer, outputs=entry)
    url = f"sqlite:///{tmp_path}/ledger.db"
    _append(url, tmp_path, [maker, odd_writer, *_task("odd-reader", 3, [], [final], raw_inputs=entry)])
    _trust(tmp_path, url, [made])
    fast, ahead, alone = _three_ways(monkeypatch, tmp_path, url, [final, made], crashes=True)
    assert fast == ahead == alone
    cli = run_cli("--ledger", url, final, made, cwd=tmp_path, program="verify-lineage",
                  env={"LINEAGE_STATE_DIR": str(_copy_trust(tmp_path, "s-cli"))})
    assert (cli.returncode, "unexpected" in cli.stderr) == (1, False), cli.stderr
    # Answered as any input: "containers" is not there (relative to the working directory).
    assert not isinstance(fast, str) and _failures(tmp_path, fast) == {("ArtifactMismatch", "containers")}
