"""The folded view of a selection too large to hold: ``graph -f svg --group rule|run``.

Past ``MAX_DRAWN`` nodes the model of every node is not built (:mod:`._graph`), but a run of
100,000 tasks of a dozen rules folds into a couple of dozen boxes: a picture worth drawing.
The view is the one :func:`._graph._view` lays out of the whole model (the same boxes, edge
counts, order and so coordinates), made here from the run read a page at a time: each file
version's status, producer and first reader kept in a private scratch SQLite file beside
the selection's index, and only the boxes (one member each) and the counted edges between
them in memory. The boxes keep no list of their members: the SVG names none.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from .._ledger.ledger import Ledger
from ._graph_dot import scratch_file, version_statuses
from ._layout import layout
from ._names import display_path, file_key
from ._select import Selection, artifacts, members

__all__ = ["folded_view"]

# Worst first (as ._graph's): a folded box takes the colour of its worst member.
_SEVERITY = ["broken", "MODIFIED", "failed", "MISSING", "superseded", "UNRECORDED", "cached", "OK", "succeeded"]


def _rank(status: str) -> int:
    return _SEVERITY.index(status) if status in _SEVERITY else len(_SEVERITY)


class _Boxes:
    """The boxes of a view in order of their first member: a count, the worst status and the
    first member's fields (a box of one is drawn as that member, under its id)."""

    def __init__(self) -> None:
        self.boxes: dict[str, list[Any]] = {}

    def add(self, group: str, key: str, node: dict[str, Any]) -> None:
        box = self.boxes.get(group)
        if box is None:
            self.boxes[group] = [1, key, node, node["status"]]
            return
        box[0] += 1
        if _rank(node["status"]) < _rank(box[3]):
            box[3] = node["status"]

    def final(self, group: str) -> str:
        box = self.boxes[group]
        return box[1] if box[0] == 1 else group

    def nodes(self) -> dict[str, dict[str, Any]]:
        drawn: dict[str, dict[str, Any]] = {}
        for group, (count, key, first, worst) in self.boxes.items():
            if count == 1:
                drawn[key] = {"id": key, **first}
                continue
            kind, name = first["kind"], group.split("|", 1)[1]
            label = f"{name} ×{count}" if kind == "task" else f"{count} files: {name}"
            drawn[group] = {"id": group, "kind": "group", "of": kind, "label": label, "status": worst,
                            "engine": first.get("engine"), "rule": first.get("rule"), "run": first.get("run")}
        return drawn


def _task_node(record: Any) -> dict[str, Any]:
    rule = f"{record.engine}:{record.task_name}"
    return {"kind": "task", "label": rule, "status": record.status, "engine": record.engine,
            "run": record.run_id, "rule": rule}


def _task_group(node: dict[str, Any], by: str) -> str:
    return f"g:t|{node['rule'] if by == 'rule' else node['run']}"


