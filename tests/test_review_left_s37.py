"""Bugs the outside review of issue #14 found and left (tests/test_outside_review_s36.py has
the ones it fixed): the write path past a failed consistency check, paths the OS would
refuse, names that are not UTF-8, and write paths that create a ledger with nothing to write.

Each test failed before its fix (committed as a strict xfail, the mark removed with the
fix). Through the CLI as users run it, on real SQLite ledgers; the library's deferred
shipping through its Python API, where users meet it.
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from lineage_ledger._ledger.deferred import ship, spool_first
from lineage_ledger._ledger.recorder import Recorder
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record
from tests.support.rollback import drop_last_block
from tests.test_outside_review_s36 import _build, _rewrite_last_block


def _records(db: str) -> int:
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT count(*) FROM ll_records").fetchone()[0]
    conn.close()
    return count


def _rewritten(tmp_path, how: str) -> str:
    """A ledger this account verified (4 records), then shrunk or forked behind its back."""
    db = _build(tmp_path)
    run_cli("log", "--ledger", db, cwd=tmp_path, check_rc=0)  # the remembered head: 4 records
    if how == "shrunk":
        drop_last_block(db)  # restored from an older copy
    else:
        _rewrite_last_block(tmp_path, db)
    return db


def _waiting(tmp_path) -> int:
    listed = json.loads(run_cli("spool", "status", "--json", cwd=tmp_path, check_rc=0).stdout)
    return sum(entry["records"] for entry in listed)


def _spool_one(tmp_path, db: str) -> None:
    """One record journaled in the CLI's default spool (``.lineage/spool`` under ``tmp_path``)
    and left there for another process to ship, as a journal-only recorder leaves it."""
    deferred = spool_first(f"sqlite:///{db}", spool=str(tmp_path / ".lineage" / "spool"))
    recorder = Recorder(deferred, ship=False)  # type: ignore[arg-type]
    recorder.record(make_record(70, run_id="waiting", outputs=[artifact("/data/70", "70")]))
    recorder.close()
    deferred.close()


@pytest.mark.parametrize("how", ["shrunk", "forked"])
def test_run_does_not_append_to_a_rewritten_history(tmp_path, how):
    """Bug: the read commands exit 1 on a ledger that shrank or forked since this account
    verified it ("run `lineage-ledger reset-trust`"), but ``lineage-ledger run -- CMD``
    appends its record to it, exit status CMD's (0): the record goes into a history the
    user has not accepted, and a shrunk ledger appended to reads as a fork. The command
    still runs; its record waits in the spool; the message names the problem and
    reset-trust; exit 1 (a verification failed)."""
    db = _rewritten(tmp_path, how)
    before = _records(db)
    result = run_cli("run", "-o", "new.txt", "--ledger", db, "--", "sh", "-c", "echo new > new.txt", cwd=tmp_path)
    assert (tmp_path / "new.txt").read_text() == "new\n", "the command did not run"
    assert _records(db) == before, "the record was appended to the rewritten ledger"
    assert result.returncode == 1, result
    assert "reset-trust" in result.stderr and "spool" in result.stderr, result.stderr
    assert _waiting(tmp_path) == 1, "the record is not waiting in the spool"


def test_spool_ship_does_not_append_to_a_rewritten_history(tmp_path):
    """Bug: ``lineage-ledger spool ship`` ships what waits into a ledger that shrank since
    this account verified it, "shipped 1 record(s)", exit 0. It should leave the records
    waiting, exit 1 and name reset-trust; once the trust is reset, they ship."""
    db = _rewritten(tmp_path, "shrunk")
    _spool_one(tmp_path, db)
    before = _records(db)
    refused = run_cli("spool", "ship", "--ledger", db, cwd=tmp_path)
    assert _records(db) == before, "the spooled record was appended to the rewritten ledger"
    assert refused.returncode == 1 and "reset-trust" in refused.stderr, refused
    assert _waiting(tmp_path) == 1
    run_cli("reset-trust", "--ledger", db, cwd=tmp_path, check_rc=0)
    run_cli("spool", "ship", "--ledger", db, cwd=tmp_path, check_rc=0)
    assert _records(db) == before + 1 and _waiting(tmp_path) == 0


_NAMING = {  # each command that takes a path, as (program, arguments): PATH and DB filled in
    "verify-lineage": ("verify-lineage", ("PATH", "--ledger", "DB")),
    "why": ("lineage-ledger", ("why", "PATH", "--ledger", "DB")),
    "depends": ("lineage-ledger", ("depends", "PATH", "--ledger", "DB")),
    "hash": ("lineage-ledger", ("hash", "PATH")),
    "run -i": ("lineage-ledger", ("run", "-i", "PATH", "--ledger", "DB", "--", "true")),
    "adopt": ("lineage-ledger", ("adopt", "PATH", "--ledger", "DB")),
    "export": ("lineage-ledger", ("export", "PATH", "--ledger", "DB", "--format", "prov-json", "-o", "out.json")),
    "graph": ("lineage-ledger", ("graph", "PATH", "--ledger", "DB", "--format", "dot", "-o", "out.dot")),
}


@pytest.mark.parametrize("command", list(_NAMING))
def test_a_trailing_slash_after_a_file_is_not_the_file(tmp_path, command):
    """Bug: ``verify-lineage out0.txt/`` (and ``why``, ``depends``, ``hash``, ``run -i``,
    ``adopt``) answers for, or records, the file ``out0.txt``, exit 0, where the OS says
    ENOTDIR ("Not a directory"): the name is normalised before anyone looks. It should be
    an error naming the path, exit 2, as ``verify-lineage`` answers a path that does not
    exist, and nothing recorded."""
    db = _build(tmp_path, blocks=(1,))
    program, template = _NAMING[command]

    def argv(path: str) -> list[str]:
        return [{"PATH": path, "DB": db}.get(arg, arg) for arg in template]

    if program == "verify-lineage":
        missing = run_cli(*argv("nothere.txt"), cwd=tmp_path, program=program)
        assert missing.returncode == 2, missing
    before = _records(db)
    result = run_cli(*argv("out0.txt/"), cwd=tmp_path, program=program)
    assert result.returncode == 2, result
    assert "out0.txt/" in result.stderr and "not a directory" in result.stderr, result.stderr
    assert _records(db) == before, "something was recorded"
    # A link whose target runs through a file is refused by the OS as ENOTDIR too, but it is
    # not named with a slash too many: each command answers it as before.
    os.symlink(tmp_path / "out0.txt" / "x", tmp_path / "through")
    linked = run_cli(*argv("through"), cwd=tmp_path, program=program)
    assert "a '/' follows" not in linked.stderr, linked.stderr
    # A directory named with its slash is still a directory.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("f")
    if command in ("hash", "adopt"):
        run_cli(*argv("sub/"), cwd=tmp_path, program=program, check_rc=0)


def test_a_name_that_is_not_utf8_fails_alike_inside_a_directory_and_alone(tmp_path):
    """Bug: a file whose name is not valid UTF-8 in a recorded directory D: ``verify-lineage
    D`` reports it UNREADABLE, exit 1 (D is not what was recorded), but ``verify-lineage
    D/NAME`` stops with "error: ... the file name is not valid UTF-8", exit 2. The file is
    there; no record can name it, so it cannot be verified: a failed check, exit 1, both
    ways (as an unrecorded file in D is)."""
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "a").write_text("a")
    db = str(tmp_path / "ledger.db")
    run_cli("run", "-o", "D", "--ledger", db, "--", "true", cwd=tmp_path, check_rc=0)
    with open(bytes(tmp_path / "D") + b"/bad\xff", "w") as handle:
        handle.write("x")
    whole = run_cli("D", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    alone = run_cli(b"D/bad\xff", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    assert whole.returncode == 1, whole
    assert alone.returncode == 1 and "UTF-8" in alone.stdout, alone


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_the_librarys_ship_with_nothing_waiting_creates_no_ledger(tmp_path, kind):
    """Bug: ``ship(url)`` (the library's deferred shipping; the CLI's ``spool ship`` looks
    first) opens the ledger before it looks at the spool: with nothing waiting, a mistyped
    path becomes a new directory and an empty ledger, and a zero-byte file a new ledger."""
    path = tmp_path / "typo" / "ledger.db" if kind == "missing" else tmp_path / "empty.db"
    if kind == "empty":
        path.write_bytes(b"")
    shipped, left = ship(f"sqlite:///{path}", spool=str(tmp_path / "spool"))
    assert (shipped, left.records) == (0, 0)
    assert (not path.parent.exists()) if kind == "missing" else path.stat().st_size == 0, "a ledger was created"


def test_adopt_of_a_missing_path_creates_no_ledger(tmp_path):
    """Bug (the same class, nearby): ``lineage-ledger adopt MISSING --ledger TYPO`` creates
    the directory and an empty ledger at TYPO, then stops "no such file", exit 2."""
    path = tmp_path / "typo" / "ledger.db"
    result = run_cli("adopt", "nothere.txt", "--ledger", path, cwd=tmp_path)
    assert result.returncode == 2, result
    assert not path.parent.exists(), "a ledger was created"


def test_adopt_does_not_replay_the_spool_into_a_rewritten_history(tmp_path):
    """Bug (the same class, nearby): ``lineage-ledger adopt`` on a ledger that shrank since
    this account verified it fails the consistency check, exit 1, but only after opening the
    ledger has shipped what waited in the spool into it."""
    db = _rewritten(tmp_path, "shrunk")
    _spool_one(tmp_path, db)
    before = _records(db)
    result = run_cli("adopt", "out0.txt", "--ledger", db, cwd=tmp_path)
    assert result.returncode == 1 and "reset-trust" in result.stderr, result
    assert _records(db) == before, "the spooled record was appended to the rewritten ledger"
    assert _waiting(tmp_path) == 1


def test_an_engines_recorder_leaves_its_records_in_the_spool_of_a_rewritten_history(tmp_path, caplog):
    """The engines' path (a spool-first recorder, through the Python API): nothing appended
    to a ledger that shrank since this account verified it, and ``close()`` (what runs at a
    task process's exit) gives up as soon as the ledger fails the check, not after the
    whole timeout (it waited all of it, 20 s here: a retry does not settle a rewrite)."""
    import time

    db = _rewritten(tmp_path, "shrunk")
    before = _records(db)
    deferred = spool_first(f"sqlite:///{db}", spool=str(tmp_path / ".lineage" / "spool"))
    recorder = Recorder(deferred, max_age=0.05)  # type: ignore[arg-type]
    recorder.record(make_record(71, run_id="engine", outputs=[artifact("/data/71", "71")]))
    started = time.monotonic()
    assert recorder.close(timeout=20) is False
    assert time.monotonic() - started < 10, "close() waited out its timeout"
    assert "reset-trust" in str(recorder.last_error)
    assert _records(db) == before
    assert _waiting(tmp_path) == 1
    # Its last word says why (it said "not shipped within 20.0s ... shipped when the ledger is
    # next opened": it never waited, and opening it ships nothing into a rewritten history).
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "failed a verification" in said and "next opened" not in said, said


@pytest.mark.parametrize("how", ["shrunk", "forked"])
def test_opening_a_ledger_does_not_replay_the_spool_into_a_rewritten_history(tmp_path, how):
    """Bug: ``open_ledger(url)`` (the library's writer, replay on by default) shipped the
    records that dead processes left in the spool into a ledger this account saw shrink or
    fork, before anything looked. Now it raises HistoryRewritten and the records keep
    waiting; after ``reset-trust`` they ship."""
    from lineage_ledger import HistoryRewritten, open_ledger

    db = _rewritten(tmp_path, how)
    _spool_one(tmp_path, db)
    before = _records(db)
    with pytest.raises(HistoryRewritten, match="reset-trust"):
        open_ledger(f"sqlite:///{db}", spool=str(tmp_path / ".lineage" / "spool")).close()
    assert _records(db) == before, "the spool was replayed into the rewritten ledger"
    assert _waiting(tmp_path) == 1
    run_cli("reset-trust", "--ledger", db, cwd=tmp_path, check_rc=0)
    with open_ledger(f"sqlite:///{db}", spool=str(tmp_path / ".lineage" / "spool")):
        pass
    assert _records(db) == before + 1 and _waiting(tmp_path) == 0
