"""Lineage queries of the ledger: the tree of versions a file derives from, and directories
(their manifests, the recorded directory a file lies in). What was derived from a file is
:mod:`.derived`'s.

A mixin of :class:`~._ledger.Ledger`: every answer comes from its proved look-ups
(``_find``, ``run``, ``last_seen``), so nothing here reads the store directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._files.hashing import lookup_paths
from .._files.manifest import MANIFEST_RUN_PREFIX, Manifest
from .._model import Record, is_alias
from .._not_verified import NOT_VERIFIED_KEYS
from .walks import CONTAINERS, SUMMARY, WALKED, Nested, NotedMemo, run_nested

__all__ = ["LedgerRecord", "LineageNode", "LineageQueries", "is_adoption", "producer_summary", "walk_lineage"]


@dataclass(frozen=True)
class LedgerRecord:
    """A record read back from the ledger, with its id and place."""

    id: str
    record: Record
    height: int
    position: int

    @property
    def order(self) -> tuple[int, int]:
        return (self.height, self.position)


@dataclass
class LineageNode:
    """One file version in a lineage tree.

    ``kind`` is ``produced`` (a record output it), ``source`` (no record ever output the
    path), or ``broken`` (records output the path, but none with this digest: the file
    changed between being produced and being consumed).
    """

    path: str
    digest: str | None
    kind: str
    producer: LedgerRecord | None = None
    parents: list[LineageNode] = field(default_factory=list)


def walk_lineage(node: LineageNode) -> Iterator[LineageNode]:
    """Every node of a lineage tree once, depth first. Iterative: a lineage thousands of
    tasks deep must not exhaust Python's recursion limit, and a node shared by several
    branches (one input read by two tasks) is visited once."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            stack.extend(current.parents)


