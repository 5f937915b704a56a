"""Which records an export or a graph describes, and what is known about each file version.

An export names targets (their lineage back to the sources) or a run, or both (the
lineage, restricted to that run). Every record comes from the ledger's proved reads: the
ledger verified its bytes and its place in the tree before answering.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._errors import ConfigError
from .._hashing import normalize_path, walk_files
from .._ledger import Ledger, LedgerRecord, LineageNode
from .._trust import TreeHead

__all__ = ["FileVersion", "Selection", "file_statuses", "select"]


@dataclass(frozen=True)
class FileVersion:
    """One version of a file: a path with the digest a record read or wrote."""

    path: str
    digest: str
    size: int


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
        """Every file version the records read or wrote, in order of first mention."""
        found: dict[tuple[str, str], FileVersion] = {}
        for entry in self.entries:
            for side in (entry.record.inputs, entry.record.outputs):
                for path, art in side.items():
                    found.setdefault((path, art["blake3"]), FileVersion(path, art["blake3"], art["size"]))
        return found

    def producer_of(self) -> dict[tuple[str, str], LedgerRecord]:
        """The last selected record that wrote each version (a rerun that wrote the same bytes
        again is a later producer of the same version)."""
        made: dict[tuple[str, str], LedgerRecord] = {}
        for entry in self.entries:
            for path, art in entry.record.outputs.items():
                made[(path, art["blake3"])] = entry
        return made


def _expand(targets: Iterable[str]) -> list[str]:
    paths: list[str] = []
    for target in targets:
        normal = normalize_path(target)
        paths.extend(walk_files(normal) if os.path.isdir(normal) else [normal])
    return paths


def _walk(node: LineageNode, found: dict[str, LedgerRecord], broken: set[tuple[str, str]]) -> None:
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.producer is not None:
            found[current.producer.id] = current.producer
        if current.kind == "broken" and current.digest is not None:
            broken.add((current.path, current.digest))
        stack.extend(current.parents)


def select(ledger: Ledger, targets: Iterable[str] = (), run_id: str | None = None) -> Selection:
    """The records describing ``targets``' lineage, or run ``run_id``, or both (the lineage's
    records of that run). Raises ConfigError when nothing is named or nothing is found."""
    paths = _expand(targets)
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
    entries = sorted(found.values(), key=lambda e: e.order)
    selection = Selection(entries, head, broken)
    if not paths:
        selection.broken = _broken_inputs(ledger, selection)
    return selection


def _broken_inputs(ledger: Ledger, selection: Selection) -> set[tuple[str, str]]:
    made = selection.producer_of()
    broken, looked = set(), set()
    for entry in selection.entries:
        for path, art in entry.record.inputs.items():
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
    from .._verify import check_artifact

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
