"""SQLite ledgers appended through the standard library's sqlite3 (issues 16 and 20).

``open_backend`` gives a writable ``sqlite:`` URL a ``SQLiteBackend``, which never imports
SQLAlchemy; ``SQLBackend`` (SQLAlchemy) stays for migrations, PostgreSQL and URL spellings
with connect arguments (``?timeout=60`` below). Both must write the same files: the same
schema text, the same rows, the same errors.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import (
    AppendConflict,
    BackendUnavailable,
    ConfigError,
    CorruptStore,
    Ledger,
    LedgerError,
    build_block,
    open_ledger,
)
from lineage_ledger.backends import open_backend
from lineage_ledger.backends._sqlite_reader import SQLiteReader
from lineage_ledger.backends.sql import SQLBackend
from lineage_ledger.backends.sqlite import SQLiteBackend
from lineage_ledger.testing import BackendConformance, artifact, chain_of, make_record, make_records
from tests.conftest import run_cli
from tests.support.faults import hold_write_lock
from tests.test_sql_store import build_schema_2

WRITER = [sys.executable, "-m", "lineage_ledger.testing.writer"]
BLOCK_TIME = datetime(2026, 2, 1, tzinfo=timezone.utc)  # fixed, so both ledgers get the same block ids


def through_sqlalchemy(url: str) -> str:
    """The same file, spelled with a connect argument: SQLBackend (SQLAlchemy) opens it."""
    return url + "?timeout=60"


def dump(path) -> dict:
    """Everything a ledger file holds, row by row, in storage order (the origin aside)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {
            name: conn.execute(f"SELECT * FROM {name} ORDER BY {order}").fetchall()
            for name, order in (("ll_blocks", "height"), ("ll_records", "seq"), ("ll_artifacts", "seq, role, path"))
        }
        tables["ll_meta"] = conn.execute("SELECT rowid, key, CASE key WHEN 'origin' THEN length(value) ELSE value END"
                                         " FROM ll_meta").fetchall()
        # By name: SQLAlchemy creates a table's indexes in no fixed order (it keeps them in a
        # set), so their order and page numbers differ from one of its own ledgers to the next.
        tables["schema"] = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        tables["pragmas"] = [conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("journal_mode", "page_size", "user_version", "auto_vacuum", "encoding")]
        return tables
    finally:
        conn.close()


# -- the conformance suite: the stdlib writer (tests/test_backends.py runs it on open_backend's
#    choice too) and SQLAlchemy's, which no longer gets plain sqlite: URLs ----------------------
class TestSQLiteStdlibWriter(BackendConformance):
    concurrent_writers = 2  # tests/test_backends.py runs 8 x 1,000 on open_backend's choice
    records_per_writer = 200

    @pytest.fixture
    def url(self, tmp_path):
        return f"sqlite:///{tmp_path}/ledger.db"

    @pytest.fixture
    def backend(self, url):
        backend = open_backend(url)
        assert type(backend) is SQLiteBackend
        yield backend
        backend.close()


class TestSQLiteThroughSQLAlchemy(TestSQLiteStdlibWriter):
    @pytest.fixture
    def url(self, tmp_path):
        return through_sqlalchemy(f"sqlite:///{tmp_path}/ledger.db")

    @pytest.fixture
    def backend(self, url):
        backend = open_backend(url)
        assert type(backend) is SQLBackend
        yield backend
        backend.close()


# -- the same files --------------------------------------------------------------------------------
def test_a_new_ledger_has_sqlalchemys_schema_byte_for_byte(tmp_path):
    ours, theirs = tmp_path / "ours" / "ledger.db", tmp_path / "theirs" / "ledger.db"
    with open_backend(f"sqlite:///{ours}") as created:
        assert type(created) is SQLiteBackend and created.migrated_from is None
        origin = created.origin
    with SQLBackend(f"sqlite:///{theirs}") as other:
        assert other.origin != origin
    assert dump(ours) == dump(theirs)
    assert dump(ours)["pragmas"][0] == "wal"
    with SQLBackend(f"sqlite:///{ours}") as reopened:  # SQLAlchemy takes it as its own: nothing to do
        assert reopened.origin == origin and reopened.migrated_from is None
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600 and stat.S_IMODE(ours.parent.stat().st_mode) == 0o700