class LineageQueries:
    """Lineage and directory queries, answered from the ledger's proved look-ups."""

    _manifests: dict[str, Manifest]
    if TYPE_CHECKING:  # the look-ups of Ledger this builds on
        _find: Callable[..., list[LedgerRecord]]
        run: Callable[[str], list[LedgerRecord]]
        last_seen: Callable[..., tuple[LedgerRecord, str, Mapping[str, Any]] | None]
        query_path: Callable[[str], str]

    def lineage(self, path: str, digest: str | None = None, *,
                memo: dict[tuple[str, str | None], LineageNode] | None = None,
                slim: bool = False) -> LineageNode:
        """The tree of file versions ``path`` was derived from, back to the sources.

        Trees of several targets share their nodes through one ``memo`` (a verification of
        10,000 outputs of one task walks their common input once). Walked without Python
        recursion (:func:`run_nested`): a file updated in place every day for three years
        is a chain a thousand tasks deep, past the interpreter's recursion limit.

        ``slim``: each node keeps of its producer only what a check or a drawing of the tree
        uses (:func:`producer_summary`), once its inputs are walked; a summary made from
        150,000 tasks' outputs held each of their records whole (1.2 GB). Exports, which
        write the records out, walk without it."""
        memo = {} if memo is None else memo
        path = self.query_path(path)
        found = None  # the producers of this version, once looked up
        if digest is not None:
            # Without starting a walk (a generator run by run_nested: a third of a look-up
            # of 5 us) where none is needed: a version walked before, or one more output of
            # a record walked before (the 10,000 outputs of one task). As _lineage answers.
            node = memo.get((path, digest))
            if node is not None:
                return node
            if slim:
                found = self._find("out", path, digest)
                if found and (WALKED, found[-1].id) in memo:
                    return self._produced((path, digest), digest, found[-1], memo, slim)[0]
                if found:
                    node = self._inputs_walked((path, digest), found[-1], memo)
                    if node is not None:
                        return node
        noted = NotedMemo(memo)
        try:  # the producers found above are not looked up again
            return run_nested(self._lineage(path, digest, None, noted, slim, found))
        except BaseException:
            noted.forget()
            raise

    def _produced(self, key: tuple[str, str | None], digest: str, producer: LedgerRecord, memo, slim: bool,
                  ) -> tuple[LineageNode, bool]:
        """The node of the version ``digest`` of ``key``'s path that ``producer`` made, kept
        in ``memo`` under ``key`` (the path and the digest asked for, None where the latest
        was asked for) and under the path alone; and whether it is complete: in slim walks,
        another output of a record walked before takes that walk's parents and summary (no
        walk of its inputs again: 7.5 -> 4 us an output)."""
        path = key[0]
        node = LineageNode(path, digest, "produced", producer)
        memo[key] = node
        if (path, None) not in memo:
            memo[(path, None)] = node
        walked = memo.get((WALKED, producer.id)) if slim else None
        if walked is None:
            return node, False
        node.parents.extend(walked[0])
        node.producer = walked[1]
        return node, True

    def _inputs_walked(self, key: tuple[str, str], producer: LedgerRecord, memo) -> LineageNode | None:
        """The slim node of the version ``key`` that ``producer`` made, where every version it
        read was walked already and it names none by an alias: what :meth:`_lineage` and
        :meth:`_walk_inputs` build there, without a walk (each of the outputs of 10,000
        tasks that read one reference: the walk's generators were a fifth of checking a
        file). None where a walk is needed (an input not walked yet, an alias)."""
        parents = []
        for input_path, entry in sorted(producer.record.inputs.items()):
            # get(), not `in`: a bounded memo (an audit's) then keeps a source every task
            # read among its newest entries.
            parent = None if "alias_of" in entry else memo.get((input_path, entry["blake3"]))
            if parent is None:
                return None
            parents.append(parent)
        node = self._produced(key, key[1], producer, memo, True)[0]
        node.parents.extend(parents)
        summary = memo.get((SUMMARY, producer.id))
        if summary is None:
            summary = memo[(SUMMARY, producer.id)] = producer_summary(producer)
        node.producer = summary
        memo[(WALKED, producer.id)] = (tuple(node.parents), node.producer)
        return node

    def _lineage(self, path, digest, consumer, memo, slim=False, looked_up=None) -> Nested[LineageNode]:
        """``looked_up``: the producers of this version of ``path``, found already."""
        key = (path, digest)
        if key in memo:
            return memo[key]
        if digest is None:
            found = self._find("out", path, None)
            producer = found[-1] if found else None
            if producer is None:
                node = LineageNode(path, None, "source")
                memo[key] = node
                return node
            digest = producer.record.outputs[path]["blake3"]
        else:
            candidates = looked_up if looked_up is not None else self._find("out", path, digest)
            if not candidates and consumer is not None:
                # The producer may name the file by another spelling the consumer's record
                # also has (its real path, or the path as given): try those.
                for other in _spellings(consumer.record.inputs, path):
                    candidates = self._find("out", other, digest)
                    if candidates:
                        break
            if consumer is not None:  # prefer the version made before it was consumed
                earlier = [c for c in candidates if c.order < consumer.order]
                candidates = earlier or candidates
            producer = candidates[-1] if candidates else None
            if producer is None:
                if self._produced_before(path, consumer):
                    node = LineageNode(path, digest, "broken")
                else:
                    node = (yield self._inside_directory(path, digest, consumer, memo, slim)) \
                        or LineageNode(path, digest, "source")
                memo[key] = node
                return node
        node, complete = self._produced(key, digest, producer, memo, slim)
        if complete:
            return node
        # A walk that fails (a record further back that does not verify) leaves no node
        # behind, this one or any made meanwhile (lineage() forgets what the walk added):
        # another target that reaches one must fail the same way, not take it for a lineage
        # that ends there.
        yield from self._walk_inputs(node, producer, memo, slim)
        if slim:
            memo[(WALKED, producer.id)] = (tuple(node.parents), node.producer)
        return node

    def _walk_inputs(self, node: LineageNode, producer, memo, slim) -> Nested[None]:
        inputs = producer.record.inputs
        # Only a record that names a path by an alias can lead elsewhere than the path as
        # recorded: the others' inputs are not looked for on disk (a stat each, every record).
        aliased = any("alias_of" in entry for entry in inputs.values())
        for input_path, entry in sorted(inputs.items()):
            if is_alias(entry):
                # The same file as its real path's entry, walked there (which takes a producer of
                # this version under either name: _spellings). But a path a task produced, read
                # through a link to bytes no task made under it, is a version of it nobody made,
                # as after an edit in place: broken, though its real path is a source.
                if self._alias_broken(input_path, entry["blake3"], producer, entry["alias_of"]):
                    node.parents.append(LineageNode(input_path, entry["blake3"], "broken"))
                continue
            if aliased and not os.path.lexists(input_path):
                # Read through a symbolic link whose target has moved since: the path the task
                # was given still leads to the file.
                input_path = next((a for a in _aliases_of(inputs, input_path) if os.path.lexists(a)), input_path)
            walked = (input_path, entry["blake3"])  # walked already (an audit's chains): no nested walk
            node.parents.append(memo[walked] if walked in memo
                                else (yield self._lineage(input_path, entry["blake3"], producer, memo, slim)))
        if slim:  # one summary a record: the 10,000 outputs of one task share it
            summary = memo.get((SUMMARY, producer.id))
            if summary is None:
                summary = memo[(SUMMARY, producer.id)] = producer_summary(producer)
            node.producer = summary

    def _alias_broken(self, alias: str, digest: str, consumer: LedgerRecord, real: str) -> bool:
        """Whether ``consumer`` read ``alias`` (a path it named, a link to ``real``) in a
        version no recorded task produced, under that name or by the real path it read (a
        task that rewrote the file by its real path made it: tests/test_attack_s48.py), while
        one produced another under that name."""
        return not self._find("out", alias, digest) and not self._find("out", real, digest) \
            and self._produced_before(alias, consumer)

    def _inside_directory(self, path: str, digest: str, consumer, memo, slim) -> Nested[LineageNode | None]:
        """A file no task produced by itself, read in the version a recorded directory it lies
        in holds: produced by that directory's producer. Its node has the directory's node
        as its one parent, so the lineage goes on through the directory."""
        containers = memo.setdefault((CONTAINERS, None), {})  # directory -> what container_of found
        found = self.container_of(path, containers)
        if found is None or found[2] != "out":
            return None
        directory, _entry, _role, recorded = found
        manifest = self.manifest(recorded["blake3"])
        listed = manifest.lookup(os.path.relpath(path, directory).replace(os.sep, "/")) if manifest else None
        if listed is None or listed[1] != "file" or listed[2] != digest:
            return None
        parent = yield self._lineage(directory, recorded["blake3"], consumer, memo, slim)
        if parent.producer is None:
            return None
        return LineageNode(path, digest, "produced", parent.producer, [parent])

    def _produced_before(self, path: str, consumer: LedgerRecord | None) -> bool:
        """Whether a version of ``path`` other than the one consumed was produced: the
        consumed one then changed after it was written (a broken lineage). An adoption
        recorded after the consumer read the file does not count: what it read was a source.
        Nor does a write that came after the read whatever the clocks say: the consumer's own
        (a task that updates a file in place read one version and wrote the next), or one
        appended after it by a task that read what the consumer wrote (a publication over the
        task's input, Nextflow's ``publishDir``: tests/test_parsl_deployed_read_digests.py)."""
        return any(
            not (consumer is not None and (p.id == consumer.id or (
                p.order > consumer.order and (is_adoption(p.record) or _read_its_output(p, consumer)))))
            for p in self._find("out", path, None)
        )

    # -- directories ------------------------------------------------------------------------
    def manifest(self, digest: str) -> Manifest | None:
        """The manifest of the directory whose digest is ``digest``, as a manifest record
        keeps it (proved in the tree, and hashed to ``digest``); None if none does."""
        cached = self._manifests.get(digest)
        if cached is not None:
            return cached
        for entry in self.run(MANIFEST_RUN_PREFIX + digest):
            try:
                manifest = Manifest.from_json(entry.record.extra.get("manifest"))
            except ValueError:
                continue
            if manifest.digest == digest:
                self._manifests[digest] = manifest
                return manifest
        return None

    def container_of(self, path: str, memo: dict[str, Any] | None = None,
                     ) -> tuple[str, LedgerRecord, str, Mapping[str, Any]] | None:
        """The nearest recorded directory ``path`` lies in, for a file no record names itself:
        (directory, the record that last saw it, its role, its entry). ``memo`` keeps what
        was found for each directory across calls (files of one tree share their parents)."""
        memo = {} if memo is None else memo
        for key in lookup_paths(path):
            parent = os.path.dirname(key)
            while parent and parent != key:
                if parent not in memo:
                    seen = self.last_seen(parent, ("out",)) or self.last_seen(parent, ("in",))
                    memo[parent] = seen if seen is not None and seen[2].get("type") == "dir" else None
                if memo[parent] is not None:
                    entry, role, recorded = memo[parent]
                    return parent, entry, role, recorded
                key, parent = parent, os.path.dirname(parent)
        return None

