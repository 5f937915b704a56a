"""SQL storage through SQLAlchemy 2: SQLite (the embedded default) and PostgreSQL.

Tables are prefixed ``ll_`` so a ledger can share a PostgreSQL database. The block
height is the primary key: two writers building on the same head collide there, and the
loser gets :class:`AppendConflict` and rebuilds. SQLite runs in WAL mode with a busy
timeout and takes its write lock up front (``BEGIN IMMEDIATE``), because a read
transaction that upgrades to a write fails at once instead of waiting for the lock.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy import event, exc

from lineage_ledger._errors import (
    AppendConflict,
    BackendError,
    BackendUnavailable,
    ConfigError,
    CorruptStore,
    MissingExtra,
)
from lineage_ledger._model import BlockColumns, StoredBlock, StoredRecord

from ._base import Backend, ChainHead, Located, Role

__all__ = ["SQLBackend"]

SCHEMA_VERSION = "2"
_CHUNK = 500  # block headers fetched per query while iterating
_ROWS_PER_READ = 20_000  # records fetched per query (at least one whole block)
_ONLY_STR = frozenset({str})
_ONLY_BYTES = frozenset({bytes})
_BUSY_TIMEOUT_S = 60
_IN, _OUT = 0, 1  # artifact roles as stored

# Every record gets a sequence number, its place in the whole ledger. Sequence numbers
# are the records table's integer key, so appends go to the end of the B-tree and a
# block's records are one range scan (a block owns first_seq .. first_seq + count - 1).
# Artifacts live in one table clustered by (path, role, seq): the look-ups lineage does
# most ("who wrote this path") read adjacent rows. Only the record id and the digest
# index take random-key inserts. This layout appends about 1.45x faster than one with
# text keys everywhere (docs/benchmarks.md).
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
artifacts_table = sa.Table(
    "ll_artifacts", metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("role", sa.SmallInteger, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Index("ll_artifacts_digest", "digest"),
    sqlite_with_rowid=False,
)


def _engine_url(url: str) -> str:
    scheme, rest = url.split("://", 1) if "://" in url else ("sqlite", None)
    if rest is None:  # a plain path
        return "sqlite:///" + url
    if scheme == "postgresql":  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
        return "postgresql+psycopg://" + rest
    return url


def _as_bytes(value) -> bytes:
    """Stored bytes as they are; a value someone rewrote as TEXT or a number still verifies
    (and fails) instead of crashing the reader."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def _sqlite_path(engine_url: sa.URL) -> str | None:
    database = engine_url.database
    return None if database in (None, "", ":memory:") else database


@contextlib.contextmanager
def _translated(what: str, url: str):
    """Turn SQLAlchemy and driver errors into the library's own, with the cause attached."""
    try:
        yield
    except exc.IntegrityError as err:
        raise AppendConflict(f"{what}: another writer stored this height or record first") from err
    except exc.DatabaseError as err:
        text = str(err.orig if getattr(err, "orig", None) else err).strip()
        lowered = text.lower()
        if any(s in lowered for s in ("not a database", "malformed", "corrupt", "disk image")):
            raise CorruptStore(
                f"{url}: the ledger database is corrupt or truncated ({text}); "
                "restore it from a copy, or verify a replica"
            ) from err
        if "no such table" in lowered or "does not exist" in lowered and "relation" in lowered:
            raise CorruptStore(f"{url}: ledger tables are missing ({text})") from err
        raise BackendUnavailable(f"{url}: {what} failed: {text}") from err
    except exc.SQLAlchemyError as err:
        raise BackendError(f"{url}: {what} failed: {err}") from err


_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    # A forked child must not use the parent's pooled connections (one socket or SQLite
    # handle shared by two processes); dispose(close=False) leaves them to the parent.
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_connections_after_fork)