# Normal paths, as every record names (a stored "/d/./x" is refused: tests/test_record_paths.py).
artifact_names = st.text(alphabet="abz-_.é✓ /", min_size=1, max_size=12).map(lambda s: posixpath.normpath("/d/" + s))
a_record = st.tuples(
    st.integers(0, 30),  # which record: repeats make duplicates, refused by both alike
    st.sampled_from(["run-a", "run-b", "ü"]),
    st.lists(st.tuples(artifact_names, st.text(max_size=3)), max_size=3, unique_by=lambda a: a[0]),
    st.lists(st.tuples(artifact_names, st.text(max_size=3)), max_size=3, unique_by=lambda a: a[0]),
)
batches = st.lists(st.tuples(st.lists(a_record, min_size=1, max_size=6), st.integers(1, 4)), min_size=1, max_size=4)


def append_outcome(backend, blocks) -> str:
    try:
        backend.append(blocks)
    except AppendConflict as err:
        return f"conflict: {err}"
    return "ok"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, rewind=st.booleans())
def test_both_writers_store_the_same_rows_and_each_verifies_the_others(batches, rewind):
    """The same appends through sqlite3 and through SQLAlchemy leave identical files (every row,
    conflicts refused alike); then each writer appends to the other's file, and each file
    passes a full audit read by the other."""
    with tempfile.TemporaryDirectory() as tmp:
        ours_url, theirs_url = f"sqlite:///{tmp}/ours.db", f"sqlite:///{tmp}/theirs.db"
        ours, theirs = open_backend(ours_url), SQLBackend(theirs_url)
        try:
            assert type(ours) is SQLiteBackend
            prev = None
            for records, block_size in batches:
                stored = [make_record(i, run_id=run, inputs=[artifact(p, c) for p, c in ins],
                                      outputs=[artifact(p, c) for p, c in outs]).stored()
                          for i, run, ins, outs in records]
                blocks, tip = [], prev
                for start in range(0, len(stored), block_size):
                    block = build_block(stored[start : start + block_size], tip, BLOCK_TIME)
                    blocks.append(block.stored())
                    tip = block.header
                assert append_outcome(ours, blocks) == append_outcome(theirs, blocks)
                if rewind:  # appending the same blocks again: skipped (or refused) alike
                    assert append_outcome(ours, blocks) == append_outcome(theirs, blocks)
                prev = ours.head()
                assert prev == theirs.head()
        finally:
            ours.close()
            theirs.close()
        assert dump(f"{tmp}/ours.db") == dump(f"{tmp}/theirs.db")
        # Crossed: each file gets a record from the other writer, then a full audit by the other.
        for writer, reader in ((SQLBackend(ours_url), SQLiteBackend), (open_backend(theirs_url), SQLBackend)):
            with Ledger(writer, spool_root=f"{tmp}/spool") as ledger:
                ledger.append_records([make_record(1000, run_id="crossed").stored()])
            with Ledger(reader(writer.url), spool_root=f"{tmp}/spool") as ledger:
                assert ledger.verify_chain().records == ledger.backend.record_count() > 0
        crossed_ours, crossed_theirs = dump(f"{tmp}/ours.db"), dump(f"{tmp}/theirs.db")
        assert crossed_ours["ll_records"] == crossed_theirs["ll_records"]
        assert crossed_ours["ll_artifacts"] == crossed_theirs["ll_artifacts"]


# -- the same errors ---------------------------------------------------------------------------
def failure(opener, url) -> tuple[type, str] | None:
    try:
        opener(url).close()
    except LedgerError as err:
        return type(err), str(err)
    return None


def test_bad_files_and_urls_are_refused_as_sqlalchemy_refused_them(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is no database at all" * 100)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE samples (name TEXT)")
    conn.close()
    no_origin = tmp_path / "no-origin.db"
    SQLBackend(str(no_origin)).close()
    with sqlite3.connect(no_origin) as conn:
        conn.execute("DELETE FROM ll_meta WHERE key = 'origin'")
    conn.close()
    future = tmp_path / "future.db"
    SQLBackend(str(future)).close()
    with sqlite3.connect(future) as conn:
        conn.execute("UPDATE ll_meta SET value = '9' WHERE key = 'schema'")
    conn.close()
    (tmp_path / "a-file").write_text("")
    cases = {
        str(garbage): CorruptStore, str(foreign): ConfigError, str(no_origin): CorruptStore,
        str(future): ConfigError, str(tmp_path): ConfigError, "sqlite://": ConfigError,
        "sqlite:///:memory:": ConfigError, f"sqlite:///{tmp_path}/a-file/ledger.db": BackendUnavailable,
    }
    for url, expected in cases.items():
        ours = failure(open_backend, url)
        assert ours is not None and ours[0] is expected, (url, ours)
        assert ours == failure(SQLBackend, url), url
    assert garbage.read_bytes() == b"this is no database at all" * 100  # nothing was written


