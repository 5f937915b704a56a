"""Which records an export or a graph describes, and what is known about each file version.

An export names targets (their lineage back to the sources) or a run, or both (the
lineage, restricted to that run). Every record comes from the ledger's proved reads: the
ledger verified its bytes and its place in the tree before answering.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError
from .._files.hashing import normalize_path, walk_files
from .._files.manifest import is_manifest_record
from .._ledger.ledger import Ledger, LedgerRecord, LineageNode
from .._ledger.lineage import walk_lineage
from .._log.trust import TreeHead
from .._model import is_alias

__all__ = ["FileVersion", "Selection", "aliases_in", "artifacts", "file_statuses", "members", "select"]


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
class Selection:
    """The records an export describes, in ledger order, and the tree head they are proved in."""

    entries: list[LedgerRecord]
    head: TreeHead
    # Versions consumed that no recorded task produced although the path was produced:
    # the file changed between being written and being read ("broken" lineage).
    broken: set[tuple[str, str]] = field(default_factory=set)

    @property
    def runs(self) -> list[str]:
        return list(dict.fromkeys(e.record.run_id for e in self.entries))

    def versions(self) -> dict[tuple[str, str], FileVersion]:
        """Every file (and directory) version the records read or wrote, in order of first
        mention, each with every alias any record gave it."""
        found: dict[tuple[str, str], FileVersion] = {}
        names: dict[tuple[str, str], dict[str, None]] = {}
        for entry in self.entries:
            for side in (entry.record.inputs, entry.record.outputs):
                given = aliases_in(side)
                for path, art in artifacts(side):
                    key = (path, art["blake3"])
                    found.setdefault(key, FileVersion(path, art["blake3"], art["size"], art.get("type") == "dir"))
                    names.setdefault(key, {}).update(dict.fromkeys(given.get(path, ())))
        return {key: FileVersion(v.path, v.digest, v.size, v.is_dir, tuple(names[key])) if names[key] else v
                for key, v in found.items()}

    def producer_of(self) -> dict[tuple[str, str], LedgerRecord]:
        """The last selected record that wrote each version (a rerun that wrote the same bytes
        again is a later producer of the same version)."""
        made: dict[tuple[str, str], LedgerRecord] = {}
        for entry in self.entries:
            for path, art in artifacts(entry.record.outputs):
                made[(path, art["blake3"])] = entry
        return made


def members(ledger: Ledger, selection: Selection) -> dict[tuple[str, str], tuple[str, str]]:
    """{file version: the selected directory version it lies in}: a task that read one file
    from a directory another task wrote (docs/directories.md) is linked to that directory
    through the directory's manifest (proved, and hashed to the directory's digest), which
    must list the file with the digest the task read."""
    versions = selection.versions()
    directories = [v for v in versions.values() if v.is_dir]
    found: dict[tuple[str, str], tuple[str, str]] = {}
    listed: dict[str, dict[str, str]] = {}  # per directory digest: {relative path: file digest}
    for key, version in versions.items() if directories else ():
        for directory in directories:
            if version.is_dir or not version.path.startswith(directory.path.rstrip(os.sep) + os.sep):
                continue
            if directory.digest not in listed:
                manifest = ledger.manifest(directory.digest)
                listed[directory.digest] = {} if manifest is None else {
                    e[0]: e[2] for e in manifest.entries if e[1] == "file"}
            relative = os.path.relpath(version.path, directory.path).replace(os.sep, "/")
            if listed[directory.digest].get(relative) == version.digest:
                found[key] = (directory.path, directory.digest)
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
    records of that run). Raises ConfigError when nothing is named or nothing is found."""
    paths = _expand(ledger, targets)
    if not paths and run_id is None:
        raise ConfigError("name the files to export (TARGET...) or a run (--run RUN)")
    head = ledger.tree_head()
    found: dict[str, LedgerRecord] = {}
    broken: set[tuple[str, str]] = set()
    if paths:
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
    else:
        found = {entry.id: entry for entry in ledger.run(run_id or "")}
    if not found:
        what = f"run {run_id!r}" if run_id is not None else "these targets"
        raise ConfigError(f"no record in the ledger describes {what}")
    # Manifest records keep directory listings; they are no tasks.
    entries = sorted((e for e in found.values() if not is_manifest_record(e.record)), key=lambda e: e.order)
    if not entries:
        raise ConfigError(f"no task record in the ledger describes {run_id or 'these targets'!r}")
    selection = Selection(entries, head, broken)
    if not paths:
        selection.broken = _broken_inputs(ledger, selection)
    return selection


def _broken_inputs(ledger: Ledger, selection: Selection) -> set[tuple[str, str]]:
    made = selection.producer_of()
    broken, looked = set(), set()
    for entry in selection.entries:
        for path, art in artifacts(entry.record.inputs):
            key = (path, art["blake3"])
            if key in made or key in looked:
                continue
            looked.add(key)  # a reference file read by every task is looked up once
            if not ledger.producers(path, art["blake3"]) and ledger.producers(path):
                broken.add(key)
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