class SQLBackend(Backend):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            engine_url = sa.make_url(_engine_url(url))
        except exc.ArgumentError as err:
            raise ConfigError(f"malformed ledger URL {url!r}: {err}") from err
        self._sqlite = engine_url.get_backend_name() == "sqlite"
        self._read_only = False
        kwargs: dict = {}
        if self._sqlite:
            path = _sqlite_path(engine_url)
            if path is None:
                raise ConfigError(f"{url}: give a file path, e.g. sqlite:///ledger.db")
            if os.path.isdir(path):
                raise ConfigError(f"{url}: {path} is a directory, not a ledger file")
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as err:
                raise BackendUnavailable(f"{url}: cannot create {parent}: {err.strerror}") from err
            kwargs["connect_args"] = {"timeout": _BUSY_TIMEOUT_S}
            self._read_only = os.path.exists(path) and not (
                os.access(path, os.W_OK) and os.access(parent, os.W_OK)
            )
            if self._read_only:
                # An archived copy we may not write: SQLite could not even create the WAL
                # index beside it, so open it immutable, for reading only.
                import sqlite3

                uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro&immutable=1"
                kwargs["creator"] = lambda: sqlite3.connect(
                    uri, uri=True, timeout=_BUSY_TIMEOUT_S, check_same_thread=False
                )
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self._engine = sa.create_engine(engine_url, **kwargs)
        except ModuleNotFoundError as err:
            raise MissingExtra(
                f"the {engine_url.get_backend_name()} back-end needs {err.name!r}, which is not "
                "installed: pip install 'lineage-ledger[postgres]'"
            ) from err
        except exc.ArgumentError as err:
            raise ConfigError(f"bad ledger URL {url!r}: {err}") from err
        _ENGINES.add(self._engine)
        if self._sqlite:
            self._setup_sqlite()
        self._create_schema()

    @property
    def identity(self) -> str:
        if self._sqlite:  # x.db, sqlite:///x.db and ./x.db from another directory: one file
            return "sqlite:///" + os.path.realpath(str(self._engine.url.database))
        return self._engine.url.render_as_string(hide_password=True)

    # -- set-up ---------------------------------------------------------------------------
    def _setup_sqlite(self) -> None:
        @event.listens_for(self._engine, "connect")
        def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised via sqlite
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_S * 1000}")
            if not self._read_only:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")  # the spool is trimmed after this ack
            cursor.execute("PRAGMA cache_size = -65536")  # 64 MiB: index pages stay in memory
            cursor.close()

        @event.listens_for(self._engine, "begin")
        def _on_begin(conn):  # pragma: no cover - exercised via sqlite
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

    def _schema_version(self) -> str | None:
        """The stored schema version, read without a write lock (read-only copies open)."""
        with self._engine.connect() as conn:
            if "ll_meta" not in set(sa.inspect(conn).get_table_names()):
                return None
            return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema")).scalar()

    def _create_schema(self) -> None:
        with _translated("opening the ledger", self.url):
            version = self._schema_version()
            if version == SCHEMA_VERSION:
                return
            if version is not None:
                raise ConfigError(f"{self.url}: ledger schema {version}, expected {SCHEMA_VERSION}")
            if self._read_only:
                raise ConfigError(f"{self.url}: read-only, and not a lineage ledger")
            with self._write() as conn:
                names = set(sa.inspect(conn).get_table_names())
                if names and "ll_meta" not in names and self._sqlite:
                    raise ConfigError(f"{self.url}: this database is not a lineage ledger")
                metadata.create_all(conn, checkfirst=True)
                version = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema")
                ).scalar()
                if version is None:
                    conn.execute(sa.insert(meta_table).values(key="schema", value=SCHEMA_VERSION))
                elif version != SCHEMA_VERSION:
                    raise ConfigError(f"{self.url}: ledger schema {version}, expected {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _write(self):
        with self._engine.connect() as conn:
            conn.info["write"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info["write"] = False

    # -- writes ---------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        """Statements go to the driver as written: '?' for sqlite3, '%s' for psycopg."""
        return text if self._sqlite else text.replace("?", "%s")

    def append(self, blocks: Sequence[StoredBlock]) -> None:
        if not blocks:
            return
        with _translated("append", self.url), self._write() as conn:
            heights = [b.height for b in blocks]
            existing = dict(
                conn.execute(
                    sa.select(blocks_table.c.height, blocks_table.c.id).where(blocks_table.c.height.in_(heights))
                ).all()
            )
            fresh = []
            for block in blocks:
                if block.height in existing:
                    if existing[block.height] != block.id:
                        raise AppendConflict(f"height {block.height} is taken by another block")
                else:
                    fresh.append(block)
            if not fresh:
                return
            below = conn.execute(
                sa.select(blocks_table.c.first_seq + blocks_table.c.count).where(
                    blocks_table.c.height == fresh[0].height - 1
                )
            ).scalar()
            seq = 0 if below is None else int(below)
            block_rows, record_rows, artifact_rows = [], [], []
            for block in fresh:
                block_rows.append((block.height, block.id, seq, len(block.records), block.header))
                for position, record in enumerate(block.records):
                    record_rows.append((seq, record.id, block.height, position, record.run_id, record.body))
                    for path, digest in record.inputs:
                        artifact_rows.append((path, _IN, seq, digest))
                    for path, digest in record.outputs:
                        artifact_rows.append((path, _OUT, seq, digest))
                    seq += 1
            # Straight to the driver: SQLAlchemy's per-row parameter processing cost
            # more than SQLite's own work here.
            conn.exec_driver_sql(
                self._sql("INSERT INTO ll_blocks (height, id, first_seq, count, header) VALUES (?, ?, ?, ?, ?)"),
                block_rows,
            )
            if record_rows:
                conn.exec_driver_sql(
                    self._sql("INSERT INTO ll_records (seq, id, height, pos, run_id, body) VALUES (?, ?, ?, ?, ?, ?)"),
                    record_rows,
                )
            if artifact_rows:
                conn.exec_driver_sql(
                    self._sql("INSERT INTO ll_artifacts (path, role, seq, digest) VALUES (?, ?, ?, ?)"),
                    artifact_rows,
                )

    # -- reads ----------------------------------------------------------------------------
    def head(self) -> ChainHead | None:
        with _translated("reading the head", self.url), self._engine.connect() as conn:
            row = conn.execute(
                sa.select(blocks_table.c.height, blocks_table.c.id)
                .order_by(blocks_table.c.height.desc())
                .limit(1)
            ).first()
        return None if row is None else ChainHead(int(row[0]), row[1])

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        for height, block_id, header, rows in self._block_rows(start, stop):
            records = tuple(
                StoredRecord(record_id if type(record_id) is str else str(record_id),
                             body if type(body) is bytes else _as_bytes(body))
                for _, record_id, body in rows
            )
            yield StoredBlock(height, block_id, header, records)

    def block_columns(self, start: int = 0, stop: int | None = None) -> Iterator[BlockColumns]:
        for height, block_id, header, rows in self._block_rows(start, stop):
            if rows:
                _, ids, bodies = zip(*rows, strict=True)
                # Anything but str ids and bytes bodies was rewritten behind our back:
                # coerce it as blocks() does, so that verification reports it.
                if not _ONLY_STR.issuperset(map(type, ids)):
                    ids = tuple(i if type(i) is str else str(i) for i in ids)
                if not _ONLY_BYTES.issuperset(map(type, bodies)):
                    bodies = tuple(b if type(b) is bytes else _as_bytes(b) for b in bodies)
            else:
                ids = bodies = ()
            yield BlockColumns(height, block_id, header, ids, bodies)

    def _block_rows(self, start: int, stop: int | None) -> Iterator[tuple[int, str, bytes, Sequence]]:
        """(height, id, header, [(seq, record id, body), ...]) per block, in height order."""
        # Read up to the head, not until a chunk comes back short: a deleted block row
        # must show up as a gap for verification, not end the chain early.
        if stop is None:
            head = self.head()
            stop = 0 if head is None else head.height + 1
        low = start
        while low < stop:
            high = min(low + _CHUNK, stop)
            with _translated("reading blocks", self.url), self._engine.connect() as conn:
                headers = conn.exec_driver_sql(
                    self._sql(
                        "SELECT height, id, first_seq, count, header FROM ll_blocks"
                        " WHERE height >= ? AND height < ? ORDER BY height"
                    ),
                    (low, high),
                ).fetchall()
            # Records are read a group of blocks at a time, a bounded number of rows per
            # query, so that memory does not grow with the block size times _CHUNK.
            group: list = []
            grouped = 0
            for index, header_row in enumerate(headers):
                group.append(header_row)
                grouped += max(0, int(header_row[3]))
                if grouped >= _ROWS_PER_READ or index == len(headers) - 1:
                    yield from self._read_group(group)
                    group, grouped = [], 0
            low = high

    def _read_group(self, headers: list) -> Iterator[tuple[int, str, bytes, Sequence]]:
        first = int(headers[0][2])
        last = int(headers[-1][2]) + int(headers[-1][3])
        with _translated("reading blocks", self.url), self._engine.connect() as conn:
            # The bulk read goes to the driver's own cursor: SQLAlchemy's row objects
            # cost more per record than SQLite's read and verification together.
            statement = self._sql("SELECT seq, id, body FROM ll_records WHERE seq >= ? AND seq < ? ORDER BY seq")
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(statement, (first, last))
                rows = cursor.fetchall()
            except self._engine.dialect.loaded_dbapi.Error as err:
                # Give the driver's error to SQLAlchemy's wrapper, which _translated maps.
                raise exc.DBAPIError.instance(statement, (first, last), err, Exception) from err
            finally:
                cursor.close()
        position = 0
        for height, block_id, first_seq, count, header in headers:
            first_seq, count = int(first_seq), int(count)
            # Rows come sorted by their unique seq, so a block is the next `count`
            # rows when the first and last carry the seqs it owns.
            chunk = rows[position : position + count]
            if len(chunk) == count and (
                not chunk or (chunk[0][0] == first_seq and chunk[-1][0] == first_seq + count - 1)
            ):
                position += count
            else:  # rows missing or out of place: keep what is there, verify reports it
                chunk = [r for r in rows if first_seq <= r[0] < first_seq + count]
                position = next((i for i, r in enumerate(rows) if r[0] >= first_seq + count), len(rows))
            yield int(height), str(block_id), _as_bytes(header), chunk

    def record_count(self) -> int:
        with _translated("counting records", self.url), self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(records_table)).scalar() or 0)

    def known(self, record_ids: Iterable[str]) -> set[str]:
        ids = list(record_ids)
        found: set[str] = set()
        with _translated("looking up records", self.url), self._engine.connect() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                # Straight to the driver: SQLAlchemy coerced and rendered each id of the IN
                # list, which cost more than the lookup (this runs before every append).
                marks = ",".join("?" * len(chunk))
                rows = conn.exec_driver_sql(self._sql(f"SELECT id FROM ll_records WHERE id IN ({marks})"), tuple(chunk))
                found.update(row[0] for row in rows)
        return found

    def _located(self, where) -> list[Located]:
        query = (
            sa.select(records_table.c.height, records_table.c.pos, records_table.c.id, records_table.c.body)
            .where(where)
            .order_by(records_table.c.seq)
        )
        with _translated("query", self.url), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Located(int(h), int(p), StoredRecord(str(i), _as_bytes(b))) for h, p, i, b in rows]

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        condition = artifacts_table.c.role == (_IN if role == "in" else _OUT)
        if path is not None:
            condition &= artifacts_table.c.path == path
        if digest is not None:
            condition &= artifacts_table.c.digest == digest
        seqs = sa.select(artifacts_table.c.seq).where(condition)
        return self._located(records_table.c.seq.in_(seqs))

    def by_run(self, run_id: str) -> list[Located]:
        return self._located(records_table.c.run_id == run_id)

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        return self._located(records_table.c.id.like(prefix + "%"))[:limit]

    def close(self) -> None:
        self._engine.dispose()
