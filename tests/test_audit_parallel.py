"""The audit spread over worker processes gives the sequential audit's answer: the same tree
head on an intact ledger, and on a tampered one the same error (it falls back to the
sequential audit, whose message names the problem)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import LedgerError, open_ledger
from lineage_ledger._log import audit_bulk
from lineage_ledger._log import audit_parallel as parallel
from lineage_ledger._log.names import BUCKETS
from lineage_ledger.backends._sqlite_reader import SQLiteReader
from tests.conftest import run_cli
from tests.support.audit import watch_workers
from tests.support.factories import artifact, make_record

PARALLEL = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "8", "LINEAGE_AUDIT_WORKERS": "2"}


def _build(db) -> str:
    """Ten blocks of four task-shaped records: five ranges of eight records for the workers."""
    url = f"sqlite:///{db}"
    previous = artifact("/data/raw", "raw")
    records = []
    for i in range(40):
        out = artifact(f"/data/step-{i}", f"out{i}")
        records.append(make_record(i, run_id=f"run-{i % 3}", inputs=[artifact("/data/ref", "ref"), previous],
                                   outputs=[out]))
        previous = out
    with open_ledger(url, spool=str(db.parent / "spool")) as ledger:
        for start in range(0, 40, 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
    return url


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("pristine")
    _build(base / "ledger.db")
    return base / "ledger.db"


def _audit(db, monkeypatch, *, workers: bool, state, bulk_here: bool = False):
    """(tree root, index rows) or the error, with a fresh remembered state each time: by the
    workers, by the sequential audit (``workers=False``), or by the workers' bulk check run
    in this process, in ranges of 8 records (``bulk_here``, what a machine with one core or
    a small ledger gets)."""
    for name, value in PARALLEL.items():
        if workers or bulk_here:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    if workers or bulk_here:
        monkeypatch.delenv("LINEAGE_AUDIT_BULK", raising=False)
    else:
        monkeypatch.setenv("LINEAGE_AUDIT_BULK", "0")
    if not workers:
        monkeypatch.setenv("LINEAGE_AUDIT_WORKERS", "1")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    try:
        with open_ledger(f"sqlite:///{db}", read_only=True) as ledger:
            result = ledger.audit()
        return result.head.root, result.index_rows, result.head.size
    except LedgerError as err:
        return type(err).__name__, str(err)


def test_the_plan_covers_every_block_once(pristine):
    with open_ledger(f"sqlite:///{pristine}", read_only=True) as ledger:
        os.environ.update(PARALLEL)
        try:
            tasks = parallel.plan(ledger.backend, 40, 10)
        finally:
            for name in PARALLEL:
                os.environ.pop(name)
    assert tasks is not None and len(tasks) == 5
    assert [t.start for t in tasks] == [0, 2, 4, 6, 8] and tasks[-1].stop == 10
    assert [t.first_index for t in tasks] == [0, 8, 16, 24, 32]


def test_workers_build_the_same_tree(pristine, tmp_path, monkeypatch):
    here = _audit(pristine, monkeypatch, workers=False, state=tmp_path / "a")
    there = _audit(pristine, monkeypatch, workers=True, state=tmp_path / "b")
    assert _audit(pristine, monkeypatch, workers=False, bulk_here=True, state=tmp_path / "c") == here
    assert here == there and here[2] == 40 and here[1] == 40


def test_the_workers_really_answer(pristine):
    """The control for the equality above: the ranges come from the workers, not from a
    silent fall back to the sequential audit."""
    with open_ledger(f"sqlite:///{pristine}", read_only=True) as ledger:
        tasks = [parallel.Task(0, 2, 0), parallel.Task(2, 10, 8)]
        os.environ["LINEAGE_AUDIT_WORKERS"] = "2"
        try:
            answers = list(parallel.results(ledger.backend, tasks, files=False))
        finally:
            os.environ.pop("LINEAGE_AUDIT_WORKERS")
    assert [r is not None for _, r in answers] == [True, True]
    first, second = answers[0][1], answers[1][1]
    assert first.first_prev is None and second.first_prev == first.block_ids[-1]
    assert sum(first.counts) == 8 and sum(second.counts) == 32 and second.compared == 32


def test_the_bulk_check_in_this_process_really_answers(pristine):
    """The control for the in-process equality: with no workers, the ranges are checked here
    by the bulk check and all of them compare equal on an intact ledger (not a silent fall
    back to the sequential audit)."""
    with open_ledger(f"sqlite:///{pristine}", read_only=True) as ledger:
        os.environ.update(PARALLEL)
        try:
            tasks = parallel.plan_here(ledger.backend, 10)
            assert tasks is not None and len(tasks) == 5
            answers = list(parallel.results_here(ledger.backend, tasks, files=False))
        finally:
            for name in PARALLEL:
                os.environ.pop(name)
    assert [r is not None and r.compared for _, r in answers] == [8] * 5
    assert [r.first_prev for _, r in answers][1:] == [r.block_ids[-1] for _, r in answers][:-1]


@pytest.mark.parametrize(("statement", "what"), [
    ("UPDATE ll_artifacts SET digest = ? WHERE seq = 21 AND role = 1", "an index row in a middle range"),
    ("UPDATE ll_records SET run_id = 'run-9' WHERE seq = 39", "the last record's run id"),
    ("UPDATE ll_records SET body = CAST(? AS BLOB) WHERE seq = 17", "a record body"),
    ("UPDATE ll_blocks SET count = count + 1 WHERE height = 3", "a block's count (the plan's hint)"),
    ("DELETE FROM ll_blocks WHERE height = 4", "a block at a range boundary"),
    ("DELETE FROM ll_artifacts WHERE seq = 8 AND role = 0 AND path = '/data/ref'", "a deleted index row"),
    ("UPDATE ll_blocks SET id = ? WHERE height = 5", "a block id (the link the next range checks)"),
])
def test_a_tampered_ledger_fails_with_the_sequential_error(pristine, tmp_path, monkeypatch, statement, what):
    db = tmp_path / "ledger.db"
    shutil.copy(pristine, db)
    with sqlite3.connect(db) as conn:
        args = ("ab" * 32,) if "?" in statement else ()
        if "body" in statement:
            args = ('{"not": "the record"}',)
        assert conn.execute(statement, args).rowcount == 1, what
    assert not _bulk_accepts(db), what
    here = _audit(db, monkeypatch, workers=False, state=tmp_path / "a")
    there = _audit(db, monkeypatch, workers=True, state=tmp_path / "b")
    assert _audit(db, monkeypatch, workers=False, bulk_here=True, state=tmp_path / "c") == here
    assert len(here) == 2, (what, here)  # the sequential audit fails ...
    assert there == here, what  # ... and the parallel one with the same error


# Rows no record names: the workers count the rows of their own ranges (all roles), the
# parent only those below sequence number 0 (it once counted all of them, a 0.4-0.6 s scan
# at 1M records that also filled its 64 MiB page cache at the end of the audit).
@pytest.mark.parametrize(("statement", "what", "message"), [
    ("INSERT INTO ll_artifacts SELECT '/orphan', 2, seq, digest, ended FROM ll_artifacts"
     " WHERE seq = 21 AND role = 1", "a row of a role that is neither in nor out, in a middle range",
     "(block 5, position 1) disagrees with the record"),
    ("INSERT INTO ll_artifacts SELECT '/orphan', 1, -1, digest, ended FROM ll_artifacts"
     " WHERE seq = 21 AND role = 1", "a row below the first record", "rows were added or moved outside any record"),
])
def test_rows_that_no_record_names_fail_the_parallel_audit(pristine, tmp_path, monkeypatch, statement, what,
                                                           message):
    db = tmp_path / "ledger.db"
    shutil.copy(pristine, db)
    with sqlite3.connect(db) as conn:
        assert conn.execute(statement).rowcount == 1, what
    if ", -1," not in statement:
        assert not _bulk_accepts(db), what  # its worker's count, not the parent's
    here = _audit(db, monkeypatch, workers=False, state=tmp_path / "a")
    there = _audit(db, monkeypatch, workers=True, state=tmp_path / "b")
    assert _audit(db, monkeypatch, workers=False, bulk_here=True, state=tmp_path / "c") == here
    assert here[0] == "IndexTampered" and message in here[1], (what, here)
    assert there == here, what


# A record stored twice: possible only once the table's UNIQUE (id) is gone (a file rebuilt
# by someone with write access), then appended in a block of its own with a valid chain.
_WITHOUT_UNIQUE_IDS = """ALTER TABLE ll_records RENAME TO old_records;
CREATE TABLE ll_records (seq INTEGER NOT NULL PRIMARY KEY, id VARCHAR(64) NOT NULL, height BIGINT NOT NULL,
  pos INTEGER NOT NULL, run_id TEXT NOT NULL, body BLOB NOT NULL);
