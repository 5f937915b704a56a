"""What ``verify-lineage --crate`` knows of a crate, on disk instead of in memory.

The metadata's entities (by id, in the order of their first appearance, the last one of an
id winning, as a dict built from the graph would have them) and the records proved so far
go into a private scratch SQLite file as the crate's JSON is read a member at a time
(:mod:`._json_stream`): a crate of a 10,000-task run held 330 MB parsed whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any

from .._errors import ConfigError
from .._log.found import scratch_table
from .._model import Record
from ._json_stream import members

__all__ = ["CrateStore", "read_members"]

_MAX_JSON = 1 << 30


def read_members(path: str, what: str, arrays: frozenset[str], *, texts: bool = False
                 ) -> Iterator[tuple[str, str, Any]]:
    """:func:`._json_stream.members` of a crate file, its faults as ConfigError."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            yield from members(handle, arrays, _MAX_JSON, texts=texts)
    except OSError as err:
        raise ConfigError(f"cannot read the crate's {what}: {err.strerror}") from err
    except ValueError as err:  # json's decode errors too
        raise ConfigError(f"the crate's {what} is not JSON: {err}") from err


class CrateStore:
    def __init__(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="lineage-crate-")  # private: mode 0700
        self._remove = weakref.finalize(self, shutil.rmtree, self._directory, True)
        self._conn = scratch_table(os.path.join(self._directory, "crate.db"),
                                   "entities (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
        self._conn.execute("CREATE TABLE proved (id TEXT PRIMARY KEY, body BLOB NOT NULL)")
        self._conn.execute("CREATE TABLE described (id TEXT PRIMARY KEY)")

    # -- the metadata's entities --------------------------------------------------------------
    def load_metadata(self, path: str) -> None:
        """Every entity of the ``@graph`` of ``ro-crate-metadata.json``; ConfigError where the
        file is not a JSON object with a ``@graph`` array."""
        graphs = 0
        for key, kind, value in read_members(path, "ro-crate-metadata.json", frozenset({"@graph"}), texts=True):
            if key != "@graph":
                continue
            if kind != "item":  # an array begins, or a value that is none
                graphs += 1 if kind == "array" else 2
                continue
            entity, text = value
            if isinstance(entity, dict) and isinstance(entity.get("@id"), str):
                self._conn.execute("INSERT INTO entities (id, body) VALUES (?, ?)"
                                   " ON CONFLICT (id) DO UPDATE SET body = excluded.body", (entity["@id"], text))
        if graphs != 1:  # absent, not an array, or more than one (a dict would keep the last)
            raise ConfigError("ro-crate-metadata.json has no @graph")

    def get(self, ident: str) -> dict | None:
        row = self._conn.execute("SELECT body FROM entities WHERE id = ?", (ident,)).fetchone()
        return None if row is None else json.loads(row[0])

    def items(self) -> Iterator[tuple[str, dict]]:
        """(id, entity) in the order of first appearance, a page at a time."""
        after = 0
        while True:
            rows = self._conn.execute("SELECT seq, id, body FROM entities WHERE seq > ? ORDER BY seq LIMIT 1000",
                                      (after,)).fetchall()
            if not rows:
                return
            for seq, ident, body in rows:
                after = seq
                yield ident, json.loads(body)

    # -- the records proved -------------------------------------------------------------------
    def prove(self, record_id: str, body: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO proved (id, body) VALUES (?, ?)", (record_id, body))

    def proved(self, record_id: str) -> Record | None:
        row = self._conn.execute("SELECT body FROM proved WHERE id = ?", (record_id,)).fetchone()
        return None if row is None else Record.decode(bytes(row[0]))

    def proved_count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM proved").fetchone()[0])

    def describe(self, record_id: str) -> None:
        self._conn.execute("INSERT OR IGNORE INTO described (id) VALUES (?)", (record_id,))

    def undescribed(self) -> Iterator[str]:
        """The records proved that no action described, in id order."""
        for (record_id,) in self._conn.execute(
                "SELECT id FROM proved WHERE id NOT IN (SELECT id FROM described) ORDER BY id").fetchall():
            yield record_id

    def close(self) -> None:
        self._conn.close()
        self._remove()
