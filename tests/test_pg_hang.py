"""A PostgreSQL server that took the connection and then stops answering (its processes
SIGSTOPped while a statement runs): readers give up with exit status 2 and a message that
names the server and the limit, recorders keep every record in the spool, and everything
recovers after SIGCONT.

To catch the client in the middle of a statement every time, another session holds a lock
on the table the statement reads, the test waits until the statement waits for that lock,
and only then stops the server. A live server holding the lock is a statement that is
merely slow: that one must not be cut short.

Each test runs its own server (stopping the session's would stop every other test) and
bounds every wait: before the fix, each command here waited for ever (killed at HANG_BOUND).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineage_ledger import BackendUnavailable, ConfigError
from lineage_ledger.backends import open_backend
from tests.backend_conformance import chain_of
from tests.conftest import run_cli
from tests.support.factories import make_records
from tests.support.postgres import PostgresServer, own_server, stopped

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# connect_timeout 2 s (libpq's least) and a probe after 2 s of waiting: a stopped server is
# found within about 4 s. HANG_BOUND is what "bounded" means here, generous for a busy machine.
QUICK = "connect_timeout=2&ll_hang_timeout=2"
HANG_BOUND = 45


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with own_server() as server:
        yield server


@contextlib.contextmanager
def locked(url: str, table: str) -> Iterator[None]:
    """``table`` locked against every reader by another session, until the block ends."""
    import psycopg

    with psycopg.connect(url) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            holder.rollback()


def wait_for_lock_waiter(url: str, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until a session of this database waits for a lock (the command is mid-statement)."""
    import psycopg

    database = url.rsplit("/", 1)[1].split("?")[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as watch:
        while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                                (database,)).fetchone()[0]:
            if process is not None and process.poll() is not None:
                pytest.fail(f"the command ended before it waited for the lock: {process.communicate()}")
            assert time.monotonic() < deadline, "the command never waited for the lock"
            time.sleep(0.05)


def start_cli(*args: str, cwd: Path, program: str = "lineage-ledger") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    return subprocess.Popen([str(Path(sys.executable).parent / program), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, bound: float = HANG_BOUND) -> tuple[int, str, str, float]:
    """(status, stdout, stderr, seconds it took); a process still running at ``bound`` is a hang."""
    started = time.monotonic()
    try:
        out, err = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"still running {bound} s after the server stopped: it hangs")
    return process.returncode, out, err, time.monotonic() - started


def next_line(process: subprocess.Popen, bound: float = HANG_BOUND) -> str:
    """The process's next line of output; none within ``bound`` seconds is a hang."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=bound)
    except queue.Empty:
        process.kill()  # which ends the reading thread too
        pytest.fail(f"no answer {bound} s after the server stopped: it hangs")


@pytest.fixture
def ledger(server, tmp_path) -> tuple[str, Path]:
    """A database of its own with three recorded tasks, and the directory they ran in."""
    url = server.create_database()
    (tmp_path / "in.txt").write_text("hello\n")
    for n in (1, 2, 3):
        run_cli("run", "-i", "in.txt", "-o", f"out{n}.txt", "--ledger", url, "--",
                "sh", "-c", f"cat in.txt > out{n}.txt; echo {n} >> out{n}.txt", cwd=tmp_path, check_rc=0)
    return url, tmp_path


def assert_gave_up_clearly(status: int, err: str, url: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err, err
    shown = url.replace("postgresql://", "").split("?")[0]
    assert shown in err and "did not answer" in err and "ll_hang_timeout=2" in err, err


@pytest.mark.parametrize("target, table", [("out1.txt", "ll_meta"), (None, "ll_records")],
                         ids=["targeted-read", "full-audit"])
def test_a_read_gives_up_on_a_stopped_server_and_works_once_it_continues(server, ledger, target, table):
    url, cwd = ledger
    quick = f"{url}?{QUICK}"
    args = [*([target] if target else []), "--ledger", quick]
    with locked(url, table):
        reader = start_cli(*args, cwd=cwd, program="verify-lineage")
        wait_for_lock_waiter(url, reader)
        with stopped(server):
            status, _, err, took = finish(reader)
    assert_gave_up_clearly(status, err, quick)
    assert took < HANG_BOUND
    again = run_cli(*args, cwd=cwd, program="verify-lineage")
    assert again.returncode == 0 and "verified" in again.stdout, again


def test_a_recording_keeps_its_record_in_the_spool_and_ships_it_later(server, ledger):
    """``run`` gives shipping --ship-wait seconds (2 by default): the command ends in time
    whatever the server does, its record synced in the spool; it ships after SIGCONT."""
    url, cwd = ledger
    quick = f"{url}?{QUICK}"
    with locked(url, "ll_blocks"):
        recorder = start_cli("run", "-i", "in.txt", "-o", "out4.txt", "--ledger", quick, "--",
                             "sh", "-c", "cat in.txt > out4.txt", cwd=cwd)
        wait_for_lock_waiter(url, recorder)
        with stopped(server):
            status, _, err, _ = finish(recorder)
            assert status == 0 and "waits there" in err, err
            # Shipping while the server is stopped: exit 2, and the record still waits.
            shipping = start_cli("spool", "ship", "--timeout", "30", "--ledger", quick, cwd=cwd)
            status, _, err, _ = finish(shipping)
            assert status == 2 and "Traceback" not in err, err
            waiting = json.loads(run_cli("spool", "status", "--json", cwd=cwd, check_rc=0).stdout)
            assert [entry["records"] for entry in waiting] == [1], waiting
    shipped = run_cli("spool", "ship", "--ledger", quick, cwd=cwd)
    assert shipped.returncode == 0 and "shipped 1 record" in shipped.stderr, shipped
    audit = run_cli("--ledger", url, cwd=cwd, program="verify-lineage")
    assert audit.returncode == 0 and "4 records" in audit.stdout, audit


WRITER = """
import sys, time
from lineage_ledger import BackendUnavailable
from lineage_ledger.backends import open_backend
from tests.backend_conformance import chain_of
from tests.support.factories import make_records
with open_backend(sys.argv[1]) as backend:
    blocks = chain_of(make_records(6), 3)
    backend.append(blocks[:1])
    print("ready", flush=True)
    sys.stdin.readline()  # the test has locked the table: append now
    started = time.monotonic()
    try:
        backend.append(blocks[1:])
    except BackendUnavailable as err:
        print("gave up after %.1f s: %s" % (time.monotonic() - started, err), flush=True)
        sys.stdin.readline()  # the test continues the server, then says go on
        backend.append(blocks[1:])  # the same object, a fresh session: the append lands
        print("appended", backend.head().height, flush=True)