def test_a_schema_2_ledger_is_migrated_once_then_appended_without_sqlalchemy(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    blocks = chain_of(make_records(9), 4)
    build_schema_2(url, blocks)
    with open_backend(url) as backend:
        assert type(backend) is SQLiteBackend and backend.migrated_from == "2" and backend.migrate() == "2"
        backend.append([build_block([make_record(50).stored()], backend.head()).stored()])
    with open_backend(url) as again:
        assert again.migrated_from is None and again.migrate() is None and again.record_count() == 10
    assert open_ledger(url, read_only=True).verify_chain().records == 10


def test_a_locked_ledger_times_out_as_before_and_keeps_nothing_half_written(tmp_path, monkeypatch):
    """Another process holds the write lock: both writers wait the busy timeout (shortened
    here), then raise BackendUnavailable naming the lock, and store nothing."""
    import lineage_ledger.backends.sql as sql_module
    import lineage_ledger.backends.sqlite as sqlite_module

    monkeypatch.setattr(sql_module, "_BUSY_TIMEOUT_S", 1)
    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT_S", 1)
    db = tmp_path / "ledger.db"
    open_backend(str(db)).close()
    holder = hold_write_lock(db)
    try:
        blocks = chain_of(make_records(3), 3)
        messages = []
        for opener in (open_backend, SQLBackend):
            with opener(str(db)) as backend:
                with pytest.raises(BackendUnavailable) as raised:
                    backend.append(blocks)
                messages.append(str(raised.value))
                assert backend.head() is None
        assert messages[0] == messages[1] and "append failed: database is locked" in messages[0]
    finally:
        holder.communicate("")
    with open_backend(str(db)) as backend:  # the lock released: the same connection writes again
        backend.append(chain_of(make_records(3), 3))
        assert backend.record_count() == 3


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_read_only_ledger_opens_for_reading_as_before(tmp_path, what):
    db = tmp_path / "ro" / "ledger.db"
    with open_backend(str(db)) as backend:
        backend.append(chain_of(make_records(4), 2))
    target = db if what == "file" else db.parent
    mode = target.stat().st_mode
    os.chmod(target, 0o444 if what == "file" else 0o555)  # root too: the modes say read-only
    try:
        for opener in (open_backend, SQLBackend):
            with opener(str(db)) as backend:
                assert backend.read_only and backend.record_count() == 4
                with pytest.raises(BackendUnavailable, match="opened for reading only"):
                    backend.append(chain_of(make_records(1, start=9), 1))
        assert type(open_backend(str(db))) is SQLiteReader
    finally:
        os.chmod(target, mode)


def test_new_ledger_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        with open_backend(f"sqlite:///{tmp_path}/a/b/ledger.db") as backend:
            backend.append(chain_of(make_records(2), 2))
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "a" / "b").iterdir()}
        assert modes == {"ledger.db": 0o600, "ledger.db-wal": 0o600, "ledger.db-shm": 0o600}
        assert {stat.S_IMODE((tmp_path / d).stat().st_mode) for d in ("a", "a/b")} == {0o700}
    finally:
        os.umask(old)


def open_handles(path) -> int:
    """How many file descriptors of this process have ``path`` open."""
    fds = Path("/proc/self/fd")
    found = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            found += os.readlink(fd) == str(path)
    return found


def test_threads_started_per_shipment_share_connections(tmp_path):
    """A long-lived process that ships from a new thread each round (the Airflow shipper)
    keeps one connection, not one per thread it ever started; closing closes it."""
    db = tmp_path / "ledger.db"
    ledger = open_ledger(str(db), spool=str(tmp_path / "spool"))
    records = make_records(20)
    for record in records:
        shipper = threading.Thread(target=ledger.append_records, args=([record.stored()],))
        shipper.start()
        shipper.join()
    assert ledger.backend.record_count() == 20
    assert open_handles(db) == 1
    ledger.close()
    assert open_handles(db) == 0