INSERT INTO ll_records SELECT * FROM old_records;
DROP TABLE old_records;
CREATE INDEX ll_records_id ON ll_records (id);
CREATE INDEX ll_records_run ON ll_records (run_id);"""


@pytest.mark.parametrize("dedup", ["bloom", "table"])
@pytest.mark.parametrize("copy", [5, 37])
def test_a_record_stored_twice_fails_both_audits(pristine, tmp_path, monkeypatch, copy, dedup):
    """The duplicate check finds a record appended a second time, in another worker's range
    or in the same one: the Bloom filter (fed from each worker's leaves in one buffer) and the
    exact look-up of its suspect, or, where the ledger is bigger than the filter is made for
    (``LINEAGE_AUDIT_BLOOM_MAX``), the scratch table sorted on disk."""
    from lineage_ledger import build_block
    from lineage_ledger.backends import open_backend

    if dedup == "table":
        monkeypatch.setenv("LINEAGE_AUDIT_BLOOM_MAX", "0")

    db = tmp_path / "ledger.db"
    shutil.copy(pristine, db)
    with sqlite3.connect(db) as conn:
        conn.executescript(_WITHOUT_UNIQUE_IDS)
    previous = artifact(f"/data/step-{copy - 1}", f"out{copy - 1}")
    again = make_record(copy, run_id=f"run-{copy % 3}", inputs=[artifact("/data/ref", "ref"), previous],
                        outputs=[artifact(f"/data/step-{copy}", f"out{copy}")]).stored()
    with open_backend(f"sqlite:///{db}") as backend:
        assert len(backend.by_id_prefix(again.id, limit=2)) == 1  # the same record as stored
        backend.append([build_block([again], backend.head()).stored()])
        assert len(backend.by_id_prefix(again.id, limit=2)) == 2
    here = _audit(db, monkeypatch, workers=False, state=tmp_path / "a")
    there = _audit(db, monkeypatch, workers=True, state=tmp_path / "b")
    assert _audit(db, monkeypatch, workers=False, bulk_here=True, state=tmp_path / "c") == here
    assert here == ("ChainBroken", f"record {again.id[:16]} appears twice in the ledger"), here
    assert there == here


def _bulk_accepts(db, start: int = 0, stop: int = 10, first: int = 0) -> bool:
    """Whether the workers' bulk check (not the row-by-row one) accepts blocks start..stop."""
    reader = SQLiteReader(f"sqlite:///{db}")
    try:
        return audit_bulk.audit_range(reader, start, stop, first, False) is not None
    except Exception:  # noqa: BLE001 - a refusal, as the worker takes it (audit_parallel.audit_range)
        return False
    finally:
        reader.close()


@pytest.mark.parametrize("chunk", [audit_bulk.CHUNK_RECORDS, 6])
def test_the_bulk_check_gives_the_row_by_row_answer(pristine, monkeypatch, chunk):
    """The control for every refusal below: on an intact ledger the bulk check answers, with
    the same leaves, ids and counts as the check of each row (in one chunk, and in chunks of
    two blocks)."""
    monkeypatch.setattr(audit_bulk, "CHUNK_RECORDS", chunk)
    reader = SQLiteReader(f"sqlite:///{pristine}")
    try:
        for task in (parallel.Task(0, 10, 0), parallel.Task(3, 7, 12)):
            bulk = audit_bulk.audit_range(reader, task.start, task.stop, task.first_index, True)
            assert bulk is not None and parallel.RangeResult(*bulk) == parallel._audit_rows(reader, task, True)
        assert bulk.compared == 16 and bulk.artifacts == 48 and len(bulk.leaves) == 16 * 32
    finally:
        reader.close()


# Someone with write access to the file can store any value of any type in any column, and
# rows the primary key would refuse: the artifact table rebuilt without types or key.
_RETYPE = """ALTER TABLE ll_artifacts RENAME TO old_artifacts;
CREATE TABLE ll_artifacts (path, role, seq, digest, ended);
INSERT INTO ll_artifacts SELECT path, role, seq, digest, ended FROM old_artifacts ORDER BY seq, role, path;
DROP TABLE old_artifacts;"""
_ROW = "seq = 13 AND role = 0 AND path = '/data/ref'"


@pytest.mark.parametrize(("statement", "what"), [
    (f"UPDATE ll_artifacts SET role = 0.0 WHERE {_ROW}", "a role that is a real number equal to 0"),
    (f"UPDATE ll_artifacts SET role = '0' WHERE {_ROW}", "a role that is the text 0"),
    (f"UPDATE ll_artifacts SET digest = CAST(digest AS BLOB) WHERE {_ROW}", "a digest stored as bytes"),
    (f"UPDATE ll_artifacts SET ended = CAST(ended AS BLOB) WHERE {_ROW}", "an end time stored as bytes"),
    (f"UPDATE ll_artifacts SET ended = '2026-01-01T00:00:00.000000Z' WHERE {_ROW}", "one row's end time"),
    (f"UPDATE ll_artifacts SET ended = NULL WHERE {_ROW}", "an end time that is NULL (min and max skip it)"),
    (f"UPDATE ll_artifacts SET role = NULL WHERE {_ROW}", "a role that is NULL"),
    (f"UPDATE ll_artifacts SET digest = NULL WHERE {_ROW}", "a digest that is NULL"),
    (f"UPDATE ll_artifacts SET seq = '13' WHERE {_ROW}", "a sequence number stored as text"),
    (f"UPDATE ll_artifacts SET seq = 13.5 WHERE {_ROW}", "a fractional sequence number"),
    (f"INSERT INTO ll_artifacts SELECT * FROM ll_artifacts WHERE {_ROW}", "a duplicated index row"),
    (f"UPDATE ll_artifacts SET role = 2 WHERE {_ROW}", "a role that is neither in nor out"),
    (f"UPDATE ll_artifacts SET seq = 14 WHERE {_ROW}", "a row moved to the next record"),
    ("UPDATE ll_records SET height = '3' WHERE seq = 13", "a height stored as text"),
    ("UPDATE ll_records SET pos = 0 WHERE seq = 13", "a record's position"),
    ("UPDATE ll_records SET run_id = NULL WHERE seq = 13", "a run id that is NULL"),
])
def test_the_bulk_check_refuses_what_the_sequential_audit_refuses(pristine, tmp_path, monkeypatch, statement, what):
    db = tmp_path / "ledger.db"
    shutil.copy(pristine, db)
    with sqlite3.connect(db) as conn:
        conn.executescript(_RETYPE if "ll_artifacts" in statement else "")
        if "ll_records" in statement:  # NULL and text where the declared columns refuse them
            conn.executescript("PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = replace(replace(sql,"
                               " 'run_id TEXT NOT NULL', 'run_id'), 'height BIGINT NOT NULL', 'height')"
                               " WHERE name = 'll_records'; PRAGMA writable_schema = OFF;")
    with sqlite3.connect(db) as conn:
        assert conn.execute(statement).rowcount == 1, what
    assert not _bulk_accepts(db), what
    # The change is one the sequential audit refuses (the fall back from the workers to it is
    # the end-to-end test above).
    here = _audit(db, monkeypatch, workers=False, state=tmp_path / "a")
    assert len(here) == 2, (what, here)


def test_paths_that_need_escaping_take_the_bulk_check(tmp_path, monkeypatch):
    """SQLite's json_quote() and msgspec escape alike, so such paths cost no speed; and
    either way both audits agree."""
    db = tmp_path / "ledger.db"
    odd = ['/d/quo"te', "/d/back\\slash", "/d/new\nline", "/d/tab\tx", "/d/\x01ctl", "/d/ünï", "/d/😀",
           "/d/},{", "/d/\x7f"]
    records = [make_record(i, inputs=[artifact(p, p) for p in odd[i % 3 :: 2]], outputs=[artifact(odd[i % 9] + "-out", "x")])
               for i in range(24)]
    with open_ledger(f"sqlite:///{db}", spool=str(tmp_path / "spool")) as ledger:
        for start in range(0, 24, 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
    assert _bulk_accepts(db, 0, 6, 0)
    here = _audit(db, monkeypatch, workers=False, state=tmp_path / "a")
    assert here == _audit(db, monkeypatch, workers=True, state=tmp_path / "b") and here[2] == 24
    assert _audit(db, monkeypatch, workers=False, bulk_here=True, state=tmp_path / "c") == here


def test_verify_lineage_audits_through_the_workers(pristine, tmp_path):
    db = tmp_path / "ledger.db"
    shutil.copy(pristine, db)
    env = {**PARALLEL}
    result = run_cli("--ledger", f"sqlite:///{db}", cwd=tmp_path, env=env, program="verify-lineage")
    assert result.returncode == 0 and "40 records" in result.stdout, result
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ll_artifacts SET digest = ? WHERE seq = 30 AND role = 1", ("cd" * 32,))
    result = run_cli("--ledger", f"sqlite:///{db}", cwd=tmp_path, env=env, program="verify-lineage")
    assert result.returncode == 1 and "IndexTampered" in result.stdout, result


_GOOD_HEADER = json.dumps({"first_prev": None, "block_ids": [], "counts": [], "compared": 0, "artifacts": 0,
                           "outputs": [], "name_counts": [0] * BUCKETS, "hot": [], "latest": ""}).encode()


def test_a_well_formed_empty_worker_answer_is_read():
    frame = parallel._FRAME.pack(len(_GOOD_HEADER), 0, 0, 0) + _GOOD_HEADER
    assert parallel._read_result(io.BytesIO(frame)) is not None  # so the malformed cases below fail for their fault


@pytest.mark.parametrize("frame", [
    b"", b"\x05\x00\x00\x00", parallel._FRAME.pack(3, 0, 0, 0) + b"{}x",
    parallel._FRAME.pack(2, 32, 0, 0) + b"{}" + b"\x00" * 32,
    parallel._FRAME.pack(10, 0, 0, 0) + b"not json!!",
    # names whose counts do not add up to the entries sent
    parallel._FRAME.pack(len(_GOOD_HEADER), 0, 0, 5) + _GOOD_HEADER + b"12345",
    # names kept apart that are not (role, name, leaf << 2 | role, records, end time)
    *(parallel._FRAME.pack(len(header), 0, 0, 0) + header for header in (
        _GOOD_HEADER.replace(b'"hot": []', hot) for hot in (
            b'"hot": [[0, "/a", 5, 1, "t"]]', b'"hot": [[4, "/a", 4, 1, "t"]]', b'"hot": [[0, "/a", 4, 0, "t"]]',
            b'"hot": [[0, 1, 4, 1, "t"]]', b'"hot": [[0, "/a", 4, 1]]', b'"hot": [[0, "/a", 4, 1, null]]'))),
    # the latest end of its records (TreeHead.latest) that is not a text, or missing
    *(parallel._FRAME.pack(len(header), 0, 0, 0) + header for header in (
        _GOOD_HEADER.replace(b'"latest": ""', b'"latest": 5'), _GOOD_HEADER.replace(b', "latest": ""', b''))),
])
def test_a_malformed_worker_answer_is_a_refusal(frame):
    assert parallel._read_result(io.BytesIO(frame)) is None


# The three tables rebuilt without column types or NOT NULL (keys kept, so that an untouched
# copy still takes the bulk check): any value of any type can then be stored in any cell.
_LOOSE = """ALTER TABLE ll_artifacts RENAME TO old_artifacts;
CREATE TABLE ll_artifacts (path, role, seq, digest, ended, PRIMARY KEY (seq, role, path)) WITHOUT ROWID;
INSERT INTO ll_artifacts SELECT path, role, seq, digest, ended FROM old_artifacts;
DROP TABLE old_artifacts;
ALTER TABLE ll_records RENAME TO old_records;
CREATE TABLE ll_records (seq INTEGER PRIMARY KEY, id, height, pos, run_id, body);
INSERT INTO ll_records SELECT seq, id, height, pos, run_id, body FROM old_records;
DROP TABLE old_records;
ALTER TABLE ll_blocks RENAME TO old_blocks;
CREATE TABLE ll_blocks (height INTEGER PRIMARY KEY, id, first_seq, count, header);
INSERT INTO ll_blocks SELECT height, id, first_seq, count, header FROM old_blocks;
DROP TABLE old_blocks;"""
_CELLS = {"ll_artifacts": ("path", "role", "seq", "digest", "ended"),
          "ll_records": ("id", "height", "pos", "run_id", "body"),
          "ll_blocks": ("id", "first_seq", "count", "header")}


@pytest.fixture(scope="module")
def loose(pristine, tmp_path_factory):
    db = tmp_path_factory.mktemp("loose") / "ledger.db"
    shutil.copy(pristine, db)
    with sqlite3.connect(db) as conn:
        conn.executescript(_LOOSE)
    assert _bulk_accepts(db)  # the control: only the change below can make it refuse
    return db


def _changed(value, how: int, where: int):
    """Another value: one character or byte flipped, a number moved by one, or the same
    value as another type (text for a number, bytes for text, a real for an integer), NULL."""
    if how == 0:  # the same value in another type
        if isinstance(value, int):
            return [str(value), float(value)][where % 2]
        if isinstance(value, str):
            return value.encode()
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if how == 1:
        return None
    if isinstance(value, bytes | str) and value:
        i = where % len(value)
        flipped = (value[i] ^ 1) if isinstance(value, bytes) else chr(ord(value[i]) ^ 1)
        return value[:i] + (bytes([flipped]) if isinstance(value, bytes) else flipped) + value[i + 1 :]
    return value + (1 if where % 2 else -1) if isinstance(value, int | float) else "x"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(sorted(_CELLS)), row=st.integers(0, 200), column=st.integers(0, 4),
       how=st.integers(0, 3), where=st.integers(0, 10_000))
def test_the_bulk_check_accepts_only_what_the_rows_accept(loose, tmp_path_factory, table, row, column, how, where):
    """Property: any one stored cell changed (in value or only in type), the bulk check
    either refuses the range or gives exactly the row-by-row check's answer."""
    db = tmp_path_factory.mktemp("cell") / "ledger.db"
    shutil.copy(loose, db)
    name = _CELLS[table][column % len(_CELLS[table])]
    with sqlite3.connect(db) as conn:
        rowids = [r[0] for r in conn.execute(f"SELECT rowid FROM {table}" if table != "ll_artifacts" else
                                             "SELECT seq || '/' || role || '/' || path FROM ll_artifacts")]
        key = rowids[row % len(rowids)]
        where_key = "rowid = ?" if table != "ll_artifacts" else "seq || '/' || role || '/' || path = ?"
        (value,) = conn.execute(f"SELECT {name} FROM {table} WHERE {where_key}", (key,)).fetchone()  # noqa: S608
        conn.execute(f"UPDATE OR IGNORE {table} SET {name} = ? WHERE {where_key}",  # noqa: S608
                     (_changed(value, how, where), key))
    reader = SQLiteReader(f"sqlite:///{db}")
    try:
        task = parallel.Task(0, 10, 0)
        try:
            bulk = audit_bulk.audit_range(reader, 0, 10, 0, False)
        except Exception:  # noqa: BLE001 - a refusal, as the worker takes it (audit_parallel.audit_range)
            bulk = None
        assert bulk is None or parallel.RangeResult(*bulk) == parallel._audit_rows(reader, task, False), (table, name, value)
    finally:
        reader.close()


@pytest.mark.parametrize("tamper", [False, True])
def test_a_ledger_opened_for_writing_is_audited_through_a_read_only_view(pristine, tmp_path, monkeypatch, tamper):
    """A plugin's or ``repair-index``'s ledger is opened for writing, and its back-end has
    neither workers nor the bulk check: its first audit ran record by record in the calling
    process (66 s and 208 MiB at 1M records, against 19 s and 76 MiB through the workers).
    It now reads through a read-only view of the same file, with the same answer; and a
    tampered index still fails with the sequential audit's error."""
    db = tmp_path / "ledger.db"
    shutil.copy(pristine, db)
    if tamper:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE ll_artifacts SET digest = ? WHERE seq = 30 AND role = 1", ("cd" * 32,))
    expected = _audit(db, monkeypatch, workers=False, state=tmp_path / "a")
    given = watch_workers(monkeypatch)
    for name, value in PARALLEL.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LINEAGE_AUDIT_BULK", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "b"))
    with open_ledger(f"sqlite:///{db}", spool=str(tmp_path / "spool")) as ledger:
        assert not getattr(ledger.backend, "read_only", False)
        try:
            result = ledger.audit()
            answer: tuple = (result.head.root, result.index_rows, result.head.size)
        except LedgerError as err:
            answer = (type(err).__name__, str(err))
    assert answer == expected
    assert len(given) == 1 and isinstance(given[0][0], SQLiteReader)
    assert (answer[0] == "IndexTampered") == tamper


def test_a_file_every_task_reads_has_one_entry_after_the_workers_audit(tmp_path, monkeypatch):
    """Each range keeps apart the names many of its records name, and the parent joins them:
    a file that every task reads has one entry (the latest reader, and how many read it), not
    one a range, which a reader of its latest reader would prove one by one. Lists stay
    checked: a deleted row of it is still noticed."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    records = [make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref")],
                           outputs=[artifact(f"/data/out-{i}", f"out{i}")]) for i in range(120)]
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        for start in range(0, 120, 10):
            ledger.append_records([r.stored() for r in records[start : start + 10]])
    env = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "40", "LINEAGE_AUDIT_WORKERS": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    given = watch_workers(monkeypatch)
    with open_ledger(url, read_only=True) as ledger:
        ledger.audit()
        kept = ledger.verifier.store.names("/data/ref")
        assert [ranges for _backend, ranges in given] == [3]  # three ranges, by the workers
        assert [(c.role, c.records, c.leaf) for c in kept] == [(0, 120, 119)]
        assert [(c.role, c.records) for c in ledger.verifier.store.names("/data/out-7")] == [(1, 1)]
        assert len(ledger.consumers("/data/ref")) == 120
    result = run_cli("depends", "--ledger", url, "/data/ref", "--all", cwd=tmp_path,
                     env={**env, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 0 and result.stdout.count("/data/out-") == 120, result
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM ll_artifacts WHERE seq = 57 AND role = 0")
    result = run_cli("depends", "--ledger", url, "/data/ref", "--all", cwd=tmp_path,
                     env={**env, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 1 and "the index lists 119 of the 120 verified records that read /data/ref" in result.stderr, result
