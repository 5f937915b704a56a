"""lineage-ledger as deployed on PostgreSQL, with the server lost in the middle of the work.

A real server of this module's own (tests/support/postgres.py) is SIGKILLed (the postmaster
alone, as the OOM killer does) or shut down fast (what a package upgrade or reboot does)
while a real ``snakemake --logger ledger`` run has jobs finishing, then started again on the
same data and port. Nothing may be lost: the records of the jobs that finished while it was
down wait in the durable spool and ship later, the workflow is not disturbed, the log says
so in plain lines, and ``verify-lineage`` then passes with every job's record in the ledger.

And a ``verify-lineage`` whose server goes away in the middle of its reads must say so as
a back-end error (exit 2), never "verified" and never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.postgres import PostgresServer, crash, own_server, restart
from tests.support.snakemake import BIN, clean_env, require_snakemake

pytest.importorskip("psycopg", reason="a postgresql:// ledger needs lineage-ledger[postgres]")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: Generous: only a hung run or a flag never seen reaches these (a busy CI machine).
WAIT_S = 180

# A chain of five jobs; b and d each hold until the test lets them end (a flag file).
CHAIN = """
def held(flag):
    return f"for i in $(seq 1 TENTHS); do [ -e {flag} ] && break; sleep 0.1; done; [ -e {flag} ]"

rule e:
    input: "d.txt"
    output: "e.txt"
    shell: "cat {input} > {output} && echo e >> {output}"
rule d:
    input: "c.txt"
    output: "d.txt"
    shell: held("d-may-end") + " && cat {input} > {output} && echo d >> {output}"
rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "cat {input} > {output} && echo c >> {output}"
rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "echo b > {output} && " + held("b-may-end")
rule a:
    output: "a.txt"
    shell: "echo a > {output}"
""".replace("TENTHS", str(WAIT_S * 10))
RULES = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A server of this module's own: taking the session's down would fail other tests."""
    with own_server() as server:
        yield server


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert process.poll() is None, f"snakemake ended before {path.name}: {process.communicate()}"
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path.name} after {WAIT_S}s: {process.communicate()[1][-4000:]}")
        time.sleep(0.1)


def wait_until_blocked(server: PostgresServer, url: str, process: subprocess.Popen) -> None:
    """Until a session of ``url``'s database waits on a lock (the test's), or fail."""
    import psycopg

    database = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + WAIT_S
    while True:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                            (database,)).fetchone()[0]:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"nothing waited on the lock: {process.communicate()}")
        time.sleep(0.1)


def ledger_records(url: str, cwd: Path, run_id: str) -> list[dict]:
    listed = run_cli("log", "--ledger", url, "--run", run_id, "--json", cwd=cwd)
    if listed.returncode != 0:  # exit 2: no record of the run shipped yet
        return []
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]


def landed(*args: str, cwd: Path) -> None:
    """``lineage-ledger run ARGS``, its record in the ledger before the test goes on. ``run`` waits
    2 s by default (--ship-wait), then leaves the record in the spool and exits 0: on a loaded
    machine a setup record could still be on its way when the test counts what waits in the
    spool or locks the ledger's tables. The wait is generous, below run_cli's 120 s so that a
    failure shows `run`'s own message."""
    result = run_cli("run", "--ship-wait", "90", *args, cwd=cwd, check_rc=0)
    assert "did not take it within" not in result.stderr, result.stderr


def spooled(cwd: Path) -> int:
    status = json.loads(run_cli("spool", "status", "--json", cwd=cwd, check_rc=0).stdout)
    return sum(entry["records"] for entry in status)