"""


def test_a_long_lived_writer_gives_up_on_a_stopped_server_and_appends_after(server, tmp_path):
    """A workflow's recording thread appends through one back-end object for hours: an
    append stuck on a stopped server held its records (and every later one) for ever. Now
    it fails like an unreachable server (the recorder keeps them in the spool and retries),
    and the same object appends once the server continues."""
    url = server.create_database()
    quick = f"{url}?{QUICK}"
    root = Path(__file__).resolve().parent.parent
    writer = subprocess.Popen([sys.executable, "-c", WRITER, quick], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        with locked(url, "ll_blocks"):
            writer.stdin.write("append\n")
            writer.stdin.flush()
            wait_for_lock_waiter(url, writer)
            with stopped(server):
                line = next_line(writer)
                assert line.startswith("gave up"), (line, writer.stderr.read() if writer.poll() is not None else "")
                assert "did not answer" in line and "ll_hang_timeout=2" in line, line
        writer.stdin.write("go\n")
        writer.stdin.flush()
        status, out, err, _ = finish(writer)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert status == 0 and out.strip() == "appended 1", (out, err)


def test_a_slow_statement_on_a_live_server_is_not_cut_short(server, ledger):
    """The limit is on silence from a server that takes no new connection either, not on a
    statement's time: a statement that waits (here for a lock) on a live server through many
    probes finishes, as a long audit of millions of records must."""
    url, cwd = ledger
    with locked(url, "ll_records"):
        reader = start_cli("--ledger", f"{url}?{QUICK}", cwd=cwd, program="verify-lineage")
        wait_for_lock_waiter(url, reader)
        time.sleep(8)  # four probe periods
        assert reader.poll() is None, reader.communicate()
    status, out, err, _ = finish(reader)
    assert status == 0 and "verified" in out, (out, err)


@pytest.mark.parametrize("create", [True, False], ids=["writer", "reader"])
def test_the_limit_is_read_from_the_url_and_checked(server, create):
    url = server.create_database()
    with pytest.raises(ConfigError, match="ll_hang_timeout='soon'"):
        open_backend(f"{url}?ll_hang_timeout=soon", create=create)
    with pytest.raises(ConfigError, match="ll_hang_timeout='-1'"):
        open_backend(f"{url}?ll_hang_timeout=-1", create=create)
    if create is False:  # a reader needs a ledger there
        with open_backend(url) as writer:
            writer.append(chain_of(make_records(2), 2))
    # libpq never sees the key (it refuses keys it does not know); 0 turns the watch off.
    for value in ("0", "2.5"):
        with open_backend(f"{url}?ll_hang_timeout={value}&connect_timeout=3", create=create) as backend:
            assert backend.head() is not None or create
            assert backend.identity == url.replace("postgresql://", "postgresql+psycopg://")  # neither key names it
    with pytest.raises(BackendUnavailable):  # still a back-end error, not a hang, when it is down
        open_backend("postgresql://ledger@127.0.0.1:1/x?ll_hang_timeout=1", create=create)
