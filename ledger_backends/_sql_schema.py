"""The SQL ledger's tables, as SQLAlchemy declares them, and the schema's creation and
migration: what :class:`~.sql.SQLBackend` runs inside its write transaction when it opens a
ledger that is new or older than this code (``lineage-ledger migrate`` too). The tables are
the schema's one source: :mod:`.sqlite` creates new SQLite ledgers from their DDL text, and
``tests/test_sqlite_writer.py`` checks that both agree.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from lineage_ledger._errors import ConfigError, CorruptStore

from ._sql_reads import SCHEMA_VERSION
from .sqlite import ORIGIN_PREFIX

__all__ = ["artifacts_table", "blocks_table", "meta_table", "metadata", "prepare_schema", "records_table",
           "stored_meta"]

# Every record gets a sequence number, its place in the whole ledger. Sequence numbers
# are the records table's integer key, so appends go to the end of the B-tree and a
# block's records are one range scan (a block owns first_seq .. first_seq + count - 1).
# Artifacts live in one table clustered by (seq, role, path) (schema 3): appends go to
# the end of it too, and the audit reads it once in ledger order beside ll_records. The
# index on (path, role, seq) keeps "who wrote / read this path" one index range, already
# in ledger order, and so does the one on (digest, role, seq). (On SQLite a WITHOUT
# ROWID table's index carries the whole primary key anyway; naming seq makes PostgreSQL
# keep it in the index too.) Paths compare byte-wise on both databases ("C" collation
# on PostgreSQL), so that ordering and paging agree with Python's.
# SQLite makes only "INTEGER PRIMARY KEY" an alias of the rowid (no separate index).
_INT64 = sa.BigInteger().with_variant(sa.Integer, "sqlite")
metadata = sa.MetaData()
meta_table = sa.Table(
    "ll_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
blocks_table = sa.Table(
    "ll_blocks", metadata,
    sa.Column("height", _INT64, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("header", sa.LargeBinary, nullable=False),
)
records_table = sa.Table(
    "ll_records", metadata,
    sa.Column("seq", _INT64, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("height", sa.BigInteger, nullable=False),
    sa.Column("pos", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Index("ll_records_run", "run_id"),
)
_PATH = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
artifacts_table = sa.Table(
    "ll_artifacts", metadata,
    # Declared in schema 2's column order (what a positional INSERT expects); stored in
    # primary-key order all the same (WITHOUT ROWID on SQLite, the key's index on PostgreSQL).
    sa.Column("path", _PATH, nullable=False),
    sa.Column("role", sa.SmallInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    # When the record's task ended (canonical UTC text, which sorts as time): "the record
    # that saw this path last" is then one step down ll_artifacts_latest, not a scan of
    # every record that ever read a file every task reads.
    sa.Column("ended", sa.String(32), nullable=False, server_default=""),
    sa.PrimaryKeyConstraint("seq", "role", "path", name="ll_artifacts_pkey"),
    sa.Index("ll_artifacts_path", "path", "role", "seq"),
    sa.Index("ll_artifacts_digest", "digest", "role", "seq"),
    sa.Index("ll_artifacts_latest", "path", "role", "ended", "seq"),
    sqlite_with_rowid=False,
)


def stored_meta(conn: sa.Connection) -> tuple[set[str], str | None, str | None]:
    """(table names, schema version, origin) as stored."""
    names = set(sa.inspect(conn).get_table_names())
    if "ll_meta" not in names:
        return names, None, None
    meta: dict[str, str] = {key: value for key, value in conn.execute(sa.select(meta_table.c.key, meta_table.c.value))}
    return names, meta.get("schema"), meta.get("origin")


def prepare_schema(conn: sa.Connection, *, sqlite: bool, shown: str) -> tuple[str, int | None]:
    """Create, or migrate, the schema inside the caller's write transaction: (the ledger's
    origin, the artifact rows moved by a migration from schema 2 or ``None`` where there
    was none)."""
    names, version, origin = stored_meta(conn)
    moved = None
    if version is None:
        if names and sqlite:
            raise ConfigError(f"{shown}: this database is not a lineage ledger")
        metadata.create_all(conn, checkfirst=True)
        origin = ORIGIN_PREFIX + uuid.uuid4().hex
        conn.execute(
            sa.insert(meta_table),
            [{"key": "schema", "value": SCHEMA_VERSION}, {"key": "origin", "value": origin}],
        )
    elif version == "2":
        origin, moved = _migrate_from_2(conn, sqlite)
    elif version != SCHEMA_VERSION:
        raise ConfigError(f"{shown}: ledger schema {version}, expected {SCHEMA_VERSION}")
    if not origin:
        raise CorruptStore(f"{shown}: the ledger's origin is missing from ll_meta")
    return origin, moved


def _migrate_from_2(conn: sa.Connection, sqlite: bool) -> tuple[str, int]:
    """Schema 2 -> 3: the artifacts table, clustered by (path, role, seq) before, is rebuilt
    clustered by (seq, role, path) with its indexes, and the ledger gets its origin.
    Returns (the origin, the artifact rows moved)."""
    conn.exec_driver_sql("ALTER TABLE ll_artifacts RENAME TO ll_artifacts_v2")
    if not sqlite:  # PostgreSQL names constraints per schema: free the name
        conn.exec_driver_sql("ALTER TABLE ll_artifacts_v2 RENAME CONSTRAINT ll_artifacts_pkey TO ll_artifacts_v2_pkey")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ll_artifacts_digest")
    conn.execute(sa.schema.CreateTable(artifacts_table))
    ended = ("json_extract(CAST(r.body AS TEXT), '$.ended')" if sqlite
             else "convert_from(r.body, 'UTF8')::json->>'ended'")
    moved = conn.exec_driver_sql(
        "INSERT INTO ll_artifacts (seq, role, path, digest, ended)"
        f" SELECT a.seq, a.role, a.path, a.digest, coalesce({ended}, '') FROM ll_artifacts_v2 a"
        " LEFT JOIN ll_records r ON r.seq = a.seq ORDER BY a.seq, a.role, a.path"
    ).rowcount
    for index in sorted(artifacts_table.indexes, key=lambda i: str(i.name)):
        index.create(conn)
    conn.exec_driver_sql("DROP TABLE ll_artifacts_v2")
    origin = ORIGIN_PREFIX + uuid.uuid4().hex
    conn.execute(sa.update(meta_table).where(meta_table.c.key == "schema").values(value=SCHEMA_VERSION))
    conn.execute(sa.delete(meta_table).where(meta_table.c.key == "origin"))
    conn.execute(sa.insert(meta_table).values(key="origin", value=origin))
    return origin, moved
