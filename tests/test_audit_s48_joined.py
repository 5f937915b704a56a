"""The bulk check joins each chunk's paths and digests once (helper-152, 48th session): the
body checks (``audit_rows._check_paths``, ``audit_records._hex_joined``) join them record by
record, inputs then outputs, NUL between, and ``audit_bulk.index_columns`` compares those same
texts with SQLite's joined index columns; each record's two keys (``seq * 2 + role``) are
spelled once and repeated; SQLite counts the rows of the writer's types with ``FILTER``.

A join in another order would not be wrong, only slow: every intact range would fall back to
the row-by-row check. So the intact ledgers here have records of every shape (no artifact,
inputs only, outputs only, many, names past ASCII, hidden files) and the bulk check must take
them; the guards the joined checks rely on are each made to fail."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._log import audit_bulk, audit_records
from lineage_ledger._log.audit_rows import decode_columns
from lineage_ledger._model import BlockColumns
from lineage_ledger.backends import _sqlite_audit
from lineage_ledger.backends._sqlite_reader import SQLiteReader
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record

PARALLEL = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "8", "LINEAGE_AUDIT_WORKERS": "2"}
RECORDS = 48

_LOOSE = """ALTER TABLE ll_artifacts RENAME TO old_artifacts;
CREATE TABLE ll_artifacts (path, role, seq, digest, ended, PRIMARY KEY (seq, role, path)) WITHOUT ROWID;
INSERT INTO ll_artifacts SELECT path, role, seq, digest, ended FROM old_artifacts;
DROP TABLE old_artifacts;"""


def _shaped(i: int):
    """Record ``i`` of six shapes in turn."""
    shape = i % 6
    if shape == 0:
        return make_record(i)  # names nothing: no artifact row
    if shape == 1:
        return make_record(i, inputs=[artifact(f"/data/in-{i}", f"in{i}"), artifact("/data/ref", "ref")])
    if shape == 2:
        return make_record(i, outputs=[artifact(f"/data/out-{i}", f"out{i}")])
    if shape == 3:  # past ASCII, and a hidden file (which sends _check_paths path by path)
        return make_record(i, inputs=[artifact(f"/données/é-{i}", "é"), artifact(f"/data/.hidden-{i}", "h")],
                           outputs=[artifact(f"/data/✓-{i}", f"ok{i}")])
    if shape == 4:  # many of each
        return make_record(i, inputs=[artifact(f"/data/m/in-{i}-{k}", f"{i}.{k}") for k in range(7)],
                           outputs=[artifact(f"/data/m/out-{i}-{k}", f"o{i}.{k}") for k in range(5)])
    return make_record(i, inputs=[artifact("/data/ref", "ref")], outputs=[artifact(f"/data/z-{i}", f"z{i}")])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    db = tmp_path_factory.mktemp("shaped") / "ledger.db"
    records = [_shaped(i) for i in range(RECORDS)]
    with open_ledger(f"sqlite:///{db}", spool=str(db.parent / "spool")) as ledger:
        for start in range(0, RECORDS, 6):
            ledger.append_records([r.stored() for r in records[start : start + 6]])
    return db


def _copy(pristine, tmp_path, *, loose: bool = False):
    db = tmp_path / "ledger.db"
    shutil.copy(pristine, db)
    if loose:
        with sqlite3.connect(db) as conn:
            conn.executescript(_LOOSE)
    return db


def _bulk(db) -> audit_bulk.BulkResult | None:
    reader = SQLiteReader(f"sqlite:///{db}")
    try:
        return audit_bulk.audit_range(reader, 0, RECORDS // 6, 0, False)
    except Exception:  # noqa: BLE001 - a refusal, as the worker takes it
        return None
    finally:
        reader.close()


def _verify(db, tmp_path):
    return run_cli("--ledger", f"sqlite:///{db}", cwd=tmp_path, program="verify-lineage",
                   env={**PARALLEL, "LINEAGE_STATE_DIR": str(tmp_path / "state")})


def test_records_of_every_shape_take_the_bulk_check(pristine, tmp_path):
    """The texts the body checks joined are those index_columns joins afresh, and SQLite's
    columns equal them: the bulk check takes the whole intact range, and the audit passes."""
    db = _copy(pristine, tmp_path)
    reader = SQLiteReader(f"sqlite:///{db}")
    try:
        rows, columns, stored = reader.audit_chunk(0, RECORDS)
    finally:
        reader.close()
    ids, bodies = tuple(row[1] for row in rows), tuple(row[5] for row in rows)
    decoded = decode_columns(BlockColumns(0, "", b"", ids, bodies), 0)
    assert decoded.digests is not None and decoded.paths.count("\x00") == stored - 1
    shared = audit_bulk.index_columns(0, decoded.views, decoded.inputs, decoded.outputs, decoded.paths,
                                      decoded.digests)
    afresh = audit_bulk.index_columns(0, decoded.views, decoded.inputs, decoded.outputs)
    assert shared == afresh == columns[:-1] and columns[-1] is True
    result = _bulk(db)
    assert result is not None and result.compared == RECORDS and result.artifacts == stored
    done = _verify(db, tmp_path)
    assert done.returncode == 0 and f"{RECORDS} records" in done.stdout, done


def test_a_chunk_whose_records_name_nothing_takes_it_too(pristine, tmp_path):
    """No artifact row at all: empty texts on both sides (no separator to count)."""
    db = _copy(pristine, tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM ll_artifacts")
    reader = SQLiteReader(f"sqlite:///{db}")
    try:
        rows, columns, stored = reader.audit_chunk(0, 1)  # record 0 names nothing
    finally:
        reader.close()
    decoded = decode_columns(BlockColumns(0, "", b"", (rows[0][1],), (rows[0][5],)), 0)
    assert stored == 0 and decoded.paths == "" and decoded.digests == ""
    assert audit_bulk.index_columns(0, decoded.views, decoded.inputs, decoded.outputs, decoded.paths,
                                    decoded.digests) == columns[:-1] == (b"", "", "", "")


# Each tamper the joined texts alone would not see: the type guard must.
_TYPE_TAMPERS = [
    (["UPDATE ll_artifacts SET path = CAST(path AS BLOB) WHERE seq = 3 AND role = 0 AND path = '/données/é-3'"],
     True, "a path past ASCII of the same bytes as a BLOB"),
    (["UPDATE ll_artifacts SET digest = CAST(digest AS BLOB) WHERE seq = 4 AND role = 1 AND path = '/data/m/out-4-2'"],
     True, "a digest among many of the same bytes as a BLOB"),
    (["UPDATE ll_artifacts SET ended = CAST(ended AS BLOB) WHERE seq = 1 AND path = '/data/ref'"],
     True, "an end time of the same bytes as a BLOB"),
    (["UPDATE ll_artifacts SET role = '0' WHERE seq = 5 AND role = 0"], True, "a role of text"),
    (["UPDATE ll_artifacts SET digest = (SELECT group_concat(digest, char(0)) FROM (SELECT digest FROM ll_artifacts"
      " WHERE seq = 4 AND role = 0 ORDER BY path LIMIT 2)) WHERE seq = 4 AND role = 0 AND path = '/data/m/in-4-0'",
      "UPDATE ll_artifacts SET digest = NULL WHERE seq = 4 AND role = 0 AND path = '/data/m/in-4-1'"],
     True, "a NULL digest hidden by a NUL in the row before"),
]


@pytest.mark.parametrize(("statements", "loose", "what"), _TYPE_TAMPERS, ids=[t[2] for t in _TYPE_TAMPERS])
def test_the_type_guard_as_filter_and_as_sum(pristine, tmp_path, statements, loose, what):
    """The guard counted with FILTER (SQLite 3.30 on) and as the sum older SQLite runs say
    the same: every row of the writer's types before the tamper, not after; the bulk check
    refuses the range and verify-lineage names the index."""
    db = _copy(pristine, tmp_path, loose=loose)
    queries = (_sqlite_audit._INDEX_COLUMNS, _sqlite_audit._INDEX_COLUMNS_SUM)
    assert "FILTER" in queries[0] and "FILTER" not in queries[1]
    with sqlite3.connect(db) as conn:
        assert [conn.execute(query, (0, RECORDS)).fetchone()[-1] for query in queries] == [1, 1]
        for statement in statements:
            assert conn.execute(statement).rowcount == 1, (what, statement)
        conn.commit()
        assert [conn.execute(query, (0, RECORDS)).fetchone()[-1] for query in queries] == [0, 0], what
    assert _bulk(db) is None, what
    done = _verify(db, tmp_path)
    assert done.returncode == 1 and "IndexTampered" in done.stdout, (what, done.stdout, done.stderr)


_VALUE_TAMPERS = [
    ("UPDATE ll_artifacts SET digest = (SELECT digest FROM ll_artifacts WHERE seq = 4 AND path = '/data/m/in-4-6')"
     " WHERE seq = 4 AND path = '/data/m/in-4-5'", "one of many inputs' digest, another input's"),
    ("UPDATE ll_artifacts SET path = '/data/.hidden-10' WHERE seq = 9 AND path = '/data/.hidden-9'",
     "a hidden file's row naming another hidden file"),
    ("UPDATE ll_artifacts SET role = 1 WHERE seq = 1 AND path = '/data/ref'",
     "an input of a record without outputs made an output"),
    ("UPDATE ll_artifacts SET seq = 3 WHERE seq = 2 AND role = 1", "an output moved to the next record"),
    ("UPDATE ll_artifacts SET ended = (SELECT ended FROM ll_artifacts WHERE seq = 11) WHERE seq = 10 AND role = 0"
     " AND path = '/data/m/in-10-3'", "one row's end time, the next record's"),
]


@pytest.mark.parametrize(("statement", "what"), _VALUE_TAMPERS, ids=[t[1] for t in _VALUE_TAMPERS])
def test_a_tampered_row_of_any_shape_is_refused(pristine, tmp_path, statement, what):
    db = _copy(pristine, tmp_path)
    with sqlite3.connect(db) as conn:
        assert conn.execute(statement).rowcount == 1, what
    assert _bulk(db) is None, what
    done = _verify(db, tmp_path)
    assert done.returncode == 1 and "IndexTampered" in done.stdout, (what, done.stdout, done.stderr)


def test_the_joined_hex_check_counts_its_separators():
    """A digest holding a NUL would pass a check of hex-or-NUL characters alone: the count of
    separators refuses it. (No body decodes to such a digest: JSON spells a NUL only with a
    backslash, which makes the record a suspect that Record.decode judges; the guard is
    tested here directly for that reason.)"""
    class Entry:
        def __init__(self, blake3: str) -> None:
            self.blake3 = blake3

    good = {"/a": Entry("ab" * 32), "/b": Entry("cd" * 32)}
    assert audit_records._hex_joined([good], [{}]) == (f"{'ab' * 32}\x00{'cd' * 32}", True)
    holed = {"/a": Entry("ab" * 31 + "a\x00"), "/b": Entry("cd" * 32)}
    assert audit_records._hex_joined([holed], [{}])[1] is False
    upper = {"/a": Entry("AB" * 32)}
    assert audit_records._hex_joined([{}], [upper])[1] is False
    assert audit_records._hex_joined([{}, {}], [{}, {}]) == ("", True)
