"""A PostgreSQL ledger kept open for reading outlives the server's end of its idle sessions.

``open_ledger(url, read_only=True)`` (the reader, psycopg alone) keeps a few sessions idle
for the next read. A program that keeps it open (a notebook, a service that answers lineage
questions, a workflow's long-lived process) sees the server end those sessions while they
wait: the server restarted for maintenance, an administrator's ``idle_session_timeout``,
``pg_terminate_backend``. The writer's pool checks a connection before lending it
(SQLAlchemy's pre-ping); the reader lent the dead session, and the next read failed with
"terminating connection due to administrator command" (or "server closed the connection
unexpectedly"), exit status 2 in a command, though the server was up again.

Against real servers: the session's (its sessions ended by ``pg_terminate_backend`` and by
``idle_session_timeout``) and one of this module's own, restarted.
"""

from __future__ import annotations

import time

import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.postgres import own_server

psycopg = pytest.importorskip("psycopg", reason="a postgresql:// ledger needs lineage-ledger[postgres]")

pytestmark = pytest.mark.postgres


def recorded_output(url: str, directory) -> str:
    """A ledger at ``url`` with one task that wrote ``out.txt``; that output's path."""
    (directory / "in.txt").write_text("in\n")
    # `run` waits 2 s (--ship-wait) for the ledger to take the record, then leaves it in the
    # spool and exits 0: on a loaded machine the first record, which makes the ledger's tables
    # in the new database, took longer, and the tests' reader found no ledger. The wait is
    # generous; a record left in the spool all the same is said here, with what `run` said.
    result = run_cli("run", "--ledger", url, "--ship-wait", "120", "-i", "in.txt", "-o", "out.txt", "--",
                     "sh", "-c", "cat in.txt > out.txt", cwd=directory, check_rc=0)
    assert "did not take it within" not in result.stderr, result.stderr
    return str(directory / "out.txt")


def the_readers_sessions(admin_url: str, database: str) -> list[int]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return [pid for pid, in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,))]


def end_sessions(admin_url: str, database: str) -> int:
    """Every session on ``database`` but this one ended, as an administrator ends them; how many."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        ended = conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()[0]
    deadline = time.monotonic() + 60
    while the_readers_sessions(admin_url, database):  # gone from the server's view too
        assert time.monotonic() < deadline, "the ended sessions did not go"
        time.sleep(0.05)
    return ended


def reads(ledger, output: str) -> str:
    """One read a lineage question makes: the producer of ``output``."""
    producer = ledger.producer(path=output)
    assert producer is not None
    return producer.record.id


def test_a_read_after_the_administrator_ended_the_sessions_works(postgres_server, tmp_path):
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    output = recorded_output(url, tmp_path)
    with open_ledger(url, read_only=True) as ledger:
        first = reads(ledger, output)
        assert end_sessions(url, database) >= 1  # the reader's idle session among them
        assert reads(ledger, output) == first
        assert reads(ledger, output) == first


def test_a_read_after_the_idle_session_timeout_works(postgres_server, tmp_path):
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    output = recorded_output(url, tmp_path)
    # Set after the record is written, for the sessions opened from now on (the reader's): a
    # writer idle for a second between statements on a loaded machine had its session ended
    # too, and its record waited in the spool, so that the reader found none.
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.info.server_version < 140000:
            pytest.skip("idle_session_timeout is PostgreSQL 14's")
        conn.execute(f'ALTER DATABASE "{database}" SET idle_session_timeout = 1000')  # ms
    with open_ledger(url, read_only=True) as ledger:
        first = reads(ledger, output)
        deadline = time.monotonic() + 60
        while the_readers_sessions(url, database):  # ended by the server after a second idle
            assert time.monotonic() < deadline, "idle_session_timeout did not end the session"
            time.sleep(0.2)
        assert reads(ledger, output) == first


def test_a_read_after_the_server_restarted_works(tmp_path):
    with own_server() as server:
        url = server.create_database()
        output = recorded_output(url, tmp_path)
        with open_ledger(url, read_only=True) as ledger:
            first = reads(ledger, output)
            server.stop()  # a fast shutdown: the sessions are told and closed
            server.start()
            assert reads(ledger, output) == first


def test_every_idle_session_ended_is_replaced(postgres_server, tmp_path):
    """Threads left several sessions idle; a read after they were all ended works the first
    time (each dead one is dropped, not lent to the next reads in turn)."""
    url = postgres_server.create_database()
    database = url.rsplit("/", 1)[1]
    output = recorded_output(url, tmp_path)
    with open_ledger(url, read_only=True) as ledger:
        first = reads(ledger, output)
        backend = ledger.backend
        held = [backend._borrow() for _ in range(3)]  # three reads at once, as threads make them
        for conn in held:
            backend._give_back(conn)
        assert end_sessions(url, database) >= 3
        for _ in range(4):
            assert reads(ledger, output) == first
