"""What lets an export of a run read its records a page at a time, and hold none of them.

A run of 100,000 tasks (a Snakemake scatter) held whole, decoded, was 6 KB a record, and
each format then built its whole document beside it: 650 MB for 10,000 tasks. Here:

* :func:`run_records` reads a run's records in ledger order a page at a time
  (``Ledger.run_pages``), each proved, counted against the names kept beside the verified
  tree as ``Ledger.run`` does, so an index that left records of the run out still fails;
* :class:`VersionIndex` keeps every file version the records name (first mention, aliases,
  who read or wrote it) in a private scratch SQLite file, which sorts and de-duplicates on
  disk: a writer streams the versions back from it in order of first mention.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from .._ledger.ledger import Ledger, LedgerRecord
from .._log.found import scratch_table
from .._model import Record, is_alias

__all__ = ["VersionIndex", "run_records"]


def run_records(ledger: Ledger, run_id: str) -> Iterator[LedgerRecord]:
    """Every record of run ``run_id``, in ledger order, each proved, a page at a time
    (``Ledger.run_pages``: the counts kept are checked once the last page is read)."""
    for page in ledger.run_pages(run_id):
        yield from page


class VersionIndex:
    """The file and directory versions of a selection, on disk: one row per (path, digest)
    in order of first mention, with its first-mentioned size and kind, whether a selected
    record read it and whether one wrote it, and every alias any record gave it."""

    def __init__(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="lineage-export-")  # private: mode 0700
        # Removed by close(), or when the index is dropped (a caller that never closed it).
        self._remove = weakref.finalize(self, shutil.rmtree, self._directory, True)
        self._conn: sqlite3.Connection = scratch_table(
            os.path.join(self._directory, "versions.db"),
            "versions (seq INTEGER PRIMARY KEY, path TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,"
            " is_dir INTEGER NOT NULL, was_read INTEGER NOT NULL, was_made INTEGER NOT NULL,"
            " UNIQUE (path, digest))")
        self._conn.execute("CREATE TABLE aliases (version INTEGER NOT NULL, alias TEXT NOT NULL,"
                           " UNIQUE (version, alias))")
        self.has_dirs = False

    @property
    def directory(self) -> str:
        """A private directory for a writer's own scratch files, removed with the index."""
        return self._directory

    def add(self, record: Record) -> None:
        for side, read, made in ((record.inputs, 1, 0), (record.outputs, 0, 1)):
            self._side(side, read, made)

    def _side(self, side: Mapping[str, Mapping[str, Any]], read: int, made: int) -> None:
        rows, aliased = [], []
        for path, art in side.items():
            if is_alias(art):
                aliased.append((path, art["alias_of"]))
                continue
            is_dir = art.get("type") == "dir"
            self.has_dirs |= is_dir
            rows.append((path, art["blake3"], art["size"], int(is_dir), read, made))
        self._conn.executemany(
            "INSERT INTO versions (path, digest, size, is_dir, was_read, was_made) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (path, digest) DO UPDATE SET was_read = max(was_read, excluded.was_read),"
            " was_made = max(was_made, excluded.was_made)", rows)
        for alias, real in aliased:
            target = side.get(real)
            if target is None or is_alias(target):
                continue
            self._conn.execute("INSERT OR IGNORE INTO aliases (version, alias)"
                               " SELECT seq, ? FROM versions WHERE path = ? AND digest = ?",
                               (alias, real, target["blake3"]))

    def versions(self, *, dirs_only: bool = False) -> Iterator[tuple[str, str, int, bool, tuple[str, ...]]]:
        """(path, digest, size, is_dir, aliases) of each version, in order of first mention."""
        where = "WHERE v.is_dir = 1" if dirs_only else ""
        rows = self._conn.execute(
            "SELECT v.seq, v.path, v.digest, v.size, v.is_dir, a.alias FROM versions v"
            f" LEFT JOIN aliases a ON a.version = v.seq {where} ORDER BY v.seq, a.rowid")
        current: list[Any] | None = None
        for seq, path, digest, size, is_dir, alias in rows:
            if current is None or current[0] != seq:
                if current is not None:
                    yield current[1], current[2], current[3], current[4], tuple(current[5])
                current = [seq, path, digest, size, bool(is_dir), []]
            if alias is not None:
                current[5].append(alias)
        if current is not None:
            yield current[1], current[2], current[3], current[4], tuple(current[5])

    def version(self, path: str, digest: str) -> tuple[int, bool, tuple[str, ...]] | None:
        """(size, is_dir, aliases) of one version, as :meth:`versions` gives it; None if no
        selected record names it."""
        rows = self._conn.execute(
            "SELECT v.size, v.is_dir, a.alias FROM versions v LEFT JOIN aliases a ON a.version = v.seq"
            " WHERE v.path = ? AND v.digest = ? ORDER BY a.rowid", (path, digest)).fetchall()
        if not rows:
            return None
        return rows[0][0], bool(rows[0][1]), tuple(alias for _, _, alias in rows if alias is not None)

    def unmade_inputs(self) -> Iterator[tuple[str, str]]:
        """The versions read that no selected record wrote."""
        yield from self._conn.execute("SELECT path, digest FROM versions WHERE was_read = 1 AND was_made = 0"
                                      " ORDER BY seq")

    def made(self, path: str, digest: str) -> bool:
        row = self._conn.execute("SELECT was_made FROM versions WHERE path = ? AND digest = ?",
                                 (path, digest)).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self._conn.close()
        self._remove()
