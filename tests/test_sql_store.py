"""The SQL store beyond the conformance suite: schema 3 and the migration from schema 2,
reads that create and write nothing (read-only ledgers with records only in their WAL),
private file modes, the audit's index stream and paged look-ups, and passwords kept out
of every message (against a real PostgreSQL server with password authentication)."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import traceback
import urllib.parse

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import BackendUnavailable, ConfigError, NoLedger, build_block
from lineage_ledger.backends import IndexRow, open_backend, redact
from lineage_ledger.backends import _sql_reads as sql_reads
from lineage_ledger.backends import _sqlite_files as sqlite_files
from lineage_ledger.backends import sql as sqlmod
from lineage_ledger.backends.sql import SQLBackend
from tests.backend_conformance import chain_of
from tests.support import postgres
from tests.support.factories import artifact, make_record, make_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = os.geteuid() == 0


def expected_rows(blocks) -> list[IndexRow]:
    """What index_rows must give for ``blocks`` (chain_of's: block ids carry the time they
    were built, so a test builds its blocks once)."""
    rows, seq = [], 0
    for block in blocks:
        for pos, record in enumerate(block.records):
            rows.append(IndexRow(seq, record.id, block.height, pos, record.run_id,
                                 tuple(sorted(record.inputs)), tuple(sorted(record.outputs))))
            seq += 1
    return rows


def record_ids(backend) -> list[str]:
    return [r.id for b in backend.blocks() for r in b.records]


# -- schema 2, exactly as `git show cfbee88^:ledger_backends/sql.py` created it -----------------
_INT64 = sa.BigInteger().with_variant(sa.Integer, "sqlite")
V2 = sa.MetaData()
sa.Table("ll_meta", V2, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text, nullable=False))
sa.Table(
    "ll_blocks", V2,
    sa.Column("height", _INT64, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("header", sa.LargeBinary, nullable=False),
)
sa.Table(
    "ll_records", V2,
    sa.Column("seq", _INT64, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("height", sa.BigInteger, nullable=False),
    sa.Column("pos", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Index("ll_records_run", "run_id"),
)
sa.Table(
    "ll_artifacts", V2,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("role", sa.SmallInteger, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Index("ll_artifacts_digest", "digest"),
    sqlite_with_rowid=False,
)


def engine_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def build_schema_2(url: str, blocks) -> list[tuple]:
    """A schema-2 ledger holding ``blocks``, written as schema 2's append did;
    returns its artifact rows (seq, role, path, digest)."""
    engine = sa.create_engine(engine_url(url))
    artifacts = []
    with engine.begin() as conn:
        V2.create_all(conn)
        conn.execute(V2.tables["ll_meta"].insert().values(key="schema", value="2"))
        seq = 0
        for block in blocks:
            conn.execute(V2.tables["ll_blocks"].insert().values(
                height=block.height, id=block.id, first_seq=seq, count=len(block.records), header=block.header))
            for pos, record in enumerate(block.records):
                conn.execute(V2.tables["ll_records"].insert().values(
                    seq=seq, id=record.id, height=block.height, pos=pos, run_id=record.run_id, body=record.body))
                for role, pairs in ((0, record.inputs), (1, record.outputs)):
                    for path, digest in pairs:
                        conn.execute(V2.tables["ll_artifacts"].insert().values(
                            path=path, role=role, seq=seq, digest=digest))
                        artifacts.append((seq, role, path, digest))
                seq += 1
    engine.dispose()
    return sorted(artifacts)


def stored_artifacts(url: str) -> list[tuple]:
    engine = sa.create_engine(engine_url(url))
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT seq, role, path, digest FROM ll_artifacts").all()
        meta = dict(conn.exec_driver_sql("SELECT key, value FROM ll_meta").all())
    engine.dispose()
    return sorted(tuple(r) for r in rows), meta


def mixed_records():
    """Records sharing inputs, one with two outputs of the same content (same digest)."""
    records = make_records(20, run_id="a") + make_records(6, run_id="b", start=20)
    records.append(make_record(99, run_id="b", inputs=[artifact("/data/in-1", "in1")],
                               outputs=[artifact("/data/twin-1", "same"), artifact("/data/twin-2", "same"),
                                        artifact("/data/zürich", "ü"), artifact("/data/Zeta", "z")]))
    return records


def check_migrated(url: str, blocks, old_artifacts) -> None:
    with open_backend(url, create=False) as backend:
        assert backend.origin.startswith("lineage-ledger:") and len(backend.origin) == 15 + 32
        assert [(b.height, b.id, b.header, [(r.id, r.body) for r in b.records]) for b in backend.blocks()] == [
            (b.height, b.id, b.header, [(r.id, r.body) for r in b.records]) for b in blocks
        ]
        assert list(backend.index_rows(10**9)) == expected_rows(blocks)
        assert [f.record.id for f in backend.find("in", path="/data/in-1")] == [
            r.id for b in blocks for r in b.records if any(p == "/data/in-1" for p, _ in r.inputs)
        ]
        for run in {r.run_id for b in blocks for r in b.records}:
            assert [e.record.id for e in backend.by_run(run)] == [
                r.id for b in blocks for r in b.records if r.run_id == run
            ]
    rows, meta = stored_artifacts(url)
    assert rows == old_artifacts
    assert meta["schema"] == "3"


# -- schema 3 -------------------------------------------------------------------------------
def test_schema_3_layout_and_origin(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    with SQLBackend(url) as backend:
        origin = backend.origin
    conn = sqlite3.connect(tmp_path / "l.db")
    table_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'll_artifacts'").fetchone()[0]
    assert "PRIMARY KEY (seq, role, path)" in table_sql and "WITHOUT ROWID" in table_sql
    indexes = {name: [c[2] for c in conn.execute(f"PRAGMA index_info({name})")]
               for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                           "AND tbl_name = 'll_artifacts' AND sql IS NOT NULL")}
    assert indexes == {"ll_artifacts_path": ["path", "role", "seq"], "ll_artifacts_digest": ["digest", "role", "seq"],
                       "ll_artifacts_latest": ["path", "role", "ended", "seq"]}
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT seq FROM ll_artifacts WHERE role = 0 AND path = 'x' ORDER BY seq"))
    assert "ll_artifacts_path" in plan and "TEMP B-TREE" not in plan
    conn.close()
    assert origin.startswith("lineage-ledger:") and int(origin.split(":")[1], 16) >= 0
    with SQLBackend(url) as again, SQLBackend(url, create=False) as reader:
        assert again.origin == reader.origin == origin
    copy = tmp_path / "copy.db"
    shutil.copy(tmp_path / "l.db", copy)
    with SQLBackend(f"sqlite:///{copy}") as copied:
        assert copied.origin == origin and copied.identity != again.identity
    with SQLBackend(f"sqlite:///{tmp_path}/other.db") as other:
        assert other.origin != origin


def test_memory_defaults():
    backend = open_backend("memory://sql-store-defaults", create=False)  # memory ignores create
    records = mixed_records()
    backend.append(chain_of(records, 7))
    assert backend.index_rows(100) is None
    assert backend.origin == backend.identity
    found = backend.find("in", path="/data/in-1")
    assert backend.find_page("in", path="/data/in-1", offset=1, limit=2) == found[1:3]
    assert backend.count_found("in", path="/data/in-1") == len(found)


# -- migration ------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return request.getfixturevalue("postgres_url")


def test_schema_2_migrates_on_a_writable_open(any_url, caplog):
    records = mixed_records()
    blocks = chain_of(records, 7)
    old = build_schema_2(any_url, blocks)
    with pytest.raises(ConfigError, match="lineage-ledger migrate --ledger"):
        SQLBackend(any_url, create=False)
    assert stored_artifacts(any_url)[1] == {"schema": "2"}  # a read changed nothing
    with caplog.at_level(logging.INFO, logger="lineage_ledger.backends.sql"):
        backend = SQLBackend(any_url)
    migrated = [r for r in caplog.records if r.name == "lineage_ledger.backends.sql"]
    assert len(migrated) == 1 and migrated[0].levelno == logging.INFO
    assert "schema 2 to 3" in migrated[0].getMessage()
    assert backend.migrated_from == "2" and backend.migrate() == "2"
    origin = backend.origin
    backend.close()
    check_migrated(any_url, blocks, old)
    with SQLBackend(any_url) as again:  # once only: the origin stays
        assert again.migrate() is None and again.origin == origin
        head = again.head()
        again.append([build_block([r.stored() for r in make_records(3, run_id="c", start=200)], head).stored()])
        assert again.record_count() == len(records) + 3


def test_migrate_explicitly_as_the_cli_does(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    blocks = chain_of(make_records(30), 7)
    old = build_schema_2(url, blocks)
    with open_backend(url) as backend:
        assert backend.migrate()
    check_migrated(url, blocks, old)


MIGRATOR = textwrap.dedent("""
    import sys
    from lineage_ledger.backends import open_backend
    with open_backend(sys.argv[1]) as backend:
        print(backend.origin, backend.migrated_from)
