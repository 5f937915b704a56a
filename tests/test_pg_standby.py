"""A PostgreSQL hot standby (a server in recovery, as during a failover) only delays records:
they wait in the spool and ship once it is promoted.

Found at stop 38: a standby answers an append with SQLSTATE 25006, "cannot execute INSERT in a
read-only transaction", the same as a database an administrator set read-only
(``default_transaction_read_only``), and both were taken as a refusal for good:
``lineage-ledger run`` exited 1 ("waiting will not change that"), ``spool ship`` 1, and a
recorder (what the engine plugins ship through) gave up at once when it closed. A standby
is told apart by ``pg_is_in_recovery()``; the administrator's read-only database stays a
refusal for good (tests/test_review_left_s38.py).

A real primary, a real standby made with ``pg_basebackup -R`` (streaming replication) on a
port of its own, and ``pg_ctl promote``. About 15 s at a load of 2.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.conftest import run_cli
from tests.support.postgres import PostgresServer, find_server_binaries

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


#: For a `run` whose record must be in the ledger before the test goes on (the ledger made on
#: the primary before its standby is copied): `run` waits 2 s by default for the ledger to
#: take it, then leaves it in the spool and exits 0, as it did on a loaded machine (the first
#: record makes the ledger's tables), and the standby had no ledger, or one record too few.
LANDED = ("--ship-wait", "120")


@pytest.fixture
def primary_and_standby():
    bindir = find_server_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary (initdb) on this machine")
    primary = PostgresServer(bindir).start()
    try:
        url = primary.create_database()
        database = url.rsplit("/", 1)[1]
        yield primary, url, lambda: standby_of(primary), database
    finally:
        for server in (*_made, primary):
            server.cleanup()
        _made.clear()


_made: list[PostgresServer] = []


def standby_of(primary: PostgresServer) -> PostgresServer:
    standby = primary.standby()
    _made.append(standby)
    assert standby.in_recovery()
    return standby


def _waiting(workdir) -> int:
    result = run_cli("spool", "status", "--json", cwd=workdir, check_rc=0)
    return sum(entry["records"] for entry in json.loads(result.stdout))


def _records(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM ll_records").fetchone()[0]


def test_run_against_a_standby_waits_and_ships_after_promotion(workdir, primary_and_standby):
    primary, url, make_standby, database = primary_and_standby
    run_cli("run", "--ledger", url, *LANDED, "--", "true", cwd=workdir, check_rc=0)  # the ledger, on the primary
    empty = primary.create_database().rsplit("/", 1)[1]  # a database with no ledger in it yet
    standby = make_standby()
    at_standby = standby.dsn(database)
    assert _records(at_standby) == 1  # replicated
    # A ledger not made yet: its tables cannot be created on a standby either; that waits too.
    new = run_cli("run", "--ledger", standby.dsn(empty), "--", "true", cwd=workdir)
    assert new.returncode == 0 and "waits" in new.stderr and "standby" in new.stderr, new.stderr

    result = run_cli("run", "--ledger", at_standby, "--", "true", cwd=workdir)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert "waits" in result.stderr and "waiting will not" not in result.stderr, result.stderr
    assert "standby" in result.stderr or "recovery" in result.stderr, result.stderr  # says why
    shipped = run_cli("spool", "ship", "--ledger", at_standby, "--timeout", "1", cwd=workdir)
    assert shipped.returncode == 2 and "1 record(s) wait" in shipped.stderr, shipped.stderr  # try again later
    assert _waiting(workdir) == 2  # one for each ledger

    primary.stop()  # the failover: the primary is gone, the standby takes over
    standby.promote()
    run_cli("spool", "ship", "--ledger", at_standby, cwd=workdir, check_rc=0)
    run_cli("spool", "ship", "--ledger", standby.dsn(empty), cwd=workdir, check_rc=0)
    assert _waiting(workdir) == 0 and _records(at_standby) == 2 and _records(standby.dsn(empty)) == 1
    verified = run_cli("--ledger", at_standby, cwd=workdir, program="verify-lineage")
    assert verified.returncode == 0 and "verified" in verified.stdout, (verified.stdout, verified.stderr)


RECORDER = textwrap.dedent("""
    import logging, sys, time
    from lineage_ledger import Recorder, spool_first
    from tests.support.factories import make_record

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    recorder = Recorder(spool_first(sys.argv[1], spool=sys.argv[2]), exit_timeout=120.0, max_age=0.05)
    recorder.record(make_record(7))
    done = recorder.close()
    print(f"closed done={done}", flush=True)
