"""What ``verify-lineage`` found: the :class:`Report`, and the bounds that keep an audit's
report in bounded memory whatever the ledger's size.

A targeted check keeps every target it was given, with its lineage tree. A full audit checks
every recorded output still on disk, and a lab's ledger names millions: keeping a target and
its tree for each took about 8 KB a file (a ledger of 20,000 records whose outputs exist:
194 MiB; a million: gigabytes), and printing them all helps no one. So an audit keeps the
first :data:`SHOWN` targets that verified and the first :data:`SHOWN` that failed, and counts
the others; the caches its trees share (files hashed, lineage nodes walked, directories
looked up) forget their oldest entries past :data:`CACHED`; and problems past
:data:`FAILURES_KEPT` are counted, not kept. The exit status is the same: any problem fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from .._errors import VerificationError
from .._ledger.ledger import LedgerRecord, LineageNode
from .._log.chain import ChainSummary
from .._not_verified import NOT_VERIFIED_KEYS
from .checks import ArtifactCheck

if TYPE_CHECKING:
    from .._log.checkpoint import Checkpoint

__all__ = ["CACHED", "FAILURES_KEPT", "SHOWN", "Absent", "Bounded", "NotVerified", "NotVerifiedFound",
           "Report", "TargetResult", "not_verified_in", "not_verified_marks"]

SHOWN = 1_000  # an audit's targets kept with their trees, of those verified and of those failing
FAILURES_KEPT = 10_000  # problems kept in full; more are counted
CACHED = 10_000  # entries an audit's shared caches keep (a lineage node holds its record: a few KB)


@dataclass
class TargetResult:
    path: str
    check: ArtifactCheck
    tree: LineageNode | None
    files: dict[str, ArtifactCheck] = field(default_factory=dict)  # other files of the tree


@dataclass
class Absent:
    """Files that records name below a directory given as a target and that are no longer
    on disk. Like an audit, which passes over outputs cleaned up since (``temp()`` files),
    this is no failure; it is said, so that a deleted result does not go unnoticed."""

    directory: str
    paths: list[str]  # the first few
    more: int  # how many more (each proved, as the listed ones are)


class Bounded(dict):
    """A dict that forgets its oldest entries when trimmed (:meth:`trim`, between windows of
    files) once it holds more than ``most``: a cache whose misses only cost work again (a
    file hashed again, a lineage walked again). A hit through :meth:`get` makes the entry
    the newest, so that a source every tree shares (a reference genome) stays; ``in`` and
    ``[]`` (the lineage memo's use) do not reorder.

    Trimmed, not checked at each insertion: forgetting one entry per insertion through
    ``next(iter(self))`` scanned the slots deleted before it each time (a dict's order is
    kept in an array it compacts only when it grows), 13% of checking 10,000 files, and a
    ``__setitem__`` of Python's own was 5% more."""

    def __init__(self, most: int) -> None:
        super().__init__()
        self.most = most

    def trim(self) -> None:
        """Past ``most`` entries, forget the oldest down to half of it, in one pass."""
        if len(self) > self.most:
            for old in list(islice(self, len(self) - self.most // 2)):
                del self[old]

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            return default
        value = self.pop(key)
        self[key] = value
        return value


@dataclass
class Report:
    chain: ChainSummary | None = None
    targets: list[TargetResult] = field(default_factory=list)
    failures: list[VerificationError] = field(default_factory=list)
    audited_records: int = 0
    index_rows: int | None = None  # index rows compared with their records in an audit
    first_audit: bool = False  # a targeted check that had to audit first (nothing remembered)
    waiting: int = 0  # records of this ledger waiting in this user's spool, not yet in the ledger
    waiting_manifests: int = 0  # of those, the directory manifests kept with their tasks' records
    waiting_named: list[str] = field(default_factory=list)  # the targets' files they name
    against: Checkpoint | None = None  # the checkpoint the ledger was proved to extend
    # Lineage nodes by (path, digest), shared by the targets' trees: each walked once.
    lineage_memo: dict = field(default_factory=dict, repr=False)
    # Files already hashed in this run: trees share sources, each is read once.
    checked: dict[str, ArtifactCheck] = field(default_factory=dict, repr=False)
    # Entries of the trees given that could not be read (a symbolic link loop...): (path, why).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Recorded directories found above files no record names, by directory (or None).
    containers: dict = field(default_factory=dict, repr=False)
    # Per directory given: the files records name below it that are no longer on disk.
    absent: list[Absent] = field(default_factory=list)
    outputs_checked: int = 0  # an audit's recorded outputs found on disk and checked
    not_shown: int = 0  # of those, the ones past SHOWN, counted only
    more_failures: int = 0  # problems met past FAILURES_KEPT (one met twice may count twice)
    _keys: set = field(default_factory=set, repr=False)
    _shown: list[int] = field(default_factory=lambda: [0, 0], repr=False)  # kept: verified, failing

    @property
    def ok(self) -> bool:
        return not self.failures and not self.more_failures

    @property
    def problems(self) -> int:
        return len(self.failures) + self.more_failures

    def fail(self, failure: VerificationError) -> None:
        # Targets share lineage: report each problem once, however many trees show it.
        key = (type(failure), failure.path, str(failure))
        if key in self._keys:
            return
        if len(self.failures) >= FAILURES_KEPT:
            self.more_failures += 1
            return
        self._keys.add(key)
        self.failures.append(failure)

    def bound(self) -> None:
        """Make the caches an audit's many targets share forget their oldest entries (at
        each :meth:`trim`)."""
        self.lineage_memo, self.checked, self.containers = Bounded(CACHED), Bounded(CACHED), Bounded(CACHED)

    def trim(self) -> None:
        """Bring bounded caches back within their bound (after each window of files: within
        one, they grow by what its files' trees add)."""
        for cache in (self.lineage_memo, self.checked, self.containers):
            if isinstance(cache, Bounded):
                cache.trim()

    @property
    def shown_verified(self) -> int:
        """Targets kept with their trees of those that verified (at most :data:`SHOWN`)."""
        return self._shown[0]

    def counted(self, path: str, failed: bool) -> None:
        """An audit checked ``path``: keep its target (the last one added) only while fewer
        than :data:`SHOWN` of its kind (verified, failing) are kept."""
        self.outputs_checked += 1
        self.kept(path, failed)

    def kept(self, path: str, failed: bool) -> None:
        """``path`` was checked: keep its target (the last one added) only while fewer than
        :data:`SHOWN` of its kind (verified, failing) are kept; count it otherwise. What an
        audit does for each output, and a targeted check for each file of a directory past
        :data:`SHOWN` files (a results directory of a million files kept a million trees)."""
        if not self.targets or self.targets[-1].path != path:
            return  # nothing was added for it (its check raised)
        if self._shown[failed] < SHOWN:
            self._shown[failed] += 1
        else:
            self.targets.pop()
            self.not_shown += 1


# -- what a lineage's records say they did not verify (``.._not_verified``) -------------------

MARKS_KEPT = 100  # records with such marks a report lists; the others are counted
TARGETS_NAMED = 5  # targets named for each of them; the others are counted

_NONE: frozenset[str] = frozenset()


def not_verified_marks(entry: LedgerRecord | None) -> dict[str, Any]:
    """What ``entry``'s record says it did not verify (``NOT_VERIFIED_KEYS``); {} for most."""
    if not _is_marked(entry):
        return {}
    extra = entry.record.extra  # type: ignore[union-attr]
    return {key: extra[key] for key in NOT_VERIFIED_KEYS if key in extra}


def _is_marked(entry: LedgerRecord | None) -> bool:
    if entry is None:
        return False
    extra = entry.record.extra
    return bool(extra) and bool(extra.get("links_not_followed") or extra.get("not_verified"))


@dataclass
class NotVerified:
    """A record in the lineage of one or more targets that says part of what its task read
    was never hashed; nothing was seen to change, so it is a note, never a failure."""

    entry: LedgerRecord  # the record (a slim summary: who ran what, and its marks)
    marks: dict[str, Any]  # the record's NOT_VERIFIED_KEYS
    targets: list[str] = field(default_factory=list)  # the first TARGETS_NAMED targets it is in the lineage of
    more_targets: int = 0


@dataclass
class NotVerifiedFound:
    """The records with such marks in the lineage of the trees given (the first
    :data:`MARKS_KEPT` by record id), those past them counted, and for each tree the ids of
    the listed ones in its lineage."""

    records: list[NotVerified]
    more: int  # records with such marks past MARKS_KEPT (in at least this many)
    by_target: dict[str, list[str]]  # target path -> the ids in its lineage, of those listed


def not_verified_in(trees: Iterable[tuple[str, LineageNode | None]]) -> NotVerifiedFound:
    """The records with marks (:func:`not_verified_marks`) in the lineage of each ``(target,
    tree)``. Each node is looked at once, however many trees share it (an audit's targets
    share their sources): the marked records in a node's lineage are worked out from its
    parents' (bounded: past :data:`MARKS_KEPT` each set is cut; every marked record met is
    counted)."""
    trees = list(trees)
    if not _any_marked(tree for _, tree in trees):  # most reports: one plain walk, no sets
        return NotVerifiedFound([], 0, {target: [] for target, _ in trees})
    below: dict[int, frozenset[str]] = {}  # id(node) -> marked record ids at or above it in lineage
    found: dict[str, LedgerRecord] = {}
    by_target: dict[str, list[str]] = {}
    for target, tree in trees:
        if tree is None:
            by_target[target] = []
            continue
        by_target[target] = sorted(_marked_at_or_above(tree, below, found))
    listed = sorted(found)[:MARKS_KEPT]
    records = {key: NotVerified(found[key], not_verified_marks(found[key])) for key in listed}
    for target, marked in by_target.items():
        by_target[target] = [key for key in marked if key in records]
        for key in by_target[target]:
            note = records[key]
            if len(note.targets) < TARGETS_NAMED:
                note.targets.append(target)
            else:
                note.more_targets += 1
    more = len(found) - len(listed)
    return NotVerifiedFound(list(records.values()), more, by_target)


def _any_marked(trees: Iterable[LineageNode | None]) -> bool:
    """Whether a node of ``trees`` has a producer with marks: each node looked at once (the
    trees of a report share theirs). A summary's ``extra`` is empty but for such marks (and an
    adoption's note): the test is one attribute each (a 150,000-node tree: 0.1 s)."""
    stack = [tree for tree in trees if tree is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if _is_marked(node.producer):
            return True
        stack.extend(node.parents)
    return False


def _marked_at_or_above(tree: LineageNode, below: dict[int, frozenset[str]],
                        found: dict[str, LedgerRecord]) -> frozenset[str]:
    """The marked records in ``tree``'s lineage, its own producer's included (the first
    :data:`MARKS_KEPT` by id: each node's set is cut there, which keeps the first of its
    lineage's whole set); post-order, without Python recursion (a lineage thousands of tasks
    deep). A node without inputs is worked out where its reader is (a summary of 150,000
    tasks' outputs: no stack entry each)."""

    def own(node: LineageNode) -> frozenset[str]:
        producer = node.producer
        if producer is None or not _is_marked(producer):
            return _NONE
        found.setdefault(producer.id, producer)
        return frozenset((producer.id,))

    stack: list[tuple[LineageNode, bool]] = [(tree, False)]
    started: set[int] = set()
    while stack:
        node, ready = stack.pop()
        key = id(node)
        if key in below:
            continue
        if not node.parents:
            below[key] = own(node)
            continue
        if not ready:
            if key in started:
                continue  # a node that is its own ancestor: met again below itself
            started.add(key)
            stack.append((node, True))
            for parent in node.parents:
                if id(parent) in below:
                    continue
                if parent.parents:
                    stack.append((parent, False))
                else:
                    below[id(parent)] = own(parent)
            continue
        ids = set(own(node))
        for parent in node.parents:
            ids.update(below.get(id(parent), _NONE))
        if len(ids) > MARKS_KEPT:
            ids = set(sorted(ids)[:MARKS_KEPT])
        below[key] = frozenset(ids) if ids else _NONE
    return below[id(tree)]
