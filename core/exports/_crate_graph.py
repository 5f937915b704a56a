"""A crate's ``@graph`` kept on disk while it is built, and ``ro-crate-metadata.json`` written
from there an entity at a time.

``rocrate`` holds every entity as an object until the crate is written whole, and the
exporter's lists of references grow with the run (the root's ``hasPart`` and ``mentions``, a
parameter's ``workExample``, a run's objects): 624 MB for a 10,000-task run. Here each
entity's own properties are one row of a private scratch SQLite file, in the order the entity
was first added, and each reference appended to one of its lists is a row of its own; the
metadata is then written entity by entity, each list read back as it is written.

The rules are ``rocrate``'s and the exporter's, so that the file is the one ``crate.write``
gave, byte for byte (``tests/test_export_streaming.py`` compares the two):

* an entity added again under the same id (``ROCrate.resolve_id``'s canonical form) takes the
  first one's place, and the references appended to the first are dropped with it; a data
  entity new to the crate is appended to the root's ``hasPart`` (``ROCrate.add``);
* appending to a property that holds one value makes it a list of that value (``append_to``);
* a top-level list of one element is written as that element, an empty one not at all, except
  ``@type`` (the exporter's ``_compact``);
* the text is ``json.dumps(metadata, indent=4, sort_keys=True, ensure_ascii=False)``'s.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .._log.found import scratch_table
from ._json_stream import INDENT, indented

__all__ = ["CrateGraph"]

_GATHER = 1000  # an entity with more references appended than this has its lists written as read
_BATCH = 10_000  # references gathered before they are inserted
_END = object()


class _Refs:
    """The references, in the order they are written: by entity, property, then appended."""

    def __init__(self, rows: Iterator[tuple[int, str, str]]) -> None:
        self._rows = rows
        self.row = next(rows, None)

    def next_property(self, seq: int) -> str | None:
        return self.row[1] if self.row is not None and self.row[0] == seq else None

    def gather(self, seq: int, limit: int) -> list[tuple[int, str, str]]:
        """The next rows of entity ``seq``, up to ``limit`` of them."""
        rows: list[tuple[int, str, str]] = []
        while self.row is not None and self.row[0] == seq and len(rows) < limit:
            rows.append(self.row)
            self.row = next(self._rows, None)
        return rows

    def unread(self, rows: list[tuple[int, str, str]]) -> None:
        """Put rows :meth:`gather` gave back in front."""
        if rows:
            self._rows = itertools.chain(rows[1:], [] if self.row is None else [self.row], self._rows)
            self.row = rows[0]

    def take(self, seq: int, prop: str) -> Iterator[dict[str, str]]:
        while self.row is not None and self.row[0] == seq and self.row[1] == prop:
            yield {"@id": self.row[2]}
            self.row = next(self._rows, None)


class CrateGraph:
    """Entities (JSON-LD objects with an ``@id``) and references appended to their lists."""

    def __init__(self, resolve: Callable[[str], str], base: str) -> None:
        """``resolve``: the crate's canonical id of an id (``ROCrate.resolve_id``), ``base`` the
        URI it resolves relative ids against."""
        self._resolve, self._base = resolve, base
        self._directory = tempfile.mkdtemp(prefix="lineage-crate-")  # private: mode 0700
        self._remove = weakref.finalize(self, shutil.rmtree, self._directory, True)
        self.db: sqlite3.Connection = scratch_table(
            os.path.join(self._directory, "graph.db"),
            "entities (seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
        self.db.execute("CREATE TABLE refs (entity INTEGER NOT NULL, prop TEXT NOT NULL, target TEXT NOT NULL)")
        self.db.execute("CREATE INDEX refs_of ON refs (entity, prop)")  # rowid last: appended order
        self.root = 0  # the root data entity's seq, once added
        self._appended: list[tuple[int, str, str]] = []  # references not yet inserted

    def key(self, ident: str) -> str:
        # A fragment id resolves to the base with it appended: urljoin's work (most of the
        # entities are such) spared, the same key.
        return self._base + ident.rstrip("/") if ident.startswith("#") else self._resolve(ident)

    def add(self, body: dict[str, Any], *, data: bool = False) -> int:
        """Add an entity (or replace the one of its id, in its place); its seq."""
        # Kept as the text it is written as when nothing is appended to it (most entities; the
        # text is JSON, and compacting changes nothing that appending to a list relies on).
        key, text = self.key(body["@id"]), indented(_compact(body), 2)
        try:
            seq = self.db.execute("INSERT INTO entities (key, body) VALUES (?, ?)", (key, text)).lastrowid
        except sqlite3.IntegrityError:  # rocrate: the entity map's value replaced, its place kept
            (seq,) = self.db.execute("SELECT seq FROM entities WHERE key = ?", (key,)).fetchone()
            self.db.execute("UPDATE entities SET body = ? WHERE seq = ?", (text, seq))
            self.flush()
            self.db.execute("DELETE FROM refs WHERE entity = ?", (seq,))
            return int(seq)
        assert seq is not None
        if data:
            self.append(self.root, "hasPart", body["@id"])
        return seq

    def update(self, seq: int, body: dict[str, Any]) -> None:
        """New properties for an entity, its appended references kept."""
        self.db.execute("UPDATE entities SET body = ? WHERE seq = ?", (indented(_compact(body), 2), seq))

    def append(self, seq: int, prop: str, target: str) -> None:
        """Append a reference to entity ``target`` to the list ``prop`` of entity ``seq``."""
        self._appended.append((seq, prop, target))
        if len(self._appended) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Insert the references appended so far (a statement each was most of the time)."""
        self.db.executemany("INSERT INTO refs (entity, prop, target) VALUES (?, ?, ?)", self._appended)
        self._appended.clear()

    def append_selected(self, seq: int, prop: str, select: str, params: tuple[Any, ...]) -> None:
        """Append the ids a query of the scratch file gives (columns ``target`` and ``place``),
        in order of place (rows are inserted, and given their rowids, in the order selected)."""
        self.flush()
        self.db.execute(f"INSERT INTO refs (entity, prop, target) SELECT ?, ?, target FROM ({select}) ORDER BY place",
                        (seq, prop, *params))

    def write(self, path: str, context: Any) -> None:
        """``ro-crate-metadata.json`` at ``path``: ``{"@context": context, "@graph": [...]}``."""
        self.flush()
        entities = self.db.execute("SELECT seq, body FROM entities ORDER BY seq")
        refs = _Refs(iter(self.db.execute("SELECT entity, prop, target FROM refs ORDER BY entity, prop, rowid")))
        with open(path, "w", encoding="utf-8", newline="", buffering=1 << 20) as handle:
            write = handle.write  # buffered by the file: a piece is a write
            write("{\n" + INDENT + '"@context": ' + indented(context, 1) + ",\n" + INDENT + '"@graph": [')
            first = True
            for seq, body in entities:
                write(("\n" if first else ",\n") + INDENT * 2)
                first = False
                if refs.next_property(seq) is None:
                    write(body)
                else:
                    self._entity(write, seq, json.loads(body), refs)
            write("\n" + INDENT + "]\n}")
        assert refs.row is None, "a reference to no entity"

    @staticmethod
    def _entity(write: Callable[[str], Any], seq: int, body: dict[str, Any], refs: _Refs) -> None:
        """One entity at nesting level 2 with references appended to it: its properties and
        references merged in sorted order, each list compacted; when there are many, written
        as they are read."""
        gathered = refs.gather(seq, _GATHER)
        if refs.next_property(seq) is None:  # a few: merged, then written as one value
            lists: dict[str, list[Any]] = {}
            for _, name, target in gathered:
                if name not in lists:
                    lists[name] = [] if name not in body else body[name] if isinstance(body[name], list) else [body[name]]
                lists[name].append({"@id": target})
            write(indented(_compact({**body, **lists}), 2))
            return
        refs.unread(gathered)
        keys = sorted(body)
        at = written = 0
        while True:
            prop = refs.next_property(seq)
            key = keys[at] if at < len(keys) else None
            if prop is not None and (key is None or prop <= key):
                name, head = prop, list[Any]()
                if prop == key:  # a list the entity began with (or one value), then what was appended
                    head = body[key] if isinstance(body[key], list) else [body[key]]
                    at += 1
                items = _chain(head, refs.take(seq, prop))
            elif key is not None:
                name, value = key, body[key]
                at += 1
                if name == "@type" or not isinstance(value, list):
                    write(_member(written, name, indented(value, 3)))
                    written += 1
                    continue
                items = iter(value)
            else:
                break
            first, second = next(items, _END), next(items, _END)
            if first is _END:
                continue  # an empty list is left out
            if second is _END:
                write(_member(written, name, indented(first, 3)))
            else:
                write(_member(written, name, "[\n" + INDENT * 4 + indented(first, 4)))
                for item in _chain([second], items):
                    write(",\n" + INDENT * 4 + indented(item, 4))
                write("\n" + INDENT * 3 + "]")
            written += 1
        write("\n" + INDENT * 2 + "}" if written else "{}")

    def close(self) -> None:
        self.db.close()
        self._remove()


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    """RO-Crate 1.1 prefers single values to one-element lists, and no empty lists."""
    return {key: value[0] if isinstance(value, list) and len(value) == 1 and key != "@type" else value
            for key, value in body.items() if key == "@type" or not isinstance(value, list) or value}


def _member(written: int, name: str, text: str) -> str:
    return ("{" if not written else ",") + "\n" + INDENT * 3 + indented(name, 3) + ": " + text


def _chain(head: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from rest