def test_closing_does_not_wait_for_an_append_blocked_on_the_lock(tmp_path):
    """A shipper thread waits in the busy timeout on a ledger locked elsewhere; the process
    closes the ledger and goes on (what `run` and the engines' recording processes do at
    their end) without waiting out that timeout. The blocked append still lands later."""
    db = tmp_path / "ledger.db"
    backend = open_backend(str(db))
    holder = hold_write_lock(db)
    try:
        blocks = chain_of(make_records(3), 3)
        shipper = threading.Thread(target=backend.append, args=(blocks,), daemon=True)
        shipper.start()
        time.sleep(0.5)  # blocked in BEGIN IMMEDIATE
        began = time.monotonic()
        backend.close()
        assert time.monotonic() - began < 5
        assert shipper.is_alive()
    finally:
        holder.communicate("")
    shipper.join(timeout=60)
    assert not shipper.is_alive() and open_handles(db) == 0  # landed, then its connection closed
    with open_ledger(str(db), read_only=True) as ledger:
        assert ledger.verify_chain().records == 3


def test_a_forked_child_appends_through_its_own_connection(tmp_path):
    """A scheduler that forks task processes while its ledger is open (Airflow's
    LocalExecutor): the child writes through a connection of its own, the parent goes on."""
    db = tmp_path / "ledger.db"
    backend = open_backend(str(db))
    backend.append(chain_of(make_records(2), 2))
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its append went through
        code = 1
        try:
            backend.append([build_block([make_record(7).stored()], backend.head()).stored()])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    backend.append([build_block([make_record(8).stored()], backend.head()).stored()])
    assert backend.record_count() == 4 and backend.head().height == 2
    backend.close()
    with open_ledger(str(db), read_only=True) as ledger:
        assert ledger.verify_chain().records == 4


def test_both_writers_append_to_one_file_at_once(tmp_path):
    """Processes of either kind take turns on the write lock and rebuild on each other's head."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    spellings = [url, through_sqlalchemy(url)] * 2
    writers = [subprocess.Popen([*WRITER, spelling, str(tmp_path / f"spool{i}"), f"w{i}", "200"])
               for i, spelling in enumerate(spellings)]
    assert [w.wait(timeout=300) for w in writers] == [0] * len(writers)
    with open_ledger(url, spool=str(tmp_path / "check")) as ledger:
        assert ledger.verify_chain().records == 800
        assert all(len(ledger.run(f"w{i}")) == 200 for i in range(len(writers)))


# -- recording processes never import SQLAlchemy -----------------------------------------------------
PROBE = """
import atexit, os, sys
def report():
    with open(os.environ["PROBE_OUT"], "a") as out:
        out.write(" ".join(sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy")) + "|")
atexit.register(report)
leave = os._exit  # what `run` calls while its shipper is still blocked: report first
os._exit = lambda code: (report(), leave(code))
from lineage_ledger._cli.main import main
sys.argv = ["lineage-ledger", *sys.argv[1:]]
main()
"""


def test_run_and_spool_ship_never_import_sqlalchemy(workdir, tmp_path_factory):
    """`lineage-ledger run` creating and appending to the default ledger, and `spool ship`
    shipping what waited: no process imports any SQLAlchemy module."""
    probes = tmp_path_factory.mktemp("probe")
    (probes / "probe.py").write_text(PROBE)
    out = probes / "modules"

    def probed(*args):
        return run_cli(probes / "probe.py", *args, cwd=workdir, program="python", env={"PROBE_OUT": str(out)})

    for _ in range(2):  # the first creates the ledger, the second appends to it
        result = probed("run", "--", "true")
        assert result.returncode == 0, result.stderr
    db = workdir / ".lineage" / "ledger.db"
    os.chmod(db, 0o444)  # the next record waits in the spool
    try:
        result = probed("run", "--", "true")  # read-only: exit 1, the record kept in the spool
        assert result.returncode == 1 and "in the spool" in result.stderr, result.stderr
    finally:
        os.chmod(db, 0o600)
    result = probed("spool", "ship")
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "||||"  # four processes, not one sqlalchemy module among them
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM ll_records").fetchone() == (3,)
    finally:
        conn.close()
