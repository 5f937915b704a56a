"""A Snakemake run (the real ``snakemake``) whose PostgreSQL ledger stops answering (its
server SIGSTOPped) before the run starts: the run ends after the plugin's short wait for
shipping, not after the driver's ``connect_timeout``, and its records ship once the server
continues (``lineage-ledger spool ship``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import run_cli
from tests.support.postgres import PostgresServer, own_server, stopped
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
    with own_server() as server:
        yield server


def test_a_snakemake_run_ends_soon_when_its_postgresql_server_stops_answering(server, tmp_path):
    require_snakemake()
    url = f"{server.create_database()}?connect_timeout={CONNECT_TIMEOUT}"
    # `run` waits 2 s by default (--ship-wait) for the ledger to take the record, then leaves it
    # in the spool and exits 0: on a loaded machine it could still be on its way when the server is
    # stopped (then three records waited, not two).
    # The wait is generous, below run_cli's 120 s so that a failure shows `run`'s own message.
    made = run_cli("run", "--ledger", url, "--ship-wait", "90", "--", "true", cwd=tmp_path,
                   check_rc=0)  # the ledger exists
    assert "did not take it within" not in made.stderr, made.stderr
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
