"""Faults around the stdlib SQLite writer (``SQLiteBackend``): exceptions in the middle of a
transaction, forked children, and the file's lock state after them. Real files, real
processes; a record a writer acknowledged must be in the file, whatever else happens."""

from __future__ import annotations

import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from lineage_ledger import BackendUnavailable, build_block, open_ledger
from lineage_ledger.backends import open_backend
from lineage_ledger.backends.sqlite import SQLiteBackend
from lineage_ledger.testing import chain_of, make_record, make_records
from tests.support.faults import hold_write_lock


def another_process_can_write(db) -> bool:
    conn = sqlite3.connect(db, timeout=2, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


class TaskTimeout(Exception):
    """What a signal handler raises in the middle of an append (Airflow's task timeout)."""


def test_an_exception_while_waiting_for_the_lock_leaves_no_transaction_open(tmp_path):
    """A SIGALRM handler raises while the append waits for the write lock: once SQLite has
    granted it, the exception comes out of BEGIN IMMEDIATE itself. The connection must not go
    back to the pool holding that transaction: it kept the write lock from every other
    process, and this process's next append failed with 'cannot start a transaction within
    a transaction'."""
    db = tmp_path / "ledger.db"
    ledger = open_ledger(str(db), spool=str(tmp_path / "spool"))
    assert type(ledger.backend) is SQLiteBackend
    holder = hold_write_lock(db)
    assert holder.stdin is not None
    release = threading.Timer(1.0, holder.stdin.close)  # after the alarm: BEGIN IMMEDIATE then returns

    def timeout(*_):
        raise TaskTimeout()

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # fires while BEGIN IMMEDIATE waits
        release.start()
        with pytest.raises(TaskTimeout):
            ledger.append_records([make_record(1).stored()])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        release.join()
        holder.wait(timeout=60)
    assert another_process_can_write(db)
    assert ledger.append_records([make_record(2).stored()]) == 1
    ledger.close()
    with open_ledger(str(db), read_only=True) as reader:
        assert reader.verify_chain().records == 1


def append_one(backend, number: int) -> None:
    backend.append([build_block([make_record(number).stored()], backend.head()).stored()])


def libc_fork() -> int:
    """fork(2) straight from the C library, as an extension module forks: Python's
    at-fork hooks do not run in the child."""
    return ctypes.CDLL(None, use_errno=True).fork()


@pytest.mark.parametrize("fork, reopen", [(os.fork, None), (libc_fork, None), (libc_fork, "close"),
                                          (libc_fork, "new")],
                         ids=["os.fork", "no-fork-hooks", "no-fork-hooks-closed-first", "no-fork-hooks-new-object"])
def test_a_forked_childs_append_survives_the_parent_closing_its_ledger(tmp_path, fork, reopen):
    """The parent has the ledger open when it forks (Airflow's LocalExecutor forking a task),
    the child appends, the parent closes the ledger (or exits), the child appends again and
    is killed. Both of the child's acknowledged appends are in the file: the parent's close
    did not take itself for the last connection and delete the -wal the child was writing.
    The same for a child forked by C code (no at-fork hook), which may close the ledger it
    inherited, or not, and open it again."""
    db = tmp_path / "ledger.db"
    backend = open_backend(str(db))
    backend.append(chain_of(make_records(2), 2))
    child_appends_across_the_parent_closing(backend, db, fork, reopen)


def child_appends_across_the_parent_closing(backend, db, fork=os.fork, reopen: str | None = None) -> None:
    """A child forked with ``backend`` (of the ledger ``db``) open appends, the parent
    closes it, the child appends again and dies by SIGKILL: both appends are in ``db``."""
    first_done, parent_closed = os.pipe(), os.pipe()
    pid = fork()
    if pid == 0:  # the child: appends, waits for the parent's close, appends, dies by SIGKILL
        try:
            if reopen == "close":
                backend.close()
            if reopen:  # the inherited object left alone beside the new one
                backend = open_backend(str(db))
            append_one(backend, 7)
            os.write(first_done[1], b"1")
            os.read(parent_closed[0], 1)
            append_one(backend, 8)
            os.write(first_done[1], b"2")
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    assert os.read(first_done[0], 1) == b"1"
    backend.close()
    os.write(parent_closed[1], b"1")
    acknowledged = os.read(first_done[0], 1)
    _, status = os.waitpid(pid, 0)
    assert acknowledged == b"2" and os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    with open_ledger(str(db), read_only=True) as ledger:
        assert ledger.verify_chain().records == 4


def test_a_child_forked_while_a_thread_appends_appends_nothing_and_the_parent_loses_nothing(tmp_path):
    """A shipper thread of the parent is inside an append (waiting for the lock another
    process holds) when the parent forks. The child must neither close that connection (that
    would undo the parent's write in the shared WAL index) nor write the file beside it
    (its locks would be the parent's): its appends are refused, through a new ledger object
    too. The parent's append lands once the lock is free."""
    db = tmp_path / "ledger.db"
    backend = open_backend(str(db))
    backend.append(chain_of(make_records(2), 2))
    holder = hold_write_lock(db)
    try:
        shipper = threading.Thread(target=append_one, args=(backend, 5))
        shipper.start()
        deadline = time.monotonic() + 30
        while backend._idle and time.monotonic() < deadline:  # until the shipper has the connection
            time.sleep(0.01)
        time.sleep(0.2)  # in BEGIN IMMEDIATE, waiting for the lock
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                refused = 0
                for opener in (lambda: backend, lambda: open_backend(str(db))):
                    try:
                        append_one(opener(), 9)
                    except BackendUnavailable as err:
                        refused += "forked" in str(err)
                code = 0 if refused == 2 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        holder.communicate("")
    shipper.join(timeout=60)
    assert not shipper.is_alive()
    append_one(backend, 6)
    backend.close()
    with open_ledger(str(db), read_only=True) as ledger:
        assert ledger.verify_chain().records == 4


def test_a_forked_childs_append_survives_a_reader_the_parent_had_open(tmp_path):
    """As above, with a read-only ledger object open in the parent at the fork (a check
    before a run) and a writer the parent opens after it: the child's acknowledged appends
    are in the file after the parent closes both."""
    db = tmp_path / "ledger.db"
    with open_backend(str(db)) as backend:
        backend.append(chain_of(make_records(2), 2))
    reader = open_backend(str(db), create=False)
    assert reader.record_count() == 2
    first_done, parent_closed = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child = open_backend(str(db))
            append_one(child, 7)
            os.write(first_done[1], b"1")
            os.read(parent_closed[0], 1)
            append_one(child, 8)
            os.write(first_done[1], b"2")
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    assert os.read(first_done[0], 1) == b"1"
    writer = open_backend(str(db))
    append_one(writer, 9)
    reader.close()
    writer.close()
    os.write(parent_closed[1], b"1")
    acknowledged = os.read(first_done[0], 1)
    os.waitpid(pid, 0)
    assert acknowledged == b"2"
    with open_ledger(str(db), read_only=True) as ledger:
        assert ledger.verify_chain().records == 5


def test_a_forked_childs_append_through_sqlalchemy_survives_the_parent_closing_its_ledger(tmp_path):
    """The first fork test, for a URL only SQLAlchemy opens (a connect argument)."""
    url = f"sqlite:///{tmp_path}/ledger.db?timeout=60"
    backend = open_backend(url)
    assert type(backend).__name__ == "SQLBackend"
    backend.append(chain_of(make_records(2), 2))
    child_appends_across_the_parent_closing(backend, tmp_path / "ledger.db")


# -- a ledger not yet in WAL mode, opened while another process writes -----------------------------
_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE ll_meta SET value = value WHERE key = 'origin'")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.parametrize("writer", ["sqlite3", "sqlalchemy"])
def test_opening_a_rollback_journal_ledger_while_another_process_writes_waits(tmp_path, writer):
    """Switching a ledger to WAL needs the file to itself: while another process held a
    write transaction (as a migrating opener does), ``PRAGMA journal_mode = WAL`` failed at
    once with "database is locked" (SQLite does not wait there: waiting could deadlock), and
    one of four processes opening a schema-2 ledger together failed in CI. Opening waits."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([r.stored() for r in make_records(3)])
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
        assert conn.execute("SELECT count(*) FROM ll_meta WHERE key = 'origin'").fetchone() == (1,)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        if writer == "sqlite3":
            backend = SQLiteBackend(url)
        else:
            from lineage_ledger.backends.sql import SQLBackend

            backend = SQLBackend(url)
        with backend:
            assert backend.record_count() == 3
            backend.append([build_block([r.stored() for r in make_records(2, start=10)], backend.head()).stored()])
    finally:
        assert holder.wait(timeout=60) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM ll_records").fetchone() == (5,)