""")


def test_a_recorder_keeps_waiting_on_a_standby_until_it_is_promoted(tmp_path, primary_and_standby):
    primary, url, make_standby, database = primary_and_standby
    run_cli("run", "--ledger", url, *LANDED, "--", "true", cwd=tmp_path, check_rc=0)
    standby = make_standby()
    at_standby = standby.dsn(database)
    child = subprocess.Popen(
        [sys.executable, "-c", RECORDER, at_standby, str(tmp_path / "spool")], cwd=os.getcwd(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    seen = []
    try:
        while True:  # until the recorder has tried the standby once, and been refused
            line = lines.get(timeout=60)
            seen.append(line)
            if "cannot ship" in line or "closed" in line:
                break
        assert "closed" not in line, seen  # it gave up instead of waiting
        primary.stop()
        standby.promote()
        assert child.wait(timeout=120) == 0, seen
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # The child has ended: its output ends, and with it the reader (not a wait of 5 s for silence).
    reader.join(timeout=60)
    while not lines.empty():
        seen.append(lines.get_nowait())
    assert any("closed done=True" in line for line in seen), seen
    assert not any("for good" in line for line in seen), seen
    assert _records(at_standby) == 2


def test_a_parsl_run_against_a_standby_leaves_its_records_waiting_not_refused(workdir, cli, primary_and_standby):
    """An engine's run end to end (the Parsl example pipeline, in a process of its own): its
    records wait in the spool, said once as for a server that is down, not as a refusal for
    good; after the failover they ship and verify."""
    pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")
    from tests.test_parsl_backend_down import TRIES, assert_prompt_and_told, control_run_s, run_parsl, spooled

    primary, url, make_standby, database = primary_and_standby
    # The same program against a live ledger (a database of its own on the primary), timed
    # for the bound on the run against the standby (134 s at load 20: a fixed 30 s failed).
    control_s = control_run_s(workdir, primary.create_database())
    run_cli("run", "--ledger", url, *LANDED, "--", "true", cwd=workdir, check_rc=0)
    standby = make_standby()
    at_standby = standby.dsn(database)
    report, stderr, elapsed = run_parsl(workdir, at_standby)
    assert "for good" not in stderr, stderr[-3000:]
    assert_prompt_and_told(report, stderr, elapsed, control_s)
    assert list(spooled(cli, workdir / "spool").values()) == [TRIES]

    primary.stop()
    standby.promote()
    cli("spool", "ship", "--ledger", at_standby, "--spool", workdir / "spool", check_rc=0)
    assert spooled(cli, workdir / "spool") == {} and _records(at_standby) == 1 + TRIES
    verified = run_cli("--ledger", at_standby, cwd=workdir, program="verify-lineage")
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


def test_a_database_an_administrator_set_read_only_is_still_refused_for_good_and_named_so(workdir, postgres_url):
    """The other side of the split (tests/test_review_left_s38.py checks the exit status):
    default_transaction_read_only is a refusal for good, named as the database's, not as
    an SQLite file's ("this user may not write its file or directory")."""
    import psycopg

    run_cli("run", "--ledger", postgres_url, *LANDED, "--", "true", cwd=workdir, check_rc=0)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{postgres_url.rsplit("/", 1)[1]}" SET default_transaction_read_only = on')
    result = run_cli("run", "--ledger", postgres_url, "--", "true", cwd=workdir)
    assert result.returncode == 1 and "waiting will not" in result.stderr, result.stderr
    assert "the database is read-only" in result.stderr and "file or directory" not in result.stderr, result.stderr
