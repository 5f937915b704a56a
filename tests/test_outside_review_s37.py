"""An outside review of the trust the read commands give after the ledger was tampered with, on
real SQLite files and a real PostgreSQL server (``postgres_url``), made through the CLI as users
run it. Engine-level cases (Snakemake's pre-run check) are in ``test_outside_review_s37_engines``.

Each test names one bug found; a bug not fixed yet is a strict xfail whose reason says where
the fix lies. The file takes about 6 s on this 2-core machine (plus the PostgreSQL server's
start, shared with the other tests of a run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._files.hashing import hash_file
from tests.conftest import run_cli
from tests.support.chains import task_chain
from tests.support.factories import artifact, make_record


def _execute(url: str, base, statement: str, *params) -> int:
    """One statement as the ledger's owner, on either back-end (``?`` placeholders)."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(base / "ledger.db", isolation_level=None)) as conn:
            return conn.execute(statement, params).rowcount
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        return conn.execute(statement.replace("?", "%s"), params).rowcount


def _empty(db) -> None:
    """Every block, record and index row of the SQLite file ``db`` deleted; its ``ll_meta``
    (origin) kept, and the file closed (its WAL folded back in)."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for table in ("ll_artifacts", "ll_records", "ll_blocks"):
            conn.execute(f"DELETE FROM {table}")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return request.getfixturevalue("postgres_url")


def test_depends_notices_a_deleted_reader_row_below_the_top(tmp_path, ledger_url):
    """Bug: ``lineage-ledger depends in.txt`` (default ``-n 50``) after the index row saying
    that step2 read ``out1.txt`` was deleted prints ``out1.txt`` as a leaf, exit 0: step2,
    ``out2.txt``, step3 and ``out3.txt`` are gone from the answer, with no word. The same index
    makes ``depends out1.txt`` and ``depends in.txt --all`` fail with ``IndexTampered``. Below
    the top, ``_derived`` asks ``consumers(out, digest, limit=50)``: ``find_page`` with a
    digest, and ``Ledger.consumers`` counts a short first page against the names kept only
    when ``digest is None`` (``_derived``'s ``listing`` too). The same on SQLite and PostgreSQL.
    Fix: for a page looked up with a digest, read the path's rows as the unpaged ``_find``
    does (the listing is by path, the digest matched on the proved records), or count the
    page by path before filtering it by digest."""
    task_chain(tmp_path, ledger_url)
    whole = run_cli("depends", "in.txt", "--ledger", ledger_url, cwd=tmp_path, check_rc=0)
    assert "out3.txt" in whole.stdout  # the intact answer reaches the end of the chain
    deleted = _execute(ledger_url, tmp_path, "DELETE FROM ll_artifacts WHERE path = ? AND role = 0",
                       str(tmp_path / "out1.txt"))
    assert deleted == 1
    direct = run_cli("depends", "out1.txt", "--ledger", ledger_url, cwd=tmp_path)
    assert direct.returncode == 1 and "index left out" in direct.stdout + direct.stderr, direct  # asked directly
    below = run_cli("depends", "in.txt", "--ledger", ledger_url, cwd=tmp_path)
    assert below.returncode == 1, below.stdout  # exit 0, out1.txt shown as a leaf
    assert "index left out" in below.stdout + below.stderr, below


def test_a_ledger_swapped_for_a_symlink_to_a_rewritten_copy_is_not_trusted(tmp_path):
    """Bug: this account verified ``.lineage/ledger.db`` (its head is remembered). Someone who
    can write ``.lineage/`` (a group-shared SQLite ledger must be: SQLite creates its ``-wal``
    and ``-shm`` there) builds a consistent rewrite with the same origin in ``.lineage/other.db``
    and replaces ``ledger.db`` by a symbolic link to it. ``verify-lineage`` answers "verified",
    exit 0: the ledger's identity, hence its state directory, is ``os.path.realpath`` of the
    file, so the swapped-in file has no remembered head and its first audit trusts whatever
    consistent history it holds. A plain ``mv other.db ledger.db`` is caught
    (``HistoryRewritten``); the symlink is not. Fix: look up the remembered head by the path as
    named (absolute, links not resolved) as well as by the realpath, and by origin; refuse
    where a head remembered under any of them is not a prefix of the ledger."""
    lineage = tmp_path / ".lineage"
    lineage.mkdir()
    db = lineage / "ledger.db"
    task_chain(tmp_path, f"sqlite:///{db}", blocks=(2,))
    run_cli("--ledger", db, "out1.txt", cwd=tmp_path, program="verify-lineage", check_rc=0)  # remembered
    forged = lineage / "other.db"
    shutil.copy(db, forged)
    _empty(forged)  # same origin in ll_meta: only the history changes
    (tmp_path / "out1.txt").write_text("forged")
    records = [make_record(0, run_id="r", inputs=[hash_file(str(tmp_path / "in.txt"))],
                           outputs=[hash_file(str(tmp_path / "out1.txt"))])]
    with open_ledger(f"sqlite:///{forged}", spool=str(tmp_path / "spool-forger"),
                     state_dir=str(tmp_path / "forger-state")) as ledger:
        ledger.append_records([r.stored() for r in records])
    os.remove(db)
    os.symlink("other.db", db)
    result = run_cli("--ledger", db, "out1.txt", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1, result.stdout  # "verified", exit 0
    assert "HistoryRewritten" in result.stdout + result.stderr, result


def test_a_ledger_link_pointed_at_a_rewritten_copy_is_not_trusted(tmp_path):
    """The same attack where the ledger's path was a link already when this account verified
    it (``.lineage/ledger.db -> store/ledger.db``): pointed at a rewritten copy, it is still
    the ledger verified there (the state is kept by the path as named). A ledger moved and
    linked back, the same history, passes."""
    lineage, store = tmp_path / ".lineage", tmp_path / "store"
    lineage.mkdir()
    store.mkdir()
    real = store / "ledger.db"
    task_chain(tmp_path, f"sqlite:///{real}", blocks=(2,))
    db = lineage / "ledger.db"
    os.symlink(real, db)
    run_cli("--ledger", db, "out1.txt", cwd=tmp_path, program="verify-lineage", check_rc=0)  # remembered
    moved = store / "moved.db"
    os.replace(real, moved)  # moved on purpose, the link pointed at it: the same ledger
    os.remove(db)
    os.symlink(moved, db)
    run_cli("--ledger", db, "out1.txt", cwd=tmp_path, program="verify-lineage", check_rc=0)
    forged = store / "forged.db"
    shutil.copy(moved, forged)
    _empty(forged)
    with open_ledger(f"sqlite:///{forged}", spool=str(tmp_path / "spool-forger"),
                     state_dir=str(tmp_path / "forger-state")) as ledger:
        ledger.append_records([make_record(7, run_id="r", outputs=[artifact("/forged", "x")]).stored()])
    os.remove(db)
    os.symlink(forged, db)
    result = run_cli("--ledger", db, "out1.txt", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1 and "HistoryRewritten" in result.stdout + result.stderr, result


def test_a_plain_swap_of_the_ledger_file_is_caught(tmp_path):
    """What held: the same rewritten copy moved over the ledger (no symlink) keeps the ledger's
    path, so the remembered head catches it. (The contrast to the case above.)"""
    lineage = tmp_path / ".lineage"
    lineage.mkdir()
    db = lineage / "ledger.db"
    task_chain(tmp_path, f"sqlite:///{db}", blocks=(2,))
    run_cli("--ledger", db, "out1.txt", cwd=tmp_path, program="verify-lineage", check_rc=0)
    forged = lineage / "other.db"
    shutil.copy(db, forged)
    _empty(forged)
    with open_ledger(f"sqlite:///{forged}", spool=str(tmp_path / "spool-forger"),
                     state_dir=str(tmp_path / "forger-state")) as ledger:
        ledger.append_records([make_record(7, run_id="r", outputs=[artifact("/forged", "x")]).stored()])
    os.replace(forged, db)
    result = run_cli("--ledger", db, "out1.txt", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1 and "HistoryRewritten" in result.stdout + result.stderr, result


def test_log_names_a_deleted_record_row_as_missing(tmp_path, ledger_url):
    """Bug: a record row deleted from a verified block (its index rows left alone) makes
    ``lineage-ledger log`` fail, exit 1, as it should, but with "verification failed: record
    in block 1 does not hash to its id": an empty id (two spaces) and a reason that is not
    what happened. The same on SQLite and PostgreSQL. It should name the place (block 1,
    position 0: record number 2) and say the record is missing from the ledger."""
    task_chain(tmp_path, ledger_url)
    run_cli("--ledger", ledger_url, "out3.txt", cwd=tmp_path, program="verify-lineage", check_rc=0)
    assert _execute(ledger_url, tmp_path, "DELETE FROM ll_records WHERE seq = ?", 2) == 1
    result = run_cli("log", "--ledger", ledger_url, cwd=tmp_path)
    assert result.returncode == 1, result
    assert "record  in block" not in result.stderr + result.stdout, result.stderr
    assert "missing" in result.stderr + result.stdout, result.stderr
