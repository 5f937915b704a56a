"""Which records an export or a graph describes, and what is known about each file version.

An export names targets (their lineage back to the sources) or a run, or both (the
lineage, restricted to that run). Every record comes from the ledger's proved reads: the
ledger verified its bytes and its place in the tree before answering.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from .._errors import ConfigError
from .._files.hashing import normalize_path, walk_files
from .._files.manifest import is_manifest_record
from .._ledger.ledger import Ledger, LedgerRecord, LineageNode
from .._ledger.lineage import walk_lineage
from .._log.trust import TreeHead
from .._model import is_alias
from ._stream import VersionIndex, run_records

__all__ = ["FileVersion", "RunSummary", "Selection", "aliases_in", "artifacts", "file_statuses", "members", "select"]


@dataclass(frozen=True)
class FileVersion:
    """One version of a file or directory: a path with the digest a record read or wrote
    (a directory's is its manifest digest, docs/directories.md), and the other spellings
    (paths through symbolic links) the records gave it."""

    path: str
    digest: str
    size: int
    is_dir: bool = False
    aliases: tuple[str, ...] = ()


def artifacts(side: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """A record's inputs or outputs less the alias entries: an alias repeats the entry of its
    real path (docs/directories.md), so it is one more name of that version, not another."""
    return [(path, art) for path, art in side.items() if not is_alias(art)]


def aliases_in(side: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """{real path: [the paths as given that lead to it]} of a record's inputs or outputs."""
    found: dict[str, list[str]] = {}
    for path, art in side.items():
        if is_alias(art):
            found.setdefault(art["alias_of"], []).append(path)
    return found


@dataclass
class RunSummary:
    """What the run-level parts of an export say of one run: its first task's engine, its
    span, whether a task failed, how many tasks it has."""

    engine: str
    started: datetime
    ended: datetime
    failed: bool = False
    tasks: int = 0


class Selection:
    """The records an export describes, in ledger order, and the tree head they are proved in.

    A run's records are not held: :meth:`records` reads them again, a page at a time, each
    time it is called, and :meth:`index` keeps the file versions on disk (``_stream``).
    :attr:`entries` holds them all, for the formats that build their document whole."""

    def __init__(self, entries: list[LedgerRecord] | None, head: TreeHead,
                 broken: set[tuple[str, str]] | None = None, *,
                 source: Callable[[], Iterator[LedgerRecord]] | None = None,
                 find_broken: Callable[[Selection], set[tuple[str, str]]] | None = None) -> None:
        self._held, self._source = entries, source
        self.head = head
        self._broken = broken
        self._find_broken = find_broken
        self._index: VersionIndex | None = None
        self._summaries: dict[str, RunSummary] | None = None

    @property
    def broken(self) -> set[tuple[str, str]]:
        """Versions consumed that no recorded task produced although the path was produced:
        the file changed between being written and being read ("broken" lineage). Looked
        up when first asked (the graph asks; the exports do not)."""
        if self._broken is None:
            self._broken = self._find_broken(self) if self._find_broken is not None else set()
        return self._broken

    def records(self) -> Iterator[LedgerRecord]:
        """The task records, in ledger order (read again from the ledger for a run)."""
        if self._held is not None or self._source is None:
            return iter(self._held or [])
        return (e for e in self._source() if not is_manifest_record(e.record))

    @property
    def entries(self) -> list[LedgerRecord]:
        if self._held is None:
            self._held = list(self.records())
        return self._held

    def scan(self) -> None:
        """One pass over the records: the per-run summaries and the version index."""
        if self._summaries is not None:
            return
        index = VersionIndex()
        summaries: dict[str, RunSummary] = {}
        try:
            for entry in self.records():
                record = entry.record
                summary = summaries.get(record.run_id)
                if summary is None:
                    summary = summaries[record.run_id] = RunSummary(record.engine, record.started, record.ended)
                summary.started = min(summary.started, record.started)
                summary.ended = max(summary.ended, record.ended)
                summary.failed |= record.status == "failed"
                summary.tasks += 1
                index.add(record)
        except BaseException:
            index.close()
            raise
        self._index, self._summaries = index, summaries

    def index(self) -> VersionIndex:
        self.scan()
        assert self._index is not None
        return self._index

    @property
    def summaries(self) -> dict[str, RunSummary]:
        """{run id: its summary}, in order of each run's first task."""
        self.scan()
        assert self._summaries is not None
        return self._summaries

    @property
    def count(self) -> int:
        return sum(s.tasks for s in self.summaries.values())

    @property
    def runs(self) -> list[str]:
        return list(self.summaries)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def __enter__(self) -> Selection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def versions(self) -> dict[tuple[str, str], FileVersion]:
        """Every file (and directory) version the records read or wrote, in order of first
        mention, each with every alias any record gave it."""
        return {(path, digest): FileVersion(path, digest, size, is_dir, aliases)
                for path, digest, size, is_dir, aliases in self.index().versions()}

    def version(self, path: str, digest: str) -> FileVersion | None:
        """One version of :meth:`versions`, looked up on disk (a writer that streams holds none)."""
        found = self.index().version(path, digest)
        return None if found is None else FileVersion(path, digest, *found)

    def producer_of(self) -> dict[tuple[str, str], LedgerRecord]:
        """The last selected record that wrote each version (a rerun that wrote the same bytes
        again is a later producer of the same version)."""
        made: dict[tuple[str, str], LedgerRecord] = {}
        for entry in self.records():
            for path, art in artifacts(entry.record.outputs):
                made[(path, art["blake3"])] = entry
        return made


def members(ledger: Ledger, selection: Selection) -> dict[tuple[str, str], tuple[str, str]]:
    """{file version: the selected directory version it lies in}: a task that read one file
    from a directory another task wrote (docs/directories.md) is linked to that directory
    through the directory's manifest (proved, and hashed to the directory's digest), which
    must list the file with the digest the task read."""
    index = selection.index()
    if not index.has_dirs:
        return {}  # the common case: no version is read twice to learn it
    directories = [FileVersion(p, d, s, i, a) for p, d, s, i, a in index.versions(dirs_only=True)]
    found: dict[tuple[str, str], tuple[str, str]] = {}
    listed: dict[str, dict[str, str]] = {}  # per directory digest: {relative path: file digest}
    for path, digest, _size, is_dir, _aliases in index.versions():
        for directory in directories:
            if is_dir or not path.startswith(directory.path.rstrip(os.sep) + os.sep):
                continue
            if directory.digest not in listed:
                manifest = ledger.manifest(directory.digest)
                listed[directory.digest] = {} if manifest is None else {
                    e[0]: e[2] for e in manifest.entries if e[1] == "file"}
            relative = os.path.relpath(path, directory.path).replace(os.sep, "/")
            if listed[directory.digest].get(relative) == digest:
                found[(path, digest)] = (directory.path, directory.digest)
    return found


def _expand(ledger: Ledger, targets: Iterable[str]) -> list[str]:
    """The paths to export: a directory some record names is one artifact; any other
    directory stands for the files below it."""
    paths: list[str] = []
    for target in targets:
        normal = normalize_path(target)
        recorded = os.path.isdir(normal) and ledger.last_seen(normal) is not None
        paths.extend(walk_files(normal) if os.path.isdir(normal) and not recorded else [normal])
    return paths


def _walk(node: LineageNode, found: dict[str, LedgerRecord], broken: set[tuple[str, str]]) -> None:
    for current in walk_lineage(node):
        if current.producer is not None:
            found[current.producer.id] = current.producer
        if current.kind == "broken" and current.digest is not None:
            broken.add((current.path, current.digest))


def select(ledger: Ledger, targets: Iterable[str] = (), run_id: str | None = None) -> Selection:
    """The records describing ``targets``' lineage, or run ``run_id``, or both (the lineage's
    records of that run). Raises ConfigError when nothing is named or nothing is found.
    A run alone is read a page at a time (:meth:`Selection.records`), never held."""
    paths = _expand(ledger, targets)
    if not paths and run_id is None:
        raise ConfigError("name the files to export (TARGET...) or a run (--run RUN)")
    head = ledger.tree_head()
    if not paths:
        return _run_selection(ledger, run_id or "", head)
    found: dict[str, LedgerRecord] = {}
    broken: set[tuple[str, str]] = set()
    memo: dict = {}
    for path in paths:
        node = ledger.lineage(path, memo=memo)
        if node.kind == "source" and not ledger.consumers(path):
            raise ConfigError(f"{path}: no record in the ledger read or wrote it")
        _walk(node, found, broken)
        # A source target (only ever read): its consumers are what there is to show.
        if node.kind == "source":
            for consumer in ledger.consumers(path):
                found[consumer.id] = consumer
    if run_id is not None:
        found = {k: v for k, v in found.items() if v.record.run_id == run_id}
    if not found:
        what = f"run {run_id!r}" if run_id is not None else "these targets"
        raise ConfigError(f"no record in the ledger describes {what}")
    # Manifest records keep directory listings; they are no tasks.
    entries = sorted((e for e in found.values() if not is_manifest_record(e.record)), key=lambda e: e.order)
    if not entries:
        raise ConfigError(f"no task record in the ledger describes {run_id or 'these targets'!r}")
    return Selection(entries, head, broken)


def _run_selection(ledger: Ledger, run_id: str, head: TreeHead) -> Selection:
    selection = Selection(None, head, source=lambda: run_records(ledger, run_id),
                          find_broken=lambda chosen: _broken_inputs(ledger, chosen))
    try:
        selection.scan()
        if not selection.summaries:
            any_record = next(iter(ledger.run_last(run_id, 1)[0]), None)
            raise ConfigError(f"no task record in the ledger describes {run_id!r}" if any_record
                              else f"no record in the ledger describes run {run_id!r}")
    except BaseException:
        selection.close()
        raise
    return selection


# Versions checked a window at a time, their paths' index rows read ahead together when
# there are enough of them (as verify-lineage of many files does).
_WINDOW, _LOOK_AHEAD = 5_000, 16


def _broken_inputs(ledger: Ledger, selection: Selection) -> set[tuple[str, str]]:
    broken = set()
    versions = selection.index().unmade_inputs()  # each version once
    while window := list(islice(versions, _WINDOW)):
        # Their index rows read ahead together, as verify-lineage reads a directory's: the
        # producers one look-up reads answer the other (the graph of a 10,000-task run).
        paths = [path for path, _digest in window]
        with ledger.looking_ahead(paths) if len(window) >= _LOOK_AHEAD else contextlib.nullcontext():
            for path, digest in window:
                # Most are sources, which nothing ever wrote: one look at the path's latest
                # writer settles those (it was two look-ups each, 5 s of a 10,000-task run's export).
                if ledger.last_seen(path, ("out",)) is not None and not ledger.producers(path, digest):
                    broken.add((path, digest))
    return broken


def file_statuses(ledger: Ledger, selection: Selection) -> dict[tuple[str, str], str]:
    """The verification status of each file version: the version the ledger last saw of a
    path is compared with the disk (``OK``, ``MODIFIED``, ``MISSING``); a version consumed
    that nobody produced is ``broken``; an older version is ``superseded``."""
    from .._verification.verify import check_artifact

    checks = {}
    statuses: dict[tuple[str, str], str] = {}
    for key in selection.versions():
        path, digest = key
        if key in selection.broken:
            statuses[key] = "broken"
            continue
        if path not in checks:
            checks[path] = check_artifact(ledger, path)
        check = checks[path]
        if digest == check.expected:
            statuses[key] = check.status.value
        elif digest == check.actual:
            statuses[key] = "OK"  # the disk holds this older version again
        else:
            statuses[key] = "superseded"
    return statuses
