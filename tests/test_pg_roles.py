"""PostgreSQL roles with fewer rights than the owner's, as a lab deploys them: a reader (SELECT
only) for the people and checks that only verify, and an appender (SELECT and INSERT, no
UPDATE or DELETE) for the workflows, so that a workflow's account cannot rewrite history.

The reader's read commands work and verify; its writes fail saying so, and the record waits
in the spool until the role may write (tests/test_review_left_s38.py checks ``run``'s exit
status alone). The appender records and verifies; ``repair-index``, which rewrites index
rows, is refused with exit status 2, and the ledger is as it was.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

psycopg = pytest.importorskip("psycopg", reason="a postgresql:// ledger needs lineage-ledger[postgres]")

pytestmark = pytest.mark.postgres


def as_role(url: str, grants: str) -> str:
    """``url`` for a new role of this database granted ``grants`` on the ledger's tables."""
    database = url.rsplit("/", 1)[1]
    role = f"r_{database[2:]}_{grants.split(',')[-1].strip().lower()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(f"GRANT {grants} ON ALL TABLES IN SCHEMA public TO {role}")
    return url.replace("postgresql://ledger@", f"postgresql://{role}@", 1)


def record(url: str, cwd, name: str) -> object:
    """``run`` writing ``name`` into the ledger at ``url``. It waits 2 s by default (--ship-wait) for
    the ledger to take the record, then leaves it in the spool and exits 0: on a loaded machine
    the owner's first record (it makes the tables the roles are granted rights on) could still
    be on its way. The wait is generous, below run_cli's 120 s so that a failure shows `run`'s
    own message; a refusal for good (the reader role) ends it at once."""
    return run_cli("run", "--ledger", url, "--ship-wait", "90", "-i", "in.txt", "-o", name, "--", "sh", "-c", f"cat in.txt > {name}",
                   cwd=cwd)


def assert_landed(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "did not take it within" not in result.stderr, result.stderr


def waiting(cwd) -> list[int]:
    return [e["records"] for e in json.loads(run_cli("spool", "status", "--json", cwd=cwd, check_rc=0).stdout)]


def table_rows(url: str) -> dict[str, list]:
    with psycopg.connect(url) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("ll_blocks", "ll_records", "ll_artifacts", "ll_meta")}


def test_a_reader_role_reads_and_verifies_and_its_writes_wait_in_the_spool(postgres_url, tmp_path):
    (tmp_path / "in.txt").write_text("in\n")
    assert_landed(record(postgres_url, tmp_path, "a.txt"))  # the owner makes the ledger
    reader = as_role(postgres_url, "SELECT")
    verified = run_cli("--ledger", reader, "a.txt", cwd=tmp_path, program="verify-lineage")
    assert verified.returncode == 0 and "verified" in verified.stdout, (verified.stdout, verified.stderr)
    for command in (("verify",), ("log",), ("why", "a.txt"), ("depends", "in.txt")):
        result = run_cli(*command, "--ledger", reader, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    written = record(reader, tmp_path, "b.txt")
    assert written.returncode == 1, written.stderr
    assert "append failed: permission denied for table ll_blocks" in written.stderr, written.stderr
    assert "permission denied, and waiting will not change that" in written.stderr, written.stderr
    assert waiting(tmp_path) == [1]
    before = table_rows(postgres_url)
    repaired = run_cli("repair-index", "--ledger", reader, cwd=tmp_path)
    assert repaired.returncode == 2 and "permission denied" in repaired.stderr, repaired.stderr
    assert table_rows(postgres_url) == before
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the administrator lets it write
        conn.execute(f"GRANT INSERT ON ALL TABLES IN SCHEMA public TO {reader.split('//')[1].split('@')[0]}")
    shipped = run_cli("spool", "ship", "--ledger", reader, cwd=tmp_path)
    assert shipped.returncode == 0 and "shipped 1 record(s)" in shipped.stderr, shipped.stderr
    verified = run_cli("--ledger", reader, "b.txt", cwd=tmp_path, program="verify-lineage")
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


def test_an_append_only_role_records_and_verifies_but_may_not_rewrite_the_index(postgres_url, tmp_path):
    (tmp_path / "in.txt").write_text("in\n")
    assert_landed(record(postgres_url, tmp_path, "a.txt"))
    appender = as_role(postgres_url, "SELECT, INSERT")
    for name in ("b.txt", "c.txt"):
        assert_landed(record(appender, tmp_path, name))
    assert waiting(tmp_path) == []
    verified = run_cli("--ledger", appender, "a.txt", "b.txt", "c.txt", cwd=tmp_path, program="verify-lineage")
    assert verified.returncode == 0, (verified.stdout, verified.stderr)
    before = table_rows(postgres_url)
    repaired = run_cli("repair-index", "--ledger", appender, cwd=tmp_path)
    assert repaired.returncode == 2, (repaired.stdout, repaired.stderr)
    assert repaired.stderr.startswith(f"error: {appender}: rebuilding the index failed: permission denied for table "), \
        repaired.stderr
    assert table_rows(postgres_url) == before
    migrated = run_cli("migrate", "--ledger", appender, cwd=tmp_path)
    assert migrated.returncode == 0 and table_rows(postgres_url) == before, migrated.stderr
