"""`lineage-ledger repair-index`: after an audit named index rows deleted or edited, the
index is derived again from the verified records, so reads answer again (before, a path
whose rows were deleted was refused for good); the records themselves are never changed,
and a ledger whose records do not verify is left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.first_run import FirstRun


def _edit(db, statement, *args):
    with sqlite3.connect(db) as conn:
        changed = conn.execute(statement, args).rowcount
    assert changed, statement


def _rows(db):
    with sqlite3.connect(db) as conn:
        return (conn.execute("SELECT path, role, seq, digest, ended FROM ll_artifacts ORDER BY seq, role, path").fetchall(),
                conn.execute("SELECT seq, id, height, pos, run_id, body FROM ll_records ORDER BY seq").fetchall())


def _recorded_and_audited(project: Path) -> None:
    """raw.txt -> mid.txt -> final.txt in run "run-a", recorded with the CLI, then audited."""
    url, env = f"sqlite:///{project / 'ledger.db'}", _env(project)
    (project / "raw.txt").write_text("raw\n")
    for source, target in (("raw.txt", "mid.txt"), ("mid.txt", "final.txt")):
        run_cli("run", "-i", source, "-o", target, "--ledger", url, "--", "sh", "-c", f"cat {source} > {target}",
                cwd=project, env=env, check_rc=0)
    run_cli("--ledger", url, cwd=project, program="verify-lineage", env=env, check_rc=0)


def _env(project: Path) -> dict[str, str]:
    # FirstRun's state directory, beside the project: what the audit remembered.
    return {"XDG_STATE_HOME": str(project.parent / "state"), "LINEAGE_RUN_ID": "run-a"}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    """The recorded and audited pipeline, made once for the module (tests/support/first_run.py)."""
    return FirstRun(tmp_path_factory.mktemp("repair"), _recorded_and_audited)


@pytest.fixture
def ledger(first_run, monkeypatch):
    """The pipeline as its first run and audit left it, put back for this test: its
    directory, URL and environment."""
    project = first_run.put_back(monkeypatch)
    return project, f"sqlite:///{project / 'ledger.db'}", _env(project)


def test_deleted_and_edited_index_rows_are_rebuilt_and_reads_answer_again(ledger):
    tmp_path, url, env = ledger
    db = tmp_path / "ledger.db"
    pristine = _rows(db)
    run_id = pristine[1][0][4]
    _edit(db, "DELETE FROM ll_artifacts WHERE path = ?", str(tmp_path / "mid.txt"))
    _edit(db, "UPDATE ll_records SET run_id = 'elsewhere' WHERE seq = 0")
    _edit(db, "UPDATE ll_records SET pos = 7 WHERE seq = 1")
    _edit(db, "INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES ('/planted', 1, 1, 'ab', '')")
    broken = [run_cli("why", "mid.txt", "--ledger", url, cwd=tmp_path, env=env),
              run_cli("log", "--run", run_id, "--ledger", url, cwd=tmp_path, env=env),
              run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=env)]
    assert [r.returncode for r in broken] == [1, 1, 1], broken
    repaired = run_cli("repair-index", "--ledger", url, cwd=tmp_path, env=env)
    assert repaired.returncode == 0 and "rebuilt the index of 2 records (4 artifact rows)" in repaired.stderr, repaired
    assert _rows(db) == pristine  # exactly what the writer had stored, planted row gone
    for args in (["why", "mid.txt"], ["log", "--run", run_id]):
        run_cli(*args, "--ledger", url, cwd=tmp_path, env=env, check_rc=0)
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=env, check_rc=0)
    # Nothing is laundered: an edited file is still caught against the records.
    (tmp_path / "mid.txt").write_text("edited by hand\n")
    assert run_cli("mid.txt", "--ledger", url, cwd=tmp_path, program="verify-lineage", env=env).returncode == 1


def test_records_that_do_not_verify_leave_the_index_as_it_was(ledger):
    tmp_path, url, env = ledger
    db = tmp_path / "ledger.db"
    _edit(db, "DELETE FROM ll_artifacts WHERE path = ?", str(tmp_path / "mid.txt"))
    _edit(db, "UPDATE ll_records SET body = CAST(replace(CAST(body AS TEXT), 'cat', 'dog') AS BLOB) WHERE seq = 1")
    before = _rows(db)
    refused = run_cli("repair-index", "--ledger", url, cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "restore the ledger from a backup" in refused.stderr, refused
    assert "Traceback" not in refused.stderr
    assert _rows(db) == before  # rolled back whole


def test_no_ledger_and_other_back_ends_are_refused_with_exit_2(tmp_path):
    missing = run_cli("repair-index", "--ledger", f"sqlite:///{tmp_path / 'nope.db'}", cwd=tmp_path)
    assert missing.returncode == 2 and "no ledger at" in missing.stderr, missing
    assert not (tmp_path / "nope.db").exists()
    other = run_cli("repair-index", "--ledger", "memory://", cwd=tmp_path)
    assert other.returncode == 2 and "SQLite and PostgreSQL ledgers only" in other.stderr, other


@pytest.mark.postgres
def test_a_postgresql_ledger_is_repaired_the_same_way(postgres_url, tmp_path):
    """The same repairs through SQLAlchemy on a real PostgreSQL server, while the block table
    is locked against appends: deleted and edited index rows rebuilt, then record rows no
    block places removed (was test_a_postgresql_ledger_loses_the_record_rows_no_block_places)."""
    import psycopg

    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "LINEAGE_RUN_ID": "run-a"}
    (tmp_path / "raw.txt").write_text("raw\n")
    run_cli("run", "-i", "raw.txt", "-o", "mid.txt", "--ledger", postgres_url, "--", "sh", "-c",
            "cat raw.txt > mid.txt", cwd=tmp_path, env=env, check_rc=0)
    run_cli("--ledger", postgres_url, cwd=tmp_path, program="verify-lineage", env=env, check_rc=0)
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute("SELECT path, role, seq, digest, ended FROM ll_artifacts ORDER BY path, role").fetchall()
        conn.execute("DELETE FROM ll_artifacts WHERE path = %s", (str(tmp_path / "mid.txt"),))
        conn.execute("UPDATE ll_records SET run_id = 'elsewhere'")
    assert run_cli("why", "mid.txt", "--ledger", postgres_url, cwd=tmp_path, env=env).returncode == 1
    repaired = run_cli("repair-index", "--ledger", postgres_url, cwd=tmp_path, env=env)
    assert repaired.returncode == 0 and "rebuilt the index of 1 records (2 artifact rows)" in repaired.stderr, repaired
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT path, role, seq, digest, ended FROM ll_artifacts ORDER BY path, role").fetchall() \
            == before
        assert conn.execute("SELECT run_id FROM ll_records").fetchall() == [("run-a",)]
    run_cli("why", "mid.txt", "--ledger", postgres_url, cwd=tmp_path, env=env, check_rc=0)

    # The same ledger then loses the record rows no block places (as
    # test_record_rows_no_block_places_are_removed_and_counted on SQLite): planted rows past the chain,
    # before it, in no block, and a block row below height 0 are removed and counted, the index is
    # what the writer stored, and the audit passes. (One recorded and audited run serves both.)
    select = ("SELECT seq, id, height, pos, run_id FROM ll_records ORDER BY seq",
              "SELECT path, role, seq, digest, ended FROM ll_artifacts ORDER BY seq, role, path")
    with psycopg.connect(dsn, autocommit=True) as conn:
        pristine = [conn.execute(s).fetchall() for s in select]
        body = conn.execute("SELECT body FROM ll_records WHERE seq = 0").fetchone()[0]
        for seq, char, height in ((1, "a", 0), (40, "b", 5), (-3, "c", 0)):
            conn.execute("INSERT INTO ll_records (seq, id, height, pos, run_id, body) VALUES (%s, %s, %s, 1, 'x', %s)",
                         (seq, char * 64, height, body))
        conn.execute("INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES ('/planted', 1, 1, 'ab', '')")
        conn.execute("INSERT INTO ll_blocks (height, id, first_seq, count, header)"
                     " SELECT -1, %s, -3, 1, header FROM ll_blocks WHERE height = 0", ("d" * 64,))
    assert run_cli("--ledger", postgres_url, cwd=tmp_path, program="verify-lineage", env=env).returncode == 1
    repaired = run_cli("repair-index", "--ledger", postgres_url, cwd=tmp_path, env=env)
    assert repaired.returncode == 0, repaired
    assert "removed 3 record rows that no verified block places" in repaired.stderr, repaired
    assert "1 block rows below height 0" in repaired.stderr, repaired
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert [conn.execute(s).fetchall() for s in select] == pristine
        assert conn.execute("SELECT min(height) FROM ll_blocks").fetchone()[0] == 0
    run_cli("--ledger", postgres_url, cwd=tmp_path, program="verify-lineage", env=env, check_rc=0)
    # Then the only record moved to sequence number 5, its block row pointing there: refused,
    # and nothing changed (deleting rows past the chain would delete that record).
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("ll_records", "ll_artifacts"):
            conn.execute(f"UPDATE {table} SET seq = 5 WHERE seq = 0")  # noqa: S608
        conn.execute("UPDATE ll_blocks SET first_seq = 5 WHERE height = 0")
        moved = [conn.execute(s).fetchall() for s in select]
    refused = run_cli("repair-index", "--ledger", postgres_url, cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "block 0" in refused.stderr and "from a backup" in refused.stderr, refused
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert [conn.execute(s).fetchall() for s in select] == moved


def _plant_records(db):
    """Record rows no block places: past the chain's 2 records (in block 1 and in no block
    at all), before its first, an artifact row naming one of them, and a block row below
    height 0 placing the one before the first."""
    with sqlite3.connect(db) as conn:
        body = conn.execute("SELECT body FROM ll_records WHERE seq = 1").fetchone()[0]
        conn.executemany("INSERT INTO ll_records (seq, id, height, pos, run_id, body) VALUES (?, ?, ?, ?, ?, ?)",
                         [(2, "a" * 64, 1, 1, "run-a", body), (50, "b" * 64, 7, 0, "run-a", body),
                          (-1, "c" * 64, 0, 1, "run-a", body)])
        conn.execute("INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES ('/planted', 1, 2, 'ab', '')")
        header = conn.execute("SELECT header FROM ll_blocks WHERE height = 0").fetchone()[0]
        conn.execute("INSERT INTO ll_blocks (height, id, first_seq, count, header) VALUES (-1, ?, -1, 1, ?)",
                     ("d" * 64, header))


def test_record_rows_no_block_places_are_removed_and_counted(ledger):
    tmp_path, url, env = ledger
    db = tmp_path / "ledger.db"
    pristine = _rows(db)
    _plant_records(db)
    assert run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=env).returncode == 1
    repaired = run_cli("repair-index", "--ledger", url, cwd=tmp_path, env=env)
    assert repaired.returncode == 0, repaired
    assert "rebuilt the index of 2 records (4 artifact rows)" in repaired.stderr, repaired
    assert "removed 3 record rows that no verified block places" in repaired.stderr, repaired
    assert "1 block rows below height 0" in repaired.stderr, repaired
    assert _rows(db) == pristine
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT min(height) FROM ll_blocks").fetchone()[0] == 0
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=env, check_rc=0)
    again = run_cli("repair-index", "--ledger", url, cwd=tmp_path, env=env, check_rc=0)
    assert "removed 0 record rows" in again.stderr, again


def test_records_stored_out_of_place_are_refused_and_never_deleted(ledger):
    """Block 1's record moved to sequence number 9 with the block row pointing there: the
    chain still verifies (the block reads its record where its row says), but the record is
    not where the chain places it. Deleting rows past the chain would delete that record;
    the repair refuses instead and changes nothing."""
    tmp_path, url, env = ledger
    db = tmp_path / "ledger.db"
    _edit(db, "UPDATE ll_records SET seq = 9 WHERE seq = 1")
    _edit(db, "UPDATE ll_artifacts SET seq = 9 WHERE seq = 1")
    _edit(db, "UPDATE ll_blocks SET first_seq = 9 WHERE height = 1")
    before = _rows(db)
    refused = run_cli("repair-index", "--ledger", url, cwd=tmp_path, env=env)
    assert refused.returncode == 1, refused
    assert "block 1" in refused.stderr and "restore the ledger from a backup" in refused.stderr, refused
    assert "Traceback" not in refused.stderr
    assert _rows(db) == before


def test_the_sqlalchemy_back_end_on_sqlite_repairs_the_same_rows(ledger):
    """SQLBackend (what SQLite URLs with a query string or another driver open) shares the
    rebuild with SQLiteBackend through SQLAlchemy's driver calls: the same rows come out."""
    from lineage_ledger._log.reindex import verified_index
    from lineage_ledger.backends.sql import SQLBackend

    tmp_path, url, env = ledger
    db = tmp_path / "ledger.db"
    pristine = _rows(db)
    _plant_records(db)
    _edit(db, "DELETE FROM ll_artifacts WHERE seq = 0")
    _edit(db, "UPDATE ll_records SET height = 5 WHERE seq = 1")
    with SQLBackend(url) as backend:
        done = backend.rebuild_index(lambda stop: verified_index(backend, stop))
    assert (done.records, done.artifacts, done.records_corrected, done.records_removed) == (2, 4, 1, 3)
    # Block 0's two rows written again (none left to delete), block 1's untouched; the row
    # planted at sequence number 2 is past the chain.
    assert (done.artifacts_deleted, done.artifacts_written, done.artifacts_removed) == (0, 2, 1)
    assert _rows(db) == pristine