def _files(ledger: Ledger, selection: Selection, by: str, boxes: _Boxes, conn: sqlite3.Connection) -> None:
    """Each version's producer (the last selected writer) and first reader, then its box."""
    for seq, (path, digest, is_dir, status) in enumerate(version_statuses(ledger, selection)):
        conn.execute("INSERT INTO files (key, seq, path, digest, is_dir, status) VALUES (?, ?, ?, ?, ?, ?)",
                     (f"f:{file_key(path, digest)}", seq, path, digest, int(is_dir), status))
    for entry in selection.records():
        task = _task_node(entry.record)
        for path, art in artifacts(entry.record.inputs):
            conn.execute("UPDATE files SET read_rule = ?, read_run = ? WHERE key = ? AND read_rule IS NULL",
                         (task["rule"], task["run"], f"f:{file_key(path, art['blake3'])}"))
        for path, art in artifacts(entry.record.outputs):
            conn.execute("UPDATE files SET made_by = ?, made_rule = ?, made_run = ? WHERE key = ?",
                         (f"t:{entry.id}", task["rule"], task["run"], f"f:{file_key(path, art['blake3'])}"))
    conn.execute("CREATE TABLE boxes (key TEXT PRIMARY KEY, box TEXT NOT NULL)")
    rows = conn.execute("SELECT key, path, digest, is_dir, status, made_by, made_rule, made_run, read_rule, read_run"
                        " FROM files ORDER BY seq")
    for key, path, digest, is_dir, status, made_by, made_rule, made_run, read_rule, read_run in _chunks(rows):
        if made_by is not None:
            rule, run = made_rule, made_run
        else:  # a source takes the rule (run) of its first reader
            rule = f"inputs of {read_rule}" if read_rule is not None else "sources"
            run = read_run
        group = "g:f|" + (str(rule) if by == "rule" else f"{'outputs' if made_by else 'sources'} of run {run}")
        conn.execute("INSERT INTO boxes VALUES (?, ?)", (key, group))
        boxes.add(group, key, {"kind": "file", "type": "dir" if is_dir else "file",
                               "label": display_path(path) + ("/" if is_dir else ""), "path": path,
                               "digest": digest, "status": status, "producer": made_by, "rule": rule, "run": run})


def _chunks(cursor: sqlite3.Cursor) -> Iterator[Any]:
    """The rows of a query, a thousand fetched at a time (the cursor's own rows, not a list)."""
    while True:
        rows = cursor.fetchmany(1000)
        if not rows:
            return
        yield from rows


def folded_view(ledger: Ledger, selection: Selection, by: str, most: int) -> dict[str, Any] | None:
    """The view of the selection folded ``by`` rule or run, laid out; None when it has more
    than ``most`` boxes (a run per task, folded by run)."""
    conn, scratch = scratch_file(
        selection.index().directory, "graph-fold",
        "files (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, path TEXT NOT NULL, digest TEXT NOT NULL,"
        " is_dir INTEGER NOT NULL, status TEXT NOT NULL, made_by TEXT, made_rule TEXT, made_run TEXT,"
        " read_rule TEXT, read_run TEXT)")
    try:
        boxes = _Boxes()
        _files(ledger, selection, by, boxes, conn)
        for entry in selection.records():
            task = _task_node(entry.record)
            boxes.add(_task_group(task, by), f"t:{entry.id}", task)
            if len(boxes.boxes) > most:
                return None
        if len(boxes.boxes) > most:
            return None

        def box_of(key: str) -> str:
            row = conn.execute("SELECT box FROM boxes WHERE key = ?", (key,)).fetchone()
            return boxes.final(row[0])

        counted: dict[tuple[str, str], int] = {}
        for entry in selection.records():
            box = boxes.final(_task_group(_task_node(entry.record), by))
            for path, art in artifacts(entry.record.inputs):
                pair = (box_of(f"f:{file_key(path, art['blake3'])}"), box)
                counted[pair] = counted.get(pair, 0) + 1
            for path, art in artifacts(entry.record.outputs):
                pair = (box, box_of(f"f:{file_key(path, art['blake3'])}"))
                counted[pair] = counted.get(pair, 0) + 1
        for (path, digest), (dir_path, dir_digest) in members(ledger, selection).items():
            pair = (box_of(f"f:{file_key(dir_path, dir_digest)}"), box_of(f"f:{file_key(path, digest)}"))
            counted[pair] = counted.get(pair, 0) + 1
    finally:
        conn.close()
        os.unlink(scratch)
    nodes = boxes.nodes()
    edges = [(s, d, c) for (s, d), c in counted.items() if s != d]
    for key, (x, y) in layout(list(nodes), [(s, d) for s, d, _ in edges]).items():
        nodes[key]["x"], nodes[key]["y"] = x, y
    return {"nodes": list(nodes.values()), "edges": [{"from": s, "to": d, "count": c} for s, d, c in edges]}
