"""Read-only PostgreSQL ledgers through psycopg alone (``PostgresReader``): what read commands
open, against a real server. The writer and the reader must name the ledger alike (its
trusted state is kept under that name), the reader's session must not be able to write, and
a read command must not pay for importing SQLAlchemy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.parse

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger import BackendUnavailable, open_ledger
from lineage_ledger.backends import open_backend
from lineage_ledger.backends._pg_reader import TUNING_KEYS, PostgresReader, identity_of
from lineage_ledger.backends.sql import SQLBackend, _engine_url
from tests.backend_conformance import chain_of
from tests.conftest import run_cli
from tests.support.audit import watch_workers
from tests.support.factories import artifact, make_record, make_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sqlalchemy_rendering(url: str) -> str:
    """How the writer named a PostgreSQL ledger before the reader existed."""
    return sa.make_url(_engine_url(url)).render_as_string(hide_password=True)


def sqlalchemy_identity(url: str) -> str:
    """The name now: that rendering without the connection-tuning keys (tests/test_pg_identity.py)."""
    return sa.make_url(_engine_url(url)).difference_update_query(TUNING_KEYS).render_as_string(hide_password=True)


plain = st.text(alphabet="abcXYZ019_.~-", min_size=1, max_size=8)
odd = st.text(alphabet="ab:/@?#%+ é=&[]'\"", min_size=1, max_size=8).map(lambda s: urllib.parse.quote(s, safe=""))
parts = st.one_of(plain, odd)


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(["postgresql", "postgresql+psycopg"]), user=st.none() | parts,
       password=st.none() | parts | st.just(""), host=st.one_of(plain, st.just("[::1]"), st.just("db.example.org")),
       port=st.none() | st.sampled_from(["5432", "05432", "1"]), database=parts,
       query=st.lists(st.tuples(st.sampled_from(["sslmode", "application_name", "b", "a", "a%20b"]), parts | st.just("")),
                      max_size=3))
def test_the_reader_names_a_ledger_as_the_writer_does(scheme, user, password, host, port, database, query):
    url = f"{scheme}://"
    if user is not None:
        url += user + (f":{password}" if password is not None else "") + "@"
    url += host + (f":{port}" if port else "") + "/" + database
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query)
    assert identity_of(url) == sqlalchemy_identity(url)


@pytest.mark.parametrize("url", [
    "postgresql://ledger@127.0.0.1:5432/lab",
    "postgresql://ledger:s3cret@127.0.0.1/lab?sslmode=require&application_name=x",
    "postgresql+psycopg://u:p%40ss@h:05432/db?b=2&a=1&a=0",
    "postgresql:///lab?host=/var/run/postgresql",
])
def test_identity_examples(url):
    assert identity_of(url) == sqlalchemy_identity(url)
    assert "s3cret" not in identity_of(url) and "p%40ss" not in identity_of(url)


READER = textwrap.dedent("""
    import json, sys
    from lineage_ledger.backends import open_backend
    with open_backend(sys.argv[1], create=False) as backend:
        head = backend.head()
        found = backend.find("in", path="/data/in-1")
        latest = backend.find_latest("out", "/data/out-1")
        print(json.dumps({"type": type(backend).__name__, "height": head.height, "found": len(found),
                          "latest": latest is not None, "identity": backend.identity,
                          "sqlalchemy": sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy")}))
""")


def some_blocks():
    records = make_records(12) + [make_record(50, inputs=[artifact("/data/in-1", "x")],
                                              outputs=[artifact("/data/out-1", "y")])]
    return chain_of(records, 5)


@pytest.mark.postgres
def test_a_read_only_postgres_process_never_imports_sqlalchemy(postgres_url):
    with open_backend(postgres_url) as writer:
        writer.append(blocks := some_blocks())
        identity, found = writer.identity, len(writer.find("in", path="/data/in-1"))
    result = subprocess.run([sys.executable, "-c", READER, postgres_url], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"type": "PostgresReader", "height": blocks[-1].height, "found": found,
                                         "latest": True, "identity": identity, "sqlalchemy": []}
    # SQLBackend(url, create=False), the writer's class asked to read, gives the same reader.
    with SQLBackend(postgres_url, create=False) as reader:
        assert type(reader) is PostgresReader and reader.identity == identity


@pytest.mark.postgres
def test_the_readers_session_cannot_write(postgres_url):
    with open_backend(postgres_url) as writer:
        writer.append(some_blocks())
    with open_backend(postgres_url, create=False) as reader:
        count = reader.record_count()
        with pytest.raises(BackendUnavailable, match="read-only transaction"):
            reader._fetch("writing", "DELETE FROM ll_records WHERE seq = ?", (0,))
        with pytest.raises(BackendUnavailable, match="reading only"):
            reader.append(chain_of(make_records(3, start=900), 3))
        assert reader.record_count() == count


@pytest.mark.postgres
def test_sessions_compile_no_query_plans(postgres_url):
    """JIT compiling cost 5-25 ms of a 1 ms look-up at 1M records: off in the reader's and
    the writer's sessions, whatever options the URL gives."""
    with open_backend(postgres_url) as writer, open_backend(postgres_url, create=False) as reader:
        assert writer._fetch("settings", "SHOW jit", ()) == [("off",)]
        assert reader._fetch("settings", "SHOW jit", ()) == [("off",)]
    with open_backend(postgres_url + "?options=-c%20work_mem%3D8MB", create=False) as reader:
        assert reader._fetch("settings", "SHOW jit", ()) == [("off",)]
        assert reader._fetch("settings", "SHOW work_mem", ()) == [("8MB",)]


@pytest.mark.postgres
def test_a_forked_child_reads_through_a_session_of_its_own(postgres_url):
    with open_backend(postgres_url) as writer:
        writer.append(blocks := some_blocks())
    with open_backend(postgres_url, create=False) as reader:
        assert reader.head().height == blocks[-1].height
        pid = os.fork()
        if pid == 0:  # the child: reads, then closes what it opened (never the parent's session)
            try:
                ok = reader.head().height == blocks[-1].height and reader.record_count() == 13
                reader.close()
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's session survived the child's use and close.
        assert reader.head().height == blocks[-1].height and reader.record_count() == 13


@pytest.mark.postgres
def test_read_commands_keep_the_writers_trusted_state(postgres_url, tmp_path):
    """The CLI reads through the reader and the recorder writes through SQLAlchemy: one ledger,
    one remembered tree head, so a rewrite of what the reader verified fails it."""
    state = tmp_path / "state"
    env = {**os.environ, "LINEAGE_STATE_DIR": str(state)}
    with open_ledger(postgres_url, state_dir=str(state), spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([r.stored() for r in make_records(30)], block_size=10)
        writer_state = ledger.verifier.store.directory
    verify = [os.path.join(os.path.dirname(sys.executable), "verify-lineage"), "--ledger", postgres_url]
    first = subprocess.run(verify, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    # One state, the writer's, and its lock beside it.
    assert sorted(os.listdir(state)) == [os.path.basename(writer_state), os.path.basename(writer_state) + ".lock"]
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the tail, rewritten and re-chained
        conn.execute("DELETE FROM ll_artifacts WHERE seq >= 20")
        conn.execute("DELETE FROM ll_records WHERE seq >= 20")
        conn.execute("DELETE FROM ll_blocks WHERE height = 2")
    with open_ledger(postgres_url, state_dir=str(tmp_path / "other-state")) as rewriter:
        rewriter.append_records([r.stored() for r in make_records(10, start=500)], block_size=10)
    second = subprocess.run(verify, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "HistoryRewritten" in second.stdout and "record 20 (block 2, position 0)" in second.stdout, second.stdout


PARALLEL = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "8", "LINEAGE_AUDIT_WORKERS": "2"}


def _audit(url: str, state, env: dict[str, str], monkeypatch):
    """(tree root, index rows, size) or (error type, message), remembering nothing from before."""
    from lineage_ledger import LedgerError

    for name in PARALLEL:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
            result = ledger.audit()
        return result.head.root, result.index_rows, result.head.size
    except LedgerError as err:
        return type(err).__name__, str(err)


@pytest.mark.postgres
def test_audit_workers_read_postgres_too(postgres_url, tmp_path, monkeypatch):
    """Each worker opens a read-only session of its own; the answer is the sequential one,
    on an intact ledger and on one with a tampered index row in a middle range."""
    from lineage_ledger._log import audit_parallel as parallel

    records = [make_record(i, run_id=f"run-{i % 3}", inputs=[artifact("/data/ref", "ref")],
                           outputs=[artifact(f"/data/out-{i}", f"o{i}")]) for i in range(40)]
    with open_ledger(postgres_url, state_dir=str(tmp_path / "w"), spool=str(tmp_path / "spool")) as ledger:
        for start in range(0, 40, 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
    with open_backend(postgres_url, create=False) as reader:
        monkeypatch.setenv("LINEAGE_AUDIT_WORKERS", "2")
        answers = list(parallel.results(reader, [parallel.Task(0, 2, 0), parallel.Task(2, 10, 8)], files=False))
    assert [r is not None and r.compared for _, r in answers] == [8, 32]  # the workers answered
    here = _audit(postgres_url, tmp_path / "a", {"LINEAGE_AUDIT_WORKERS": "1"}, monkeypatch)
    there = _audit(postgres_url, tmp_path / "b", PARALLEL, monkeypatch)
    assert here == there and here[1:] == (40, 40)
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("UPDATE ll_artifacts SET digest = %s WHERE seq = 21 AND role = 1",
                            ("ab" * 32,)).rowcount == 1
    here = _audit(postgres_url, tmp_path / "c", {"LINEAGE_AUDIT_WORKERS": "1"}, monkeypatch)
    there = _audit(postgres_url, tmp_path / "d", PARALLEL, monkeypatch)
    assert here[0] == "IndexTampered" and there == here


@pytest.mark.postgres
def test_a_postgres_ledger_opened_for_writing_is_audited_through_read_only_sessions(postgres_url, tmp_path,
                                                                                      monkeypatch):
    """The writer's back-end (SQLAlchemy) has no workers and no bulk check: its audit reads
    through a read-only view of the same database, the workers' sessions, with the answer the
    sequential audit gives."""
    from lineage_ledger.backends._pg_reader import PostgresReader

    records = [make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref")],
                           outputs=[artifact(f"/data/out-{i}", f"o{i}")]) for i in range(40)]
    with open_ledger(postgres_url, state_dir=str(tmp_path / "w"), spool=str(tmp_path / "spool")) as ledger:
        for start in range(0, 40, 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
    expected = _audit(postgres_url, tmp_path / "a", {"LINEAGE_AUDIT_WORKERS": "1"}, monkeypatch)
    given = watch_workers(monkeypatch)
    for name, value in PARALLEL.items():
        monkeypatch.setenv(name, value)
    with open_ledger(postgres_url, state_dir=str(tmp_path / "b"), spool=str(tmp_path / "spool")) as ledger:
        assert not isinstance(ledger.backend, PostgresReader)
        result = ledger.audit()
    assert (result.head.root, result.index_rows, result.head.size) == expected and expected[2] == 40
    assert len(given) == 1 and isinstance(given[0][0], PostgresReader)


# -- the reader reads a URL as the writer does -------------------------------------------------
ODD_URLS = [
    "postgresql://ledger:a/b@db.example/lab",  # a raw slash in the password
    "postgresql://bob:hunter2/Tr0ub4dor%zz@db.example/ledger",  # and a bad percent escape
    "postgresql://bob:50%off @db.example:5433/ledger",  # a raw space and a bare %
    "postgresql://bob:p%40ss%2Fw@db.example/ledger?options=-c+statement_timeout%3D5s&sslmode=require",
    "postgresql:///lab?host=/var/run/postgresql&user=ledger",
    "postgresql://u@h/db?a=1&a=2&b=",
]


def writer_connect_args(url: str) -> dict:
    engine = sa.create_engine(sa.make_url(_engine_url(url)))
    try:
        args = engine.dialect.create_connect_args(sa.make_url(_engine_url(url)))[1]
    finally:
        engine.dispose()
    args.pop("context", None)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


@pytest.mark.parametrize("url", ODD_URLS)
def test_odd_urls_connect_as_the_writer_would(url):
    from lineage_ledger.backends._pg_reader import _parsed

    rendering, args = _parsed(url)
    assert rendering == sqlalchemy_rendering(url) and args == writer_connect_args(url)
    assert identity_of(url) == sqlalchemy_identity(url)


@settings(max_examples=200, deadline=None)
@given(user=parts, password=st.none() | parts | st.text(alphabet="a/ %+", max_size=6),
       port=st.none() | st.sampled_from(["5432", "07"]), database=parts,
       query=st.lists(st.tuples(st.sampled_from(["sslmode", "options", "a"]), parts), max_size=2))
def test_the_reader_connects_as_the_writer_does(user, password, port, database, query):
    from lineage_ledger.backends._pg_reader import _parsed

    url = f"postgresql://{user}" + (f":{password}" if password is not None else "") + "@db.example"
    url += (f":{port}" if port else "") + "/" + database
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query)
    assert _parsed(url)[1] == writer_connect_args(url)


def test_a_url_the_writer_cannot_read_is_bad_input_without_the_password(tmp_path):
    url = "postgresql://bob:s3cret@h:1,h:2/db"  # a host list: libpq takes it, SQLAlchemy does not
    result = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 2 and "malformed ledger URL" in result.stderr, result
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.postgres
def test_threads_share_a_few_sessions(postgres_url):
    """A plugin checks from many short-lived threads: sessions are lent, not kept per thread."""
    import threading

    import psycopg

    from lineage_ledger.backends._pg_reader import _IDLE

    with open_backend(postgres_url) as writer:
        writer.append(some_blocks())
    database = postgres_url.rsplit("/", 1)[1]
    with open_backend(postgres_url, create=False) as reader, psycopg.connect(postgres_url, autocommit=True) as watch:
        counts = []
        for _ in range(30):
            thread = threading.Thread(target=lambda: counts.append(reader.record_count()))
            thread.start()
            thread.join()
        assert counts == [13] * 30
        sessions = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()[0]
        assert sessions <= _IDLE + 1  # the reader's idle ones, and this one
    after = None
    with psycopg.connect(postgres_url, autocommit=True) as watch:
        # A closed session leaves pg_stat_activity when its server process has exited, a
        # moment after the client let go of it (longer on a busy machine): asked for a while.
        deadline = time.monotonic() + 10
        while True:
            after = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                  (database,)).fetchone()[0]
            if after <= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert after <= 1  # close() ended the reader's sessions


@pytest.mark.postgres
def test_many_path_reads_agree_with_one_path_reads_on_duplicated_rows(postgres_url):
    """Rows a tamperer stored twice (the primary key dropped), with different end times."""
    import psycopg

    with open_backend(postgres_url) as writer:
        writer.append(some_blocks())
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ll_artifacts DROP CONSTRAINT ll_artifacts_pkey")
        conn.execute("INSERT INTO ll_artifacts SELECT path, role, seq, digest, '2000-01-01T00:00:00.000000Z'"
                     " FROM ll_artifacts WHERE path = '/data/out-1'")
        conn.execute("INSERT INTO ll_artifacts SELECT path, role, seq, digest, '2999-01-01T00:00:00.000000Z'"
                     " FROM ll_artifacts WHERE path = '/data/in-1'")
    with open_backend(postgres_url, create=False) as reader:
        for role in ("in", "out"):
            for path in ("/data/out-1", "/data/in-1"):
                one, many = reader.find_latest(role, path), reader.find_latest_many(role, [path]).get(path)
                assert (one is None and many is None) or (
                    (one[0].height, one[0].position, one[0].record.id, one[1])
                    == (many[0].height, many[0].position, many[0].record.id, many[1]))
                assert [(f.height, f.position) for f in reader.find_places(role, path=path)] == [
                    (f.height, f.position) for f in reader.find_places_many(role, [path]).get(path, [])]


# -- an audit worker's bulk check reads PostgreSQL too (PostgresAuditReads) --------------------
# Paths whose JSON needs escapes, and ones whose order differs by byte and by language.
ODD_PATHS = ['/d/quo"te', "/d/back\\slash", "/d/new\nline", "/d/\x01ctl", "/d/é", "/d/Z", "/d/a", "/d/\u2028",
             "/d/😀", "/d/\x7f", "/d/ B", "/d/},{"]


def odd_blocks():
    """30 records in 8 blocks: inputs named by odd paths, outputs by some records only."""
    records = [make_record(i, run_id=f"run-{i % 2}",
                           inputs=[artifact(f"{p}{i % 3}", p) for p in ODD_PATHS[: i % len(ODD_PATHS) + 1]],
                           outputs=[artifact(f"/out/{i}{p[2:]}", "y") for p in ODD_PATHS[i % 4 :]] if i % 5 else [])
               for i in range(30)]
    return chain_of(records, 4)


def bulk_and_rows(url: str) -> tuple:
    """What the worker's bulk check and its row-by-row check make of the whole ledger (an
    error of the bulk check is a refusal: ``audit_parallel.audit_range`` then checks row by row)."""
    from lineage_ledger import LedgerError
    from lineage_ledger._log import audit_bulk
    from lineage_ledger._log import audit_parallel as parallel

    with open_backend(url, create=False) as reader:
        assert type(reader) is PostgresReader
        try:
            bulk = audit_bulk.audit_range(reader, 0, 8, 0, False)
        except LedgerError:  # a statement the retyped column fails
            bulk = None
        rows = parallel._audit_rows(reader, parallel.Task(0, 8, 0), False)
    return bulk, rows


# One index row changed, moved, removed, duplicated or added; a record's own index columns;
# a column retyped so that its values print as the same JSON.
ONE_ROW = "(SELECT ctid FROM ll_artifacts WHERE seq = 6 AND role = 0 ORDER BY path COLLATE \"C\" LIMIT 1)"
TAMPERED = {
    "digest": f"UPDATE ll_artifacts SET digest = repeat('ab', 32) WHERE ctid = {ONE_ROW}",
    "deleted": f"DELETE FROM ll_artifacts WHERE ctid = {ONE_ROW}",
    "input made output": f"UPDATE ll_artifacts SET role = 1 WHERE ctid = {ONE_ROW}",
    "another role": f"UPDATE ll_artifacts SET role = 2 WHERE ctid = {ONE_ROW}",
    "path": f"UPDATE ll_artifacts SET path = path || '-x' WHERE ctid = {ONE_ROW}",
    "another record": f"UPDATE ll_artifacts SET seq = 7 WHERE ctid = {ONE_ROW}",
    "ended": f"UPDATE ll_artifacts SET ended = '2030-01-01T00:00:00.000000Z' WHERE ctid = {ONE_ROW}",
    "ended of a record": "UPDATE ll_artifacts SET ended = '2030-01-01T00:00:00.000000Z' WHERE seq = 6",
    "added": "INSERT INTO ll_artifacts SELECT path, 2, seq, digest, ended FROM ll_artifacts WHERE seq = 6 AND role = 0",
    "twice": ("ALTER TABLE ll_artifacts DROP CONSTRAINT ll_artifacts_pkey;"
              f" INSERT INTO ll_artifacts SELECT * FROM ll_artifacts WHERE ctid = {ONE_ROW}"),
    "height": "UPDATE ll_records SET height = height + 1 WHERE seq = 6",
    "pos": "UPDATE ll_records SET pos = pos + 1 WHERE seq = 6",
    "run id": "UPDATE ll_records SET run_id = 'run-x' WHERE seq = 6",
    "digest as jsonb": "ALTER TABLE ll_artifacts ALTER COLUMN digest TYPE jsonb USING to_jsonb(digest)",
    "ended as jsonb": ("ALTER TABLE ll_artifacts ALTER COLUMN ended DROP DEFAULT;"
                       " ALTER TABLE ll_artifacts ALTER COLUMN ended TYPE jsonb USING to_jsonb(ended)"),
}


@pytest.mark.postgres
@pytest.mark.parametrize("what", sorted(TAMPERED))
def test_the_bulk_check_accepts_an_intact_range_and_no_tampered_one(postgres_url, what):
    """The reader folds the index into the text msgspec encodes from the bodies (odd paths
    included), so a worker takes the bulk check on an intact ledger and reaches the row-by-row
    check's answer; after any change of an index row the texts differ, and the row-by-row
    check, which decides, refuses the range."""
    import psycopg

    with open_backend(postgres_url) as writer:
        writer.append(odd_blocks())
    bulk, rows = bulk_and_rows(postgres_url)
    assert bulk is not None and rows is not None and tuple(bulk) == tuple(vars(rows).values())
    assert bulk.compared == 30 and bulk.artifacts > 200
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(TAMPERED[what])
    assert bulk_and_rows(postgres_url) == (None, None)


@pytest.mark.postgres
def test_the_bulk_check_orders_paths_by_byte_whatever_the_columns_collation(postgres_url):
    import psycopg

    with open_backend(postgres_url) as writer:
        writer.append(odd_blocks())
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'").fetchall():
            pytest.skip("this PostgreSQL has no ICU collations")
        conn.execute('ALTER TABLE ll_artifacts ALTER COLUMN path TYPE text COLLATE "und-x-icu"')
        # In that language's order "/d/a0" < "/d/Z0" (byte order: "Z" first), as a body does not.
        assert conn.execute("SELECT '/d/a0' < '/d/Z0' COLLATE \"und-x-icu\"").fetchone() == (True,)
    bulk, rows = bulk_and_rows(postgres_url)
    assert bulk is not None and tuple(bulk) == tuple(vars(rows).values())


@pytest.mark.postgres
def test_verify_lineage_audits_postgres_through_the_workers(postgres_url, tmp_path):
    """The CLI's full audit on PostgreSQL through worker processes: clean when intact, exit 1
    naming IndexTampered after one index row is rewritten."""
    import psycopg

    with open_backend(postgres_url) as writer:
        writer.append(odd_blocks())
    assert bulk_and_rows(postgres_url)[0] is not None  # what each worker's range takes
    env = {**PARALLEL, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    result = run_cli("--ledger", postgres_url, cwd=tmp_path, env=env, program="verify-lineage")
    assert result.returncode == 0 and "30 records" in result.stdout, result
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(TAMPERED["digest"])
    result = run_cli("--ledger", postgres_url, cwd=tmp_path, env=env, program="verify-lineage")
    assert result.returncode == 1 and "IndexTampered" in result.stdout, result


def test_a_server_that_never_answers_is_an_error_not_a_hang(tmp_path):
    """A host that takes the connection and never answers (hung, or a proxy with nothing
    behind it): libpq waits for ever unless told otherwise, and a plugin's pre-run check hung
    the workflow with it. The reader and the writer now give up after PG_CONNECT_TIMEOUT_S
    (a URL's own ``connect_timeout`` wins): a clear error and exit status 2."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    taken: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                taken.append(silent.accept()[0])  # and never a byte back
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"postgresql://u:s3cret@127.0.0.1:{silent.getsockname()[1]}/x"
        result = run_cli("log", "--ledger", url, cwd=tmp_path)  # (a hang: killed at 120 s, an error)
    finally:
        stop.set()
        thread.join()
        for conn in taken:
            conn.close()
        silent.close()
    assert taken, "the command never connected"
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "timeout" in result.stderr.lower() and "s3cret" not in result.stdout + result.stderr