@pytest.mark.parametrize(("how", "back"), [("kill", "during"), ("fast", "after")])
def test_a_snakemake_run_loses_no_record_when_its_server_goes_down_mid_write(server, tmp_path, how, back):
    """The recording process is caught inside its transaction that appends b's record (its
    insert into the artifacts table waits on a lock the test holds, seen in pg_stat_activity)
    when the server goes down; c finishes with it down. ``back``: the server is started
    again while d still runs, or only once the run has ended."""
    import psycopg

    require_snakemake()
    url = server.create_database()
    landed("--ledger", url, "--", "true", cwd=tmp_path)  # the ledger exists
    (tmp_path / "Snakefile").write_text(CHAIN)
    process = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1", "--logger", "ledger", "--logger-ledger-url", url,
         "--logger-ledger-run-id", "crashed", "e.txt"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = None
    try:
        wait_for(tmp_path / "b.txt", process)  # a finished; b is running
        deadline = time.monotonic() + WAIT_S
        while not ledger_records(url, tmp_path, "crashed"):  # a's record is in: sessions are open
            assert time.monotonic() < deadline and process.poll() is None, "a's record never shipped"
            time.sleep(0.5)
        holder = psycopg.connect(url)
        holder.execute("LOCK TABLE ll_artifacts IN ACCESS EXCLUSIVE MODE")
        (tmp_path / "b-may-end").touch()
        wait_until_blocked(server, url, process)  # b's record half written
        crash(server, how=how)
        wait_for(tmp_path / "c.txt", process)  # c finishes with the server down
        time.sleep(3)  # and its record is tried against the server that is not there
        if back == "during":
            restart(server)
        (tmp_path / "d-may-end").touch()
        _, stderr = process.communicate(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if holder is not None:
            holder.close()
        if server.process is None:
            restart(server)
    assert process.returncode == 0, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    assert (tmp_path / "e.txt").read_text() == "b\nc\nd\ne\n"

    # Every job's record is in the ledger or waits in the spool; the log said which.
    shipped = {rec["task_name"] for rec in ledger_records(url, tmp_path, "crashed")}
    waiting = spooled(tmp_path)
    assert "a" in shipped and len(shipped) + waiting == len(RULES), (shipped, waiting, stderr[-4000:])
    assert "cannot ship" in stderr, stderr[-4000:]  # the loss of the server was said
    if waiting:
        assert "wait in the spool" in stderr and "lineage-ledger spool ship" in stderr, stderr[-4000:]
    ship = run_cli("spool", "ship", "--ledger", url, cwd=tmp_path, check_rc=0)
    assert spooled(tmp_path) == 0, ship.stderr
    recs = ledger_records(url, tmp_path, "crashed")
    assert sorted(rec["task_name"] for rec in recs) == RULES, recs  # each once: b's half write is gone
    assert all(rec["status"] == "succeeded" for rec in recs)

    verify = run_cli("--ledger", url, "e.txt", program="verify-lineage", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    audit = run_cli("--ledger", url, program="verify-lineage", cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr



#: The full audit through its worker processes (core/_log/audit_parallel.py), small as it is.
WORKERS = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "1", "LINEAGE_AUDIT_WORKERS": "2"}


@pytest.mark.parametrize(("how", "target", "env"), [("kill-all", None, {}), ("fast", "out/2.txt", {}),
                                                    ("fast", None, WORKERS)], ids=["audit", "target", "workers"])
def test_verify_lineage_whose_server_goes_away_mid_read_says_so(server, tmp_path, how, target, env):
    """The full audit (no target), a targeted verify, or the full audit through its worker
    processes, caught in the middle of its reads: its read of the records table (the workers'
    of the artifacts table) waits on a lock the test holds (seen in pg_stat_activity), the
    server is taken down under it. Then the same verify, with the server back, passes: the
    interrupted one remembered nothing wrong."""
    import psycopg

    url = server.create_database()
    (tmp_path / "out").mkdir()
    for number in range(3):
        landed("--ledger", url, "-n", f"step{number}", "-o", f"out/{number}.txt", "--",
               "sh", "-c", f"echo {number} > out/{number}.txt", cwd=tmp_path)
    args = ["--ledger", url, *([target] if target else [])]
    holder = psycopg.connect(url)
    holder.execute(f"LOCK TABLE {'ll_artifacts' if env else 'll_records'} IN ACCESS EXCLUSIVE MODE")
    verify = subprocess.Popen([str(BIN / "verify-lineage"), *args], cwd=tmp_path, env=clean_env(**env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_blocked(server, url, verify)
        if env:  # the workers are there, and one of them (or the parent) waits
            children = subprocess.run(["ps", "-ww", "-o", "args=", "--ppid", str(verify.pid)], capture_output=True,
                                      text=True).stdout
            assert "audit_parallel" in children, children
        crash(server, how=how)
        stdout, stderr = verify.communicate(timeout=WAIT_S)
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.communicate()
        holder.close()
        if server.process is None:
            restart(server)
    assert verify.returncode == 2, (verify.returncode, stdout, stderr)
    assert "Traceback" not in stderr and "verified" not in (stdout + stderr).lower(), (stdout, stderr)
    assert url.split("@")[1] in stderr, stderr  # which ledger, without a password there is none to hide
    again = run_cli(*args, program="verify-lineage", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
