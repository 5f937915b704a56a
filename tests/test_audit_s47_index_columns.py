"""The audit's bulk check compares SQLite's artifact index as joined columns (paths, digests
and end times joined by NUL, ``seq * 2 + role`` by commas: ``_sqlite_audit.audit_chunk``)
with the same columns joined from the record bodies (``audit_bulk.index_columns``). Joined
texts are equal for rows that are not, unless every guard holds: the bodies' columns have
one separator fewer than rows, every stored row is counted, and every row has the writer's
types (group_concat() skips a NULL). Each tamper here aims at one of those guards; the bulk
check must refuse the range, and ``verify-lineage`` of the whole ledger, through its
workers, must fail naming the index."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._log import audit_bulk
from lineage_ledger.backends._sqlite_reader import SQLiteReader
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record

PARALLEL = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "8", "LINEAGE_AUDIT_WORKERS": "2"}

# Without NOT NULL or column types (keys kept), as a writer that rebuilt the table could leave
# it: any value of any type can then be stored in a cell, NULL included.
_LOOSE = """ALTER TABLE ll_artifacts RENAME TO old_artifacts;
CREATE TABLE ll_artifacts (path, role, seq, digest, ended, PRIMARY KEY (seq, role, path)) WITHOUT ROWID;
INSERT INTO ll_artifacts SELECT path, role, seq, digest, ended FROM old_artifacts;
DROP TABLE old_artifacts;"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Ten blocks of four records; each reads two files and writes two (rows in both roles)."""
    db = tmp_path_factory.mktemp("pristine") / "ledger.db"
    records = [make_record(i, run_id=f"run-{i % 3}",
                           inputs=[artifact("/data/a", "a"), artifact(f"/data/in-{i}", f"in{i}")],
                           outputs=[artifact(f"/data/out-{i}", f"out{i}"), artifact(f"/data/z-{i}", f"z{i}")])
               for i in range(40)]
    with open_ledger(f"sqlite:///{db}", spool=str(db.parent / "spool")) as ledger:
        for start in range(0, 40, 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
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
        return audit_bulk.audit_range(reader, 0, 10, 0, False)
    except Exception:  # noqa: BLE001 - a refusal, as the worker takes it
        return None
    finally:
        reader.close()


def _verify(db, tmp_path):
    return run_cli("--ledger", f"sqlite:///{db}", cwd=tmp_path, program="verify-lineage",
                   env={**PARALLEL, "LINEAGE_STATE_DIR": str(tmp_path / "state")})


@pytest.mark.parametrize("loose", [False, True])
def test_an_intact_ledger_takes_the_joined_columns(pristine, tmp_path, loose):
    """The control: the columns are what is compared (a tuple whose last item says every row
    has its types), they accept an intact ledger, and the audit passes, also where the table
    has no column types (the tampers below that need such a table start from it)."""
    db = _copy(pristine, tmp_path, loose=loose)
    reader = SQLiteReader(f"sqlite:///{db}")
    try:
        _rows, columns, stored = reader.audit_chunk(0, 40)
    finally:
        reader.close()
    assert type(columns) is tuple and columns[-1] is True and stored == 160
    assert columns[0].count(b"\x00") == 159 and columns[3].count(",") == 159
    result = _bulk(db)
    assert result is not None and result.artifacts == 160
    done = _verify(db, tmp_path)
    assert done.returncode == 0 and "40 records" in done.stdout, done


# Each: the statements, on a table with or without column types, and what they aim at.
_TAMPERS = [
    # Two rows' digests merged into the first (a NUL between), the second's NULL, which
    # group_concat() skips: the joined text is the original's, byte for byte.
    (["UPDATE ll_artifacts SET digest = (SELECT group_concat(digest, char(0)) FROM (SELECT digest FROM ll_artifacts"
      " WHERE seq = 13 AND role = 1 ORDER BY path)) WHERE seq = 13 AND role = 1 AND path = '/data/out-13'",
      "UPDATE ll_artifacts SET digest = NULL WHERE seq = 13 AND role = 1 AND path = '/data/z-13'"],
     True, "a NULL digest hidden by a NUL in the row before"),
    (["UPDATE ll_artifacts SET ended = (SELECT group_concat(ended, char(0)) FROM (SELECT ended FROM ll_artifacts"
      " WHERE seq = 21 AND role = 0 ORDER BY path)) WHERE seq = 21 AND role = 0 AND path = '/data/a'",
      "UPDATE ll_artifacts SET ended = NULL WHERE seq = 21 AND role = 0 AND path = '/data/in-21'"],
     True, "a NULL end time hidden by a NUL in the row before"),
    (["UPDATE ll_artifacts SET digest = CAST(digest AS BLOB) WHERE seq = 30 AND role = 0 AND path = '/data/a'"],
     True, "a digest of the same bytes as a BLOB"),
    (["UPDATE ll_artifacts SET path = CAST(path AS BLOB) WHERE seq = 30 AND role = 1 AND path = '/data/out-30'"],
     True, "a path of the same bytes as a BLOB"),
    (["UPDATE ll_artifacts SET ended = CAST(ended AS BLOB) WHERE seq = 5 AND role = 1 AND path = '/data/z-5'"],
     True, "an end time of the same bytes as a BLOB"),
    (["UPDATE ll_artifacts SET role = '1' WHERE seq = 7 AND role = 1 AND path = '/data/out-7'"],
     True, "a role of text: seq * 2 + '1' is the same key"),
    (["UPDATE ll_artifacts SET role = 1.0 WHERE seq = 7 AND role = 1 AND path = '/data/z-7'"],
     True, "a role of a real equal to 1"),
    (["UPDATE ll_artifacts SET digest = (SELECT digest FROM ll_artifacts WHERE seq = 2 AND path = '/data/z-2')"
      " WHERE seq = 2 AND path = '/data/out-2'",
      "UPDATE ll_artifacts SET digest = (SELECT digest FROM ll_artifacts WHERE seq = 3 AND path = '/data/out-3')"
      " WHERE seq = 2 AND path = '/data/z-2'"],
     False, "two outputs' digests swapped within a record"),
    (["UPDATE ll_artifacts SET ended = '2020-01-01T00:00:00.000000Z' WHERE seq = 17 AND path = '/data/z-17'"],
     False, "one row's end time alone"),
    (["UPDATE ll_artifacts SET role = 0 WHERE seq = 25 AND role = 1 AND path = '/data/z-25'"],
     False, "an output row turned into an input row"),
    (["UPDATE ll_artifacts SET seq = 26 WHERE seq = 25 AND role = 1 AND path = '/data/z-25'"],
     False, "an output row moved to the next record"),
    (["UPDATE ll_artifacts SET path = '/data/in-33' || char(0) WHERE seq = 33 AND path = '/data/in-33'"],
     False, "a path with a NUL at its end"),
    (["INSERT INTO ll_artifacts (path, role, seq, digest, ended) SELECT '', role, seq, '', ended"
      " FROM ll_artifacts WHERE seq = 38 AND role = 1 AND path = '/data/z-38'",
      "UPDATE ll_artifacts SET digest = digest || char(0) WHERE seq = 38 AND role = 1 AND path = '/data/out-38'"],
     False, "a row of empty texts beside a NUL that pays for its separator"),
]


@pytest.mark.parametrize(("statements", "loose", "what"), _TAMPERS, ids=[t[2] for t in _TAMPERS])
def test_a_tampered_index_is_refused_by_the_joined_columns(pristine, tmp_path, statements, loose, what):
    db = _copy(pristine, tmp_path, loose=loose)
    with sqlite3.connect(db) as conn:
        for statement in statements:
            assert conn.execute(statement).rowcount == 1, (what, statement)
    assert _bulk(db) is None, what
    done = _verify(db, tmp_path)
    assert done.returncode == 1 and "IndexTampered" in done.stdout, (what, done.stdout, done.stderr)
