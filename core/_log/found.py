"""The recorded outputs a full audit found on disk, kept on disk until they are checked.

``verify-lineage`` with no target audits the ledger and then checks every recorded output
still on disk, with its lineage. A lab's ledger names its outputs, and most of them are
still there: a million records name more than a million paths, about 150 MB as a Python
list and set in the audit's parent, before a single file was checked (a ledger of 20,000
records whose outputs exist took 194 MiB where one of 2,000 took 43). So the paths the
audit's ranges find go, a range at a time, into a table of a scratch SQLite file in a
private temporary directory; the check then reads them back in windows, each path once, in
the order the ledger first named them (``GROUP BY``, sorted by SQLite on disk, in bounded
memory). The directory is removed on :meth:`FoundOutputs.close` (or when the object goes).

Paths are stored as UTF-8 with lone surrogates kept (file names that are not UTF-8 reach
the ledger as such, see :mod:`.names`), so that what comes back is what went in.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterable, Iterator

__all__ = ["FoundOutputs", "scratch_table"]

_SURROGATES = "surrogatepass"


class FoundOutputs:
    """Paths in (a range's found outputs at a time), each distinct path out once, in the
    order first added. Nothing is made on disk until the first path comes."""

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._directory: str | None = None
        self._cleanup: weakref.finalize | None = None
        self.added = 0  # paths added, repeats included

    def add(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if not paths:
            return
        conn = self._conn or self._open()
        conn.executemany("INSERT INTO found (path) VALUES (?)",
                         zip(p.encode("utf-8", _SURROGATES) for p in paths))
        self.added += len(paths)

    def _open(self) -> sqlite3.Connection:
        self._directory = tempfile.mkdtemp(prefix="lineage-audit-")  # 0700, this user's
        conn = scratch_table(os.path.join(self._directory, "found.db"), "found (path BLOB NOT NULL)")
        self._conn = conn
        self._cleanup = weakref.finalize(self, _remove, conn, self._directory)
        return conn

    def windows(self, size: int) -> Iterator[list[str]]:
        """The distinct paths, ``size`` at a time (memory: one window)."""
        if self._conn is None:
            return
        cursor = self._conn.execute("SELECT path FROM found GROUP BY path ORDER BY min(rowid)")
        while True:
            rows = cursor.fetchmany(size)
            if not rows:
                return
            yield [bytes(row[0]).decode("utf-8", _SURROGATES) for row in rows]

    def __iter__(self) -> Iterator[str]:
        for window in self.windows(1000):
            yield from window

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()
        self._conn = None

    def __enter__(self) -> FoundOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scratch_table(path: str, table: str) -> sqlite3.Connection:
    """A new SQLite file at ``path`` (created here, never opened: in a private directory of
    this process's own) holding one table, in an open transaction. Nothing in it outlives
    the process that wrote it: no journal, no syncs, a few MiB of cache; SQLite sorts on disk."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -4096", "temp_store = FILE"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(f"CREATE TABLE {table}")
    conn.execute("BEGIN")
    return conn


def _remove(conn: sqlite3.Connection, directory: str) -> None:
    conn.close()
    shutil.rmtree(directory, ignore_errors=True)
