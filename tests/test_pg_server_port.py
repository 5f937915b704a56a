"""The tests' own PostgreSQL servers on a busy machine: a port picked, then taken.

``PostgresServer`` picks a free port by binding port 0 and closing the socket, and the
server binds it a moment later. On a machine where several test runs start servers at
once (the helpers, the CI, each with servers of their own) another process can take the
port in between. The server then failed to start ("could not bind"), and the test erred;
or, where the other process was another PostgreSQL server whose role 'ledger' is trusted
too, the start waited for the first server that answered on the port, took it for its
own, and every test of the fixture ran against the other run's server (its stop, crash and
restart tests stopped nothing of theirs). The two outcomes are made here as the race
leaves them: the port the server is to use is held by another listener before it starts.
"""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.support.postgres import PostgresServer, find_server_binaries

pytestmark = pytest.mark.postgres


@pytest.fixture
def bindir():
    found = find_server_binaries()
    if found is None:
        pytest.skip("no PostgreSQL server binary (initdb) on this machine")
    return found


def data_directory(server: PostgresServer) -> str:
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        return conn.execute("SHOW data_directory").fetchone()[0]


def test_a_port_taken_by_another_listener_before_the_server_binds_it(bindir):
    server = PostgresServer(bindir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", server.port))
        taken.listen()
        try:
            server.start()
            assert server.port != taken.getsockname()[1]
            assert data_directory(server) == server.data
        finally:
            server.cleanup()


def test_a_port_taken_by_another_runs_server_is_not_taken_for_this_one(bindir, postgres_server):
    server = PostgresServer(bindir)
    server.port = postgres_server.port  # the other run's server got there first
    try:
        server.start()
        assert data_directory(server) == server.data
    finally:
        server.cleanup()
    assert data_directory(postgres_server) == postgres_server.data  # the other server untouched
