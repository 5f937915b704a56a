"""``lineage-ledger graph -f dot``, streamed: every node and edge written as it is read.

DOT is text for Graphviz (or any other tool) to lay out, so nothing here needs the whole
graph at once: the file versions come back from the selection's on-disk index in order of
first mention, the tasks and their edges from the run read again a page at a time. What
must be remembered across versions (each path's status on disk, looked up once a path) is
kept in a private scratch SQLite file beside the index, not in a dict that grows with the
run. The bytes are those :func:`._graph.render_dot` writes of the model
:func:`._graph.build_graph` builds of the same selection (tests/test_graph_large.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Iterable, Iterator

from .._ledger.ledger import Ledger
from .._log.found import scratch_table
from ._names import display_path, file_key
from ._output import open_output
from ._select import _LOOK_AHEAD, _WINDOW, Selection, artifacts, members

__all__ = ["COLOURS", "dot_id", "dot_node", "graph_title", "scratch_file", "version_statuses", "write_dot"]

COLOURS = {
    "OK": "#2e7d32", "MODIFIED": "#ef6c00", "MISSING": "#6d4c41", "broken": "#c62828",
    "superseded": "#9e9e9e", "UNRECORDED": "#9e9e9e",
    "succeeded": "#1565c0", "cached": "#5e35b1", "failed": "#c62828",
}
_BUFFER = 1 << 20  # written a megabyte at a time


def dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def graph_title(selection: Selection) -> str:
    runs = selection.runs
    return f"lineage of {selection.count} task(s) in run(s) {', '.join(runs[:3])}" + (
        " ..." if len(runs) > 3 else "")


def dot_node(key: str, kind: str, label: str, status: str, *, is_dir: bool = False, digest: str = "") -> str:
    """One node's line: a task is a box, a file a note, a directory a folder."""
    colour = COLOURS.get(status, "#607d8b")
    shape = "box" if kind == "task" else "folder" if is_dir else "note"
    text = f"{label}\n{status}"
    if kind == "file":
        text += f" {digest[:12]}"
    return f"  {dot_id(key)} [shape={shape}, color={dot_id(colour)}, penwidth=2, label={dot_id(text)}];"


_made = itertools.count()


def scratch_file(directory: str, name: str, table: str) -> tuple[sqlite3.Connection, str]:
    """A new scratch SQLite file (``scratch_table``'s) in the selection's private directory,
    named afresh each time: one selection may be drawn more than once."""
    path = os.path.join(directory, f"{name}-{os.getpid()}-{next(_made)}.db")
    return scratch_table(path, table), path


class _PathChecks:
    """Each path's check against the disk (the version the ledger last saw of it, and the
    digest on disk), made once a path and kept on disk: a run names a path per task or more."""

    def __init__(self, ledger: Ledger, directory: str) -> None:
        self._ledger = ledger
        self._conn, self._path = scratch_file(
            directory, "graph-checks", "checks (path TEXT PRIMARY KEY, expected TEXT, actual TEXT, status TEXT NOT NULL)")

    def settle(self, paths: Iterable[str]) -> None:
        """Check the paths not checked yet, their index rows read ahead together
        (``Ledger.looking_ahead``: the same answers, a few statements for a window of paths
        instead of a few a path)."""
        from .._verification.verify import check_artifact

        new = [p for p in dict.fromkeys(paths)
               if self._conn.execute("SELECT 1 FROM checks WHERE path = ?", (p,)).fetchone() is None]
        ahead = self._ledger.looking_ahead(new) if len(new) >= _LOOK_AHEAD else contextlib.nullcontext()
        with ahead:
            for path in new:
                check = check_artifact(self._ledger, path)
                self._conn.execute("INSERT INTO checks VALUES (?, ?, ?, ?)",
                                   (path, check.expected, check.actual, check.status.value))

    def status(self, path: str, digest: str) -> str:
        """As :func:`._select.file_statuses` gives it, for a version not broken (its path settled)."""
        expected, actual, status = self._conn.execute(
            "SELECT expected, actual, status FROM checks WHERE path = ?", (path,)).fetchone()
        if digest == expected:
            return str(status)
        return "OK" if digest == actual else "superseded"  # OK: the disk holds this older version again

    def close(self) -> None:
        self._conn.close()
        os.unlink(self._path)


def version_statuses(ledger: Ledger, selection: Selection) -> Iterator[tuple[str, str, bool, str]]:
    """(path, digest, is_dir, status) of each version, in order of first mention: the status
    :func:`._select.file_statuses` gives it, each path checked on disk once."""
    index = selection.index()
    broken = selection.broken  # the versions read that nobody made although the path was made: few
    checks = _PathChecks(ledger, index.directory)
    try:
        versions = index.versions()
        while window := [(path, digest, is_dir) for path, digest, _size, is_dir, _aliases
                         in itertools.islice(versions, _WINDOW)]:
            checks.settle(path for path, digest, _ in window if (path, digest) not in broken)
            for path, digest, is_dir in window:
                yield path, digest, is_dir, "broken" if (path, digest) in broken else checks.status(path, digest)
    finally:
        checks.close()


_HEAD, _NODE, _EDGE = 0, 1, 2


def _file_id(path: str, digest: str) -> str:
    return dot_id(f"f:{file_key(path, digest)}")


def _lines(ledger: Ledger, selection: Selection) -> Iterator[tuple[int, str]]:
    """(what, line) of each line: the header, the file versions, the tasks, the edges."""
    for line in ("digraph lineage {", "  rankdir=LR;", '  node [fontname="sans-serif", fontsize=10];',
                 f"  label={dot_id(graph_title(selection))};"):
        yield _HEAD, line
    for path, digest, is_dir, status in version_statuses(ledger, selection):
        label = display_path(path) + ("/" if is_dir else "")
        yield _NODE, dot_node(f"f:{file_key(path, digest)}", "file", label, status, is_dir=is_dir, digest=digest)
    for entry in selection.records():  # the tasks, then (read again) their edges
        record = entry.record
        yield _NODE, dot_node(f"t:{entry.id}", "task", f"{record.engine}:{record.task_name}", record.status)
    for entry in selection.records():
        task = dot_id(f"t:{entry.id}")
        for path, art in artifacts(entry.record.inputs):
            yield _EDGE, f"  {_file_id(path, art['blake3'])} -> {task};"
        for path, art in artifacts(entry.record.outputs):
            yield _EDGE, f"  {task} -> {_file_id(path, art['blake3'])};"
    for (path, digest), (dir_path, dir_digest) in members(ledger, selection).items():
        yield _EDGE, f"  {_file_id(dir_path, dir_digest)} -> {_file_id(path, digest)};"
    yield _HEAD, "}"


def write_dot(ledger: Ledger, selection: Selection, path: str) -> tuple[int, int]:
    """Write the selection's graph as DOT to ``path``; (nodes, edges) written."""
    nodes = edges = 0
    # A run found cut short in the ledger (its counts are checked after the last page)
    # leaves no half graph that looks whole: open_output renames the file into place only
    # once every line is written.
    with open_output(path, buffering=_BUFFER, parents=True) as handle:
        for what, line in _lines(ledger, selection):
            nodes += what == _NODE
            edges += what == _EDGE
            handle.write(line)
            handle.write("\n")
    return nodes, edges