# The last record side whose aliases were indexed, and the index: _spellings is asked for
# every input of a record that has no producer (each source), and scanning the whole side
# each time made a record of 20,000 sources take a minute to verify (400 million steps).
# The side is held, so its id cannot be reused while it is compared; records are not changed.
_alias_index: tuple[Mapping[str, Mapping[str, Any]], dict[str, list[str]]] | None = None


def _read_its_output(producer: LedgerRecord, consumer: LedgerRecord) -> bool:
    """Whether ``producer`` read a version of a file that ``consumer`` wrote (so wrote after
    ``consumer`` read, whatever the clocks say; asked only of one appended after it, so that an
    earlier task that read an identical earlier version does not count)."""
    made = consumer.record.outputs
    return any(path in made and made[path].get("blake3") == entry.get("blake3")
               for path, entry in producer.record.inputs.items())


def _aliases_of(side: Mapping[str, Mapping[str, Any]], real: str) -> list[str]:
    """The paths ``side`` (a record's inputs or outputs) names as aliases of ``real``."""
    global _alias_index
    last = _alias_index
    if last is not None and last[0] is side:
        return last[1].get(real, [])
    index: dict[str, list[str]] = {}
    for path, entry in side.items():
        target = entry.get("alias_of")
        if target is not None:
            index.setdefault(target, []).append(path)
    _alias_index = (side, index)
    return index.get(real, [])