""")


def test_processes_opening_a_schema_2_ledger_at_once_migrate_it_once(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    blocks = chain_of(make_records(40), 7)
    old = build_schema_2(url, blocks)
    openers = [subprocess.Popen([sys.executable, "-c", MIGRATOR, url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
               for _ in range(4)]
    outputs = [o.communicate(timeout=120)[0].split() for o in openers]
    assert [o.returncode for o in openers] == [0] * 4
    assert len({origin for origin, _ in outputs}) == 1
    assert sorted(migrated for _, migrated in outputs) == ["2", "None", "None", "None"]
    check_migrated(url, blocks, old)


# -- reads that create nothing ----------------------------------------------------------------
def test_missing_or_empty_ledger_is_no_ledger(tmp_path):
    missing = tmp_path / "nowhere" / "ledger.db"
    with pytest.raises(NoLedger, match=f"no ledger at {missing}"):
        open_backend(f"sqlite:///{missing}", create=False)
    assert not (tmp_path / "nowhere").exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(NoLedger, match=f"no ledger at {empty}"):
        open_backend(str(empty), create=False)
    assert sorted(os.listdir(tmp_path)) == ["empty.db"] and empty.stat().st_size == 0
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ConfigError, match="not a lineage ledger"):
        open_backend(str(foreign), create=False)


def test_read_only_open_writes_nothing(tmp_path):
    path = tmp_path / "ledger.db"
    with SQLBackend(str(path)) as backend:
        backend.append(chain_of(make_records(10), 5))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    conn.close()
    before = path.read_bytes()
    with SQLBackend(str(path), create=False) as reader:
        assert reader.read_only and reader.record_count() == 10
        with pytest.raises(BackendUnavailable, match="reading only"):
            reader.append(chain_of(make_records(12), 5)[2:])
        with pytest.raises(ConfigError):
            reader.migrate()
    assert path.read_bytes() == before  # still in rollback mode: no journal_mode=WAL was issued
    assert before[18:20] == b"\x01\x01"


NO_SQLALCHEMY = textwrap.dedent("""
    import json, sys
    from lineage_ledger.backends import open_backend
    with open_backend(sys.argv[1], create=False) as backend:
        head = backend.head()
        found = backend.find("in", path="/data/in-1")
        prefix = backend.by_id_prefix(found[0].record.id[:6])
        latest = backend.find_latest("out", "/data/twin-1")
        print(json.dumps({"type": type(backend).__name__, "height": head.height, "found": len(found),
                          "prefix": len(prefix), "latest": latest is not None,
                          "sqlalchemy": sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy")}))
""")


def test_a_read_only_process_never_imports_sqlalchemy(tmp_path):
    """What read commands start: SQLAlchemy's import alone took most of their time."""
    path = tmp_path / "ledger.db"
    with SQLBackend(str(path)) as backend:
        backend.append(blocks := chain_of(mixed_records(), 7))
        expected = len(backend.find("in", path="/data/in-1"))
    for url in (str(path), f"sqlite:///{path}"):
        result = subprocess.run([sys.executable, "-c", NO_SQLALCHEMY, url], capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen == {"type": "SQLiteReader", "height": blocks[-1].height, "found": expected, "prefix": 1,
                        "latest": True, "sqlalchemy": []}


@pytest.fixture
def wal_only(tmp_path):
    """(directory, blocks): a copy of a ledger and its -wal, where the last records are
    committed only in the WAL (the writer's checkpoints were off, and it was still open)."""
    live = tmp_path / "live"
    live.mkdir()
    url = f"sqlite:///{live}/ledger.db"
    records = make_records(60)
    blocks = chain_of(records, 10)
    with SQLBackend(url) as backend:
        backend.append(blocks[:2])
    holder = sqlite3.connect(live / "ledger.db")  # keeps the WAL from being checkpointed at close
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    holder.execute("SELECT count(*) FROM ll_records").fetchone()
    writer = SQLBackend(url)
    writer._engine.dispose()
    sa.event.listen(writer._engine, "connect",
                    lambda dbapi, _r: dbapi.execute("PRAGMA wal_autocheckpoint = 0"))
    writer.append(blocks[2:])
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(live / "ledger.db", copy / "ledger.db")
    shutil.copy(live / "ledger.db-wal", copy / "ledger.db-wal")
    writer.close()
    holder.close()
    # The bug this guards against: the database file alone holds only part of the ledger.
    bare = sqlite3.connect(f"file:{copy}/ledger.db?mode=ro&immutable=1", uri=True)
    assert bare.execute("SELECT count(*) FROM ll_records").fetchone()[0] == 20
    bare.close()
    yield copy, blocks
    os.chmod(copy, 0o755)


def make_read_only(directory) -> list[str]:
    for name in os.listdir(directory):
        os.chmod(directory / name, 0o444)
    os.chmod(directory, 0o555)
    return sorted(os.listdir(directory))


def test_read_only_copy_with_wal_reads_every_record(wal_only):
    directory, blocks = wal_only
    expected_ids = [r.id for b in blocks for r in b.records]
    listing = make_read_only(directory)
    url = f"sqlite:///{directory}/ledger.db"
    for create in (False, True):  # a writable open of a file it may not write reads it too
        with open_backend(url, create=create) as backend:
            assert backend.read_only  # root too: the modes say read-only
            assert record_ids(backend) == expected_ids
            assert backend.record_count() == 60
            assert backend.read_strategy == "copy"
            assert sorted(os.listdir(directory)) == listing


def test_the_private_copy_explicitly(wal_only, monkeypatch):
    directory, blocks = wal_only
    expected_ids = [r.id for b in blocks for r in b.records]
    listing = make_read_only(directory)
    refused = sqlite3.OperationalError("unable to open database file")
    refused.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN
    monkeypatch.setattr(sqlite_files, "_probe", lambda uri: refused)
    backend = SQLBackend(f"sqlite:///{directory}/ledger.db", create=False)
    assert backend.read_strategy == "copy"
    private = backend._copy_dir
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(os.path.join(private, n)).st_mode) for n in ("ledger.db", "ledger.db-wal")} == {0o600}
    assert record_ids(backend) == expected_ids
    assert list(backend.index_rows(10**9)) == expected_rows(blocks)
    backend.close()
    assert not os.path.exists(private)
    assert sorted(os.listdir(directory)) == listing


READER = textwrap.dedent("""
    import json, os, sys
    from lineage_ledger.backends import open_backend
    url, create = sys.argv[1], sys.argv[2] == "1"
    with open_backend(url, create=create) as backend:
        ids = [r.id for b in backend.blocks() for r in b.records]
        print(json.dumps({"strategy": backend.read_strategy, "ids": ids, "rows": len(list(backend.index_rows(10**9)))}))
""")


def read_as_unprivileged(url: str, create: bool) -> dict:
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if IS_ROOT else []
    result = subprocess.run([*prefix, sys.executable, "-c", READER, url, "1" if create else "0"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    if result.returncode and "setpriv" in result.stderr:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("files", ["db+wal", "db+wal+shm", "db"])
def test_read_only_without_dac_override(tmp_path, wal_only, files):
    """What a user without write access gets (root with CAP_DAC_OVERRIDE dropped)."""
    if IS_ROOT and shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: root ignores file modes")
    directory, blocks = wal_only
    expected_ids = [r.id for b in blocks for r in b.records]
    expected = expected_ids
    if files == "db+wal+shm":
        with SQLBackend(f"sqlite:///{directory}/ledger.db", create=False) as backend:  # makes the -shm
            assert backend.read_strategy == "ro"
        assert (directory / "ledger.db-shm").exists()
        make_read_only(directory)
        stamps = {n: (directory / n).stat().st_mtime_ns for n in os.listdir(directory)}
        with SQLBackend(f"sqlite:///{directory}/ledger.db", create=False) as backend:  # as root
            assert backend.read_strategy == "ro" and record_ids(backend) == expected
        assert {n: (directory / n).stat().st_mtime_ns for n in os.listdir(directory)} == stamps
    elif files == "db":
        with SQLBackend(f"sqlite:///{directory}/ledger.db") as backend:  # checkpoints the WAL at close
            backend.record_count()
        assert not (directory / "ledger.db-wal").exists()
    listing = make_read_only(directory)
    for create in (False, True):
        seen = read_as_unprivileged(f"sqlite:///{directory}/ledger.db", create)
        assert seen["ids"] == expected and seen["rows"] == 60
        assert seen["strategy"] == {"db+wal": "copy", "db+wal+shm": "ro", "db": "immutable"}[files]
        assert sorted(os.listdir(directory)) == listing


# -- file modes -------------------------------------------------------------------------------
def test_new_ledger_files_are_private_whatever_the_umask(tmp_path):
    os.chmod(tmp_path, 0o755)
    old = os.umask(0)
    try:
        with SQLBackend(f"sqlite:///{tmp_path}/a/b/ledger.db") as backend:
            backend.append(chain_of(make_records(3), 3))
            modes = {n: stat.S_IMODE(os.stat(tmp_path / "a" / "b" / n).st_mode) for n in os.listdir(tmp_path / "a" / "b")}
    finally:
        os.umask(old)
    assert modes == {"ledger.db": 0o600, "ledger.db-wal": 0o600, "ledger.db-shm": 0o600}
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755  # not ours to change


def test_a_shared_ledger_keeps_the_mode_it_was_given(tmp_path):
    path = tmp_path / "ledger.db"
    SQLBackend(str(path)).close()
    os.chmod(path, 0o660)
    with SQLBackend(str(path)) as backend:
        backend.append(chain_of(make_records(2), 2))
    assert stat.S_IMODE(path.stat().st_mode) == 0o660


# -- the audit's index stream and paged look-ups -----------------------------------------------
def test_index_rows_report_what_a_tamperer_added(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/ledger.db"
    records = mixed_records()
    with SQLBackend(url) as backend:
        backend.append(blocks := chain_of(records, 7))
    conn = sqlite3.connect(tmp_path / "ledger.db")
    conn.execute("INSERT INTO ll_artifacts (seq, role, path, digest) VALUES (3, 2, '/odd-role', 'aa')")
    conn.execute("UPDATE ll_artifacts SET role = 2 WHERE seq = 5 AND role = 1")
    conn.execute("INSERT INTO ll_artifacts (seq, role, path, digest) VALUES (500, 1, '/orphan', 'bb')")
    conn.execute("UPDATE ll_records SET height = 'x' WHERE seq = 4")
    conn.commit()
    conn.close()
    monkeypatch.setattr(sql_reads, "_INDEX_ROWS_PER_READ", 2)
    with SQLBackend(url, create=False) as backend:
        rows = list(backend.index_rows(10**9))
        assert list(backend.index_rows(5)) == rows[:5]
    expected = expected_rows(blocks)
    assert [r.seq for r in rows] == [r.seq for r in expected] + [500]
    assert rows[3] == expected[3]  # a role no look-up reads is left out
    assert rows[4].height == -1
    assert rows[5].outputs == () and expected[5].outputs  # an output row given role 2 is missing
    assert rows[-1] == IndexRow(500, "", -1, -1, "", (), (("/orphan", "bb"),))


def test_one_record_with_more_artifacts_than_a_read(tmp_path, monkeypatch):
    many = make_record(1, inputs=[artifact(f"/in/{i:03}", str(i)) for i in range(23)],
                       outputs=[artifact(f"/out/{i:03}", str(i)) for i in range(9)])
    records = make_records(3) + [many] + make_records(3, start=10)
    with SQLBackend(f"sqlite:///{tmp_path}/l.db") as backend:
        backend.append(blocks := chain_of(records, 7))
        monkeypatch.setattr(sql_reads, "_INDEX_ROWS_PER_READ", 4)
        assert list(backend.index_rows(100)) == expected_rows(blocks)
        assert list(backend.index_rows(3)) == expected_rows(blocks)[:3]


def check_pages(backend, records) -> None:
    stored = [r.stored() for r in records]
    queries = [("in", {}), ("out", {}), ("in", {"path": "/nothing"})]
    for record in stored[:3] + stored[-1:]:
        for role, pairs in (("in", record.inputs), ("out", record.outputs)):
            for path, digest in pairs[:3]:
                queries += [(role, {"path": path}), (role, {"digest": digest}), (role, {"path": path, "digest": digest})]
    for role, keys in queries:
        found = backend.find(role, **keys)
        assert backend.count_found(role, **keys) == len(found), (role, keys)
        for offset in (0, 1, 3, len(found), len(found) + 2):
            for limit in (None, 0, 1, 2, 5):
                page = backend.find_page(role, offset=offset, limit=limit, **keys)
                assert page == (found[offset:] if limit is None else found[offset : offset + limit]), (role, keys)


def test_find_page_and_count_found_match_find(tmp_path):
    records = mixed_records()
    with SQLBackend(f"sqlite:///{tmp_path}/l.db") as backend:
        backend.append(chain_of(records, 7))
        assert len(backend.find("out", digest=artifact("x", "same").blake3)) == 1  # one record, two paths
        check_pages(backend, records)


# Normal paths, as every record names (a stored "/./a" is refused: tests/test_record_paths.py).
paths = st.text(alphabet="ab/Zé\u00fc\U0001f600_.", min_size=1, max_size=6).map(lambda s: posixpath.normpath("/" + s.lstrip("/")))
artifact_maps = st.dictionaries(paths, st.sampled_from(["1", "2", "3"]), max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(artifact_maps, artifact_maps), min_size=0, max_size=25), st.integers(1, 7),
       st.integers(0, 30))
def test_index_rows_property(tmp_path_factory, monkeypatch, shapes, chunk, stop):
    records = [make_record(i, run_id=f"r{i % 3}", inputs=[artifact(p, c) for p, c in ins.items()],
                           outputs=[artifact(p, c) for p, c in outs.items()])
               for i, (ins, outs) in enumerate(shapes)]
    directory = tmp_path_factory.mktemp("prop")
    monkeypatch.setattr(sql_reads, "_INDEX_ROWS_PER_READ", chunk)
    with SQLBackend(f"sqlite:///{directory}/l.db") as backend:
        backend.append(blocks := chain_of(records, 7))
        expected = expected_rows(blocks)
        assert list(backend.index_rows(10**9)) == expected
        assert list(backend.index_rows(stop)) == expected[:stop]
        if records:
            check_pages(backend, records)


# -- PostgreSQL -------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_index_rows_pages_and_read_only(postgres_url, monkeypatch):
    with pytest.raises(NoLedger, match="no ledger at"):
        open_backend(postgres_url, create=False)
    records = mixed_records() + [make_record(500, inputs=[artifact(p, p) for p in
                                                         ["/b", "/B", "/a", "/é", "/z", "/\U0001f600", "/_"]])]
    with open_backend(postgres_url) as backend:
        backend.append(blocks := chain_of(records, 7))
        origin = backend.origin
    monkeypatch.setattr(sql_reads, "_INDEX_ROWS_PER_READ", 3)
    with open_backend(postgres_url, create=False) as reader:
        assert reader.read_only and reader.origin == origin
        assert list(reader.index_rows(10**9)) == expected_rows(blocks)  # paths in code point order
        check_pages(reader, records)
        with pytest.raises(BackendUnavailable):
            reader.append([build_block([r.stored() for r in make_records(2, start=900)], reader.head()).stored()])


PASSWORD = "p@ss:w/rd%?#&= 'x\"\u00fc"
WRONG = "Wr0ng:p@ss/%40+x"


@pytest.fixture(scope="module")
def password_server():
    """A server of its own (it is stopped by a test) that asks role 'secretive' for a password."""
    with postgres.password_server(PASSWORD) as server:
        yield server


def secret_url(server, password: str) -> str:
    return f"postgresql://secretive:{urllib.parse.quote(password, safe='')}@127.0.0.1:{server.port}/secretdb"


def assert_no_secret(error: BaseException, password: str, caplog) -> None:
    spellings = {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)}
    shown = "".join(traceback.format_exception(error)) + repr(error)
    shown += "".join(r.getMessage() for r in caplog.records)
    for spelling in spellings:
        assert spelling not in shown, shown


@pytest.mark.postgres
def test_postgres_password_never_shown(password_server, caplog):
    caplog.set_level(logging.DEBUG)
    good = secret_url(password_server, PASSWORD)
    with open_backend(good) as backend:  # the special characters survive the URL
        backend.append(chain_of(make_records(5), 5))
        assert "***" in repr(backend) and PASSWORD not in repr(backend)
    with pytest.raises(BackendUnavailable) as wrong:
        open_backend(secret_url(password_server, WRONG))
    assert "password authentication failed" in str(wrong.value) and "secretive:***@" in str(wrong.value)
    assert_no_secret(wrong.value, WRONG, caplog)
    backend = open_backend(good, create=False)
    password_server.stop(immediate=True)
    try:
        with pytest.raises(BackendUnavailable) as stopped:
            backend.head()
        assert_no_secret(stopped.value, PASSWORD, caplog)
        with pytest.raises(BackendUnavailable) as unreachable:
            open_backend(good)
        assert "secretive:***@127.0.0.1" in str(unreachable.value)
        assert_no_secret(unreachable.value, PASSWORD, caplog)
    finally:
        backend.close()
        password_server.start()
    with open_backend(good, create=False) as again:
        assert again.record_count() == 5


@pytest.mark.postgres
def test_the_reader_opens_what_the_writer_opens(password_server):
    """A password with a raw slash and space in the URL, as SQLAlchemy reads it (libpq's own
    URI parser reads another host and database from it)."""
    raw = f"postgresql://secretive:{urllib.parse.quote(PASSWORD, safe='/ ')}@127.0.0.1:{password_server.port}/secretdb"
    assert "w/rd" in raw and "%3D %27" in raw  # a raw slash and a raw space
    with open_backend(raw) as writer:
        count = writer.record_count()
    with open_backend(raw, create=False) as reader:
        assert type(reader).__name__ == "PostgresReader" and reader.record_count() == count


def test_driver_text_that_quotes_the_dsn_is_redacted():
    url = f"postgresql://bob:{urllib.parse.quote(PASSWORD, safe='')}@db.example:5432/ledger"
    driver_error = Exception(f"could not connect with {url} (password={PASSWORD}, user bob:{PASSWORD}@db)")
    with pytest.raises(BackendUnavailable) as raised:
        with sqlmod._translated("opening the ledger", url):
            raise sa.exc.OperationalError("SELECT 1", {}, driver_error)
    text = "".join(traceback.format_exception(raised.value))
    assert PASSWORD not in text and urllib.parse.quote(PASSWORD, safe="") not in text
    assert "bob:***@db.example:5432/ledger" in str(raised.value)
    with pytest.raises(ConfigError) as malformed:
        SQLBackend(f"postgresql://bob:{PASSWORD}@db.example:notaport/x")
    assert PASSWORD not in "".join(traceback.format_exception(malformed.value))


@pytest.mark.parametrize("text, url, shown", [
    ("postgresql://u:s3cret@h/db failed", "postgresql://u:s3cret@h/db", "postgresql://u:***@h/db failed"),
    ("auth s3cr%t / s3cr%25t", "postgresql://u:s3cr%25t@h/db", "auth *** / ***"),
    ("u:other@h and password='a b' and password=x", "postgresql://u:x@h/db", "u:***@h and password=*** and password=***"),
    ("no password here", "postgresql://u@h/db", "no password here"),
    ("sqlite:///x.db", "sqlite:///x.db", "sqlite:///x.db"),
])
def test_redact(text, url, shown):
    assert redact(text, url) == shown
