"""A Snakemake run (the real ``snakemake``) whose PostgreSQL ledger stops answering (its
server SIGSTOPped) before the run starts: the run ends after the plugin's short wait for
shipping, not after the driver's ``connect_timeout``, and its records ship once the server
continues (``lineage-ledger spool ship``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.postgres import PostgresServer, find_server_binaries
from tests.support.snakemake import require_snakemake, run

pytest.importorskip("psycopg", reason="a postgresql:// ledger needs lineage-ledger[postgres]")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: The driver would wait this long for a server that took the connection and says nothing;
#: the run must not (its end waits SHIP_WAIT, 5 s, for shipping). Far apart, for a busy machine.
CONNECT_TIMEOUT = 90
BOUND_S = 60

TWO_JOBS = ('rule b:\n    input: "a.txt"\n    output: "b.txt"\n    shell: "echo b > {output}"\n'
            'rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n')


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A server of this module's own: stopping the session's would stop every other test."""
    bindir = find_server_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary (initdb) on this machine")
    server = PostgresServer(bindir).start()
    yield server
    _signal(server, signal.SIGCONT)  # never leave it stopped: cleanup would wait on it
    server.cleanup()


def _signal(server: PostgresServer, signum: int) -> None:
    postmaster = int(Path(server.data, "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True,
                              check=True).stdout.split()
    for pid in [postmaster, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


@contextlib.contextmanager
def stopped(server: PostgresServer) -> Iterator[None]:
    _signal(server, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal(server, signal.SIGCONT)


def test_a_snakemake_run_ends_soon_when_its_postgresql_server_stops_answering(server, tmp_path):
    require_snakemake()
    url = f"{server.create_database()}?connect_timeout={CONNECT_TIMEOUT}"
    run_cli("run", "--ledger", url, "--", "true", cwd=tmp_path, check_rc=0)  # the ledger exists
    (tmp_path / "Snakefile").write_text(TWO_JOBS)
    with stopped(server):
        began = time.monotonic()
        result = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-url", url,
                     "--logger-ledger-policy", "off", "b.txt", cwd=tmp_path, timeout=CONNECT_TIMEOUT + 120)
        elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < BOUND_S, f"{elapsed:.0f}s: {result.stderr[-3000:]}"
    assert "wait in the spool" in result.stderr, result.stderr[-3000:]
    waiting, = json.loads(run_cli("spool", "status", "--json", cwd=tmp_path, check_rc=0).stdout)
    assert waiting["records"] == 2
    shipped = run_cli("spool", "ship", "--ledger", url, cwd=tmp_path)
    assert shipped.returncode == 0 and "shipped 2 record(s)" in shipped.stderr, shipped.stderr