def _spellings(side: Mapping[str, Mapping[str, Any]], path: str) -> list[str]:
    """The other paths a record names the file ``path`` by (its aliases, or its real path)."""
    entry = side.get(path)
    real = entry.get("alias_of", path) if entry is not None else path
    return [p for p in [real, *_aliases_of(side, real)] if p != path]


def producer_summary(entry: LedgerRecord) -> LedgerRecord:
    """``entry`` with only what a lineage's check and drawing use of its record: who ran
    which task, when and how it ended, an adoption's note, and what the record says it did
    not verify (``NOT_VERIFIED_KEYS`` of its extra: ``verify-lineage`` and ``why`` say so).
    Its inputs are the node's parents; its outputs, parameters and environment (often most
    of its bytes) are left out, so the summary is not the record: its id is still the
    record's, to fetch it by."""
    record = entry.record
    summary = record.summary(keep_extra=is_adoption(record))
    marks = {key: record.extra[key] for key in NOT_VERIFIED_KEYS if key in record.extra} if record.extra else None
    if marks and not summary.extra:
        object.__setattr__(summary, "extra", marks)  # a summary is built so (Record.summary)
    return LedgerRecord(entry.id, summary, entry.height, entry.position)


def is_adoption(record: Record) -> bool:
    """A record of `lineage-ledger adopt`: a user accepted files' current content."""
    return record.engine == "lineage-ledger" and record.task_name == "adopt"
