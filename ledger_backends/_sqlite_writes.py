"""What both SQLite writers write: the schema's text, the insert statements and the rows.

Split from :mod:`.sqlite` (which re-exports every name here) along this seam: these are
the pieces :class:`~.sql.SQLBackend` shares with :class:`~.sqlite.SQLiteBackend`, so that
both write the same schema and the same rows; none of them needs a connection pool or
SQLAlchemy.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence

from lineage_ledger._errors import AppendConflict, BackendUnavailable
from lineage_ledger._model import StoredBlock
from lineage_ledger._order import order_end

from ._sql_reads import _IN, _OUT

ORIGIN_PREFIX = "lineage-ledger:"

# The schema, as SQLAlchemy's ``metadata.create_all`` emits it for SQLite from the tables
# in _sql_schema.py, statement for statement: SQLite keeps each statement's text in sqlite_master,
# so a ledger created here has the schema of one created there, byte for byte. (SQLAlchemy
# creates a table's indexes in no fixed order, so only their order in the file may differ,
# as it does between two of its own ledgers.) tests/test_sqlite_writer.py compares both:
# a change to the tables in _sql_schema.py fails it until this list follows.
SCHEMA_DDL = (
    '\nCREATE TABLE ll_meta (\n\t"key" VARCHAR(64) NOT NULL, \n\tvalue TEXT NOT NULL, \n\tPRIMARY KEY ("key")\n)\n\n',
    "\nCREATE TABLE ll_blocks (\n\theight INTEGER NOT NULL, \n\tid VARCHAR(64) NOT NULL, \n\tfirst_seq BIGINT NOT NULL,"
    " \n\tcount INTEGER NOT NULL, \n\theader BLOB NOT NULL, \n\tPRIMARY KEY (height), \n\tUNIQUE (id)\n)\n\n",
    "\nCREATE TABLE ll_records (\n\tseq INTEGER NOT NULL, \n\tid VARCHAR(64) NOT NULL, \n\theight BIGINT NOT NULL,"
    " \n\tpos INTEGER NOT NULL, \n\trun_id TEXT NOT NULL, \n\tbody BLOB NOT NULL, \n\tPRIMARY KEY (seq),"
    " \n\tUNIQUE (id)\n)\n\n",
    "CREATE INDEX ll_records_run ON ll_records (run_id)",
    "\nCREATE TABLE ll_artifacts (\n\tpath TEXT NOT NULL, \n\trole SMALLINT NOT NULL, \n\tseq BIGINT NOT NULL,"
    " \n\tdigest VARCHAR(64) NOT NULL, \n\tended VARCHAR(32) DEFAULT '' NOT NULL,"
    " \n\tCONSTRAINT ll_artifacts_pkey PRIMARY KEY (seq, role, path)\n)\n WITHOUT ROWID\n\n",
    "CREATE INDEX ll_artifacts_path ON ll_artifacts (path, role, seq)",
    "CREATE INDEX ll_artifacts_digest ON ll_artifacts (digest, role, seq)",
    "CREATE INDEX ll_artifacts_latest ON ll_artifacts (path, role, ended, seq)",
)
INSERT_BLOCKS = "INSERT INTO ll_blocks (height, id, first_seq, count, header) VALUES (?, ?, ?, ?, ?)"
INSERT_RECORDS = "INSERT INTO ll_records (seq, id, height, pos, run_id, body) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_ARTIFACTS = "INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES (?, ?, ?, ?, ?)"


# -- helpers SQLBackend shares (no SQLAlchemy here) ------------------------------------------
def enter_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode = WAL``, waiting up to ``timeout`` seconds for the file.

    Leaving a rollback journal needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection holds a write
    transaction (waiting could deadlock): four processes opening a schema-2 ledger together
    failed that way. The statement is repeated until it succeeds or the time is up."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def new_blocks(blocks: Sequence[StoredBlock], existing: dict[int, str]) -> list[StoredBlock]:
    """The blocks not stored yet, given the ids ``existing`` holds by height: a block already
    stored with its id is a repeat (a shipment retried) and is skipped; another id at its
    height is :class:`AppendConflict`. What both writers check before they insert."""
    fresh = []
    for block in blocks:
        if block.height in existing:
            if existing[block.height] != block.id:
                raise AppendConflict(f"height {block.height} is taken by another block")
        else:
            fresh.append(block)
    return fresh


def append_rows(blocks: Sequence[StoredBlock], seq: int) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The rows of ``blocks`` for INSERT_BLOCKS, INSERT_RECORDS and INSERT_ARTIFACTS, the
    first record at ``seq``: what both writers insert, so both write the same rows."""
    block_rows, record_rows, artifact_rows = [], [], []
    for block in blocks:
        block_rows.append((block.height, block.id, seq, len(block.records), block.header))
        for position, record in enumerate(block.records):
            record_rows.append((seq, record.id, block.height, position, record.run_id, record.body))
            ended = record.ended or ended_of(record.body)
            for path, digest in record.inputs:
                artifact_rows.append((path, _IN, seq, digest, ended))
            for path, digest in record.outputs:
                artifact_rows.append((path, _OUT, seq, digest, ended))
            seq += 1
    return block_rows, record_rows, artifact_rows


def ended_of(body: bytes) -> str:
    """The end of a record body's task in the ledger's order (``Record.order_end_text``), for
    records stored without it extracted."""
    try:
        raw = json.loads(body)
        value, extra = raw.get("ended", ""), raw.get("extra")
    except (ValueError, AttributeError, RecursionError):  # unreadable: the readers say so
        return ""
    if not isinstance(value, str):
        return ""
    return order_end(value, extra if isinstance(extra, dict) else None)


def make_private_dirs(directory: str, shown: str) -> None:
    """Create ``directory`` and any missing parents 0700 (whatever the umask); directories
    that exist, or that another process creates meanwhile, keep their mode."""
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as err:
            raise BackendUnavailable(f"{shown}: cannot create {path}: {err.strerror}") from err
        os.chmod(path, 0o700)


def create_private_file(path: str, shown: str) -> None:
    """Create the ledger file 0600 before SQLite opens it (SQLite gives its -wal and -shm
    files the database file's mode). An existing file is left as it is."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    except OSError as err:
        raise BackendUnavailable(f"{shown}: cannot create {path}: {err.strerror}") from err
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
