"""verify-lineage: small checks, each raising one named error, and the report they make.

* :func:`verify_chain_of` - ids, heights, links, Merkle roots (``ChainBroken``, ...).
* :func:`verify_artifact` - a file against the last record that saw it (``ArtifactMismatch``).
* :func:`verify_closure` - every input in a lineage tree was produced in exactly the
  version that was consumed, back to the sources (``LineageBroken``).

:func:`verify_lineage` runs them all and collects every failure into a :class:`Report`;
:func:`check_before_run` is what the engine plugins call before a rerun. Files are always
rehashed here: the stat cache serves ``hash`` only, so an edit that keeps a file's size
and mtime is still caught.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING

from .._errors import (
    ArtifactError,
    ArtifactMismatch,
    HistoryRewritten,
    LineageBroken,
    VerificationError,
)
from .._files.hash_ahead import HashAhead, hash_ahead
from .._files.hashing import lookup_paths
from .._files.manifest import walk_tree
from .._ledger.complete import StaleNames
from .._ledger.complete_dirs import directory_count
from .._ledger.ledger import Ledger, LineageNode
from .._ledger.lineage import walk_lineage
from .._log.chain import ChainSummary
from .checks import ArtifactCheck, ArtifactStatus, _explain, _short, _unreadable, check_artifact
from .not_data import OWN_DATABASE, OWN_PROBE, own_files, own_probes, state_folders
from .report import SHOWN, Absent, Report, TargetResult
from .tree_files import check_tree_files
from .verify_ahead import Answer, verify_ahead

if TYPE_CHECKING:
    from .._log.checkpoint import Checkpoint
    from .._log.found import FoundOutputs
    from .._log.tree_head import TreeHead

__all__ = [
    "Absent",
    "ArtifactCheck",
    "ArtifactStatus",
    "Report",
    "check_artifact",
    "verify_artifact",
    "verify_against",
    "verify_chain_of",
    "verify_closure",
    "verify_lineage",
]



def verify_chain_of(ledger: Ledger) -> ChainSummary:
    """The full audit: raises ChainBroken, MerkleMismatch, RecordTampered, IndexTampered or
    HistoryRewritten at the first problem."""
    return ledger.verify_chain()


def verify_artifact(ledger: Ledger, path: str) -> ArtifactCheck:
    check = check_artifact(ledger, path)
    if check.status is not ArtifactStatus.OK:
        raise ArtifactMismatch(_explain(check), path=check.path)
    return check


def verify_closure(node: LineageNode | list[LineageNode]) -> None:
    """Raise LineageBroken for the first input consumed in a version nobody produced
    (``node``: a tree, or its nodes as :func:`walk_lineage` gives them)."""
    for current in walk_lineage(node) if isinstance(node, LineageNode) else node:
        if current.kind == "broken":
            raise LineageBroken(
                f"{current.path}: consumed as {_short(current.digest)}, but no recorded task "
                "produced that version (changed between being written and being read)",
                path=current.path,
            )
        if current.producer is not None and current.producer.record.status == "failed":
            raise LineageBroken(
                f"{current.path}: produced by a failed task (record {current.producer.id[:12]}); "
                "its contents are not a result",
                path=current.path,
            )


# Absent files listed by name; the rest are counted.
_ABSENT_LISTED = 10
_PATHS_PER_READ = 10_000


def _absent_under(ledger: Ledger, directory: str, present: set[str]) -> Absent | None:
    """The recorded files below ``directory`` that neither the walk found nor exist (the
    walk does not descend into recorded directories), read from the index a page at a time
    under each spelling of the directory (as given, and resolved: a record names a file by
    both), each proved by the record that last saw it: an index row that names a path no
    record does raises ``IndexTampered``, never counts. The listing itself is counted against
    the names kept for the directory (:mod:`.._ledger.complete_dirs`): one that leaves out a
    path verified records name below it raises ``IndexTampered`` too. Another process that
    verifies meanwhile may move the counts: the listing is read again, a few times."""
    for attempt in range(_LISTING_TRIES):
        try:
            return _absent_listed(ledger, directory, present, refresh=attempt > 0, final=attempt == _LISTING_TRIES - 1)
        except StaleNames:
            continue
    raise AssertionError("unreachable: the last try does not raise StaleNames")


_LISTING_TRIES = 5


def _absent_listed(ledger: Ledger, directory: str, present: set[str], *, refresh: bool, final: bool) -> Absent | None:
    listed: list[str] = []
    more = 0
    counted: set[str] = set()  # below the directory: a file under both spellings counts once
    for base in lookup_paths(directory):
        after = ""
        # The bound and the directory's counts read before the index is asked: a record verified
        # after that need not be in its listing, and is not counted.
        tally = directory_count(ledger, base, refresh=refresh, final=final)
        if tally is not None:
            # The files the walk found count as listed: each is verified on its own (a deleted
            # row of one on disk fails there), so the listing is checked for the gone ones only.
            tally.add([p for p in present if p.startswith(base.rstrip("/") + "/")], final=final)
        while True:
            page = ledger.backend.paths_under(base, after, _PATHS_PER_READ)
            if page is None:  # a back-end without an index to ask
                return None
            if tally is not None:
                tally.add([p for p in page if p not in present], final=final)
            gone = [p for p in page if p not in present and p[len(base):] not in counted and not os.path.lexists(p)]
            for start in range(0, len(gone), _WINDOW):
                window = gone[start : start + _WINDOW]
                with ledger.looking_ahead(window) if len(window) >= _LOOK_AHEAD else contextlib.nullcontext():
                    for path in window:
                        if ledger.last_seen(path) is None:
                            continue
                        counted.add(path[len(base):])
                        if len(listed) < _ABSENT_LISTED:
                            listed.append(path)
                        else:
                            more += 1
            if len(page) < _PATHS_PER_READ:
                break
            after = page[-1]
        if tally is not None:
            tally.finish()
    return Absent(directory, listed, more) if listed or more else None


def _expand(ledger: Ledger, targets: Iterable[str], report: Report, plain: set[str]) -> list[str]:
    """The targets, with each directory no record names walked: its files, and the
    directories inside it that a record names (checked whole, as directory artifacts).
    Entries that cannot be read are noted in the report and skipped; ``plain`` is given the
    files the walk saw as regular files (see :func:`walk_tree`)."""
    paths: list[str] = []

    def recorded(path: str) -> bool:
        return ledger.last_seen(path) is not None

    def skip(path: str, reason: str) -> None:
        report.skipped.append((path, reason))

    own = own_files(ledger)  # (and the engines' state folders: .not_data)

    for target in targets:
        try:
            normal = ledger.query_path(target)
        except ArtifactError:
            if not os.path.lexists(target):
                raise  # names nothing: bad input (exit 2), as any missing path
            # There, but its name is not valid UTF-8: no record can name it, so its check
            # fails (UNREADABLE, exit 1), as it does where a directory's walk meets it.
            paths.append(os.path.abspath(target))
            continue
        # A directory a record names, or that lies in one, is checked whole (by its manifest).
        if os.path.isdir(normal) and not recorded(normal) and ledger.container_of(normal, report.containers) is None:
            walked = list(walk_tree(normal, is_artifact=recorded, on_skip=skip, plain=plain,
                                    skip_dir=state_folders(ledger, recorded)))
            for path in own.intersection(walked):
                if not recorded(path):
                    skip(path, OWN_DATABASE)
                    walked.remove(path)
            for path in own_probes(ledger, walked):
                if not recorded(path):
                    skip(path, OWN_PROBE)
                    walked.remove(path)
            paths.extend(walked)
            try:
                absent = _absent_under(ledger, normal, set(walked))
            except VerificationError as failure:  # an index row that names a path no record does
                report.fail(failure)
                absent = None
            if absent is not None:
                report.absent.append(absent)
        elif not os.path.lexists(normal) and not recorded(normal) and ledger.container_of(normal, report.containers) is None:
            # Gone, and no record names it: a directory removed with every file records name
            # in it (Snakemake's after deleting its temp() files, a deleted results folder)
            # is answered as the same directory left empty; anything else is a typo (exit 2).
            try:
                absent = _absent_under(ledger, normal, set())
            except VerificationError as failure:
                report.fail(failure)
                continue
            if absent is None:
                paths.append(normal)  # check_artifact says "no such file, and no record ... mentions it"
            else:
                report.absent.append(absent)
        else:
            paths.append(normal)
    return paths


def verify_lineage(ledger: Ledger, targets: Iterable[str] = (), *, files: bool = True) -> Report:
    """Verify the ledger, then each target and its lineage; no targets audits the whole ledger.

    With targets, the ledger check is the trusted tree head brought up to date (only blocks
    appended since the last verification are read) and every record used is proved in it.
    Without, the whole ledger is read and checked, index included, in bounded memory, and
    every recorded output still on disk is checked with its lineage.

    Raises only for bad input (``ArtifactError``, ``ConfigError``) and back-end errors;
    verification failures are collected in the report.
    """
    report = Report()
    targets = list(targets)
    audit = not targets
    paths: list[str] = []
    plain: set[str] = set()  # of those, the files a directory's listing said are not links
    found: FoundOutputs | None = None
    head: TreeHead | None = None
    try:
        if audit:
            result = ledger.audit(files=files)
            report.chain, report.audited_records, report.index_rows = result.summary, result.summary.records, result.index_rows
            found = result.outputs
        else:
            head = ledger.tree_head()
            report.chain = ChainSummary(head.blocks, head.size, head.block_id, head.root)
        report.first_audit = ledger.verifier.audited_now and not audit
        if not audit:
            paths = _expand(ledger, targets, report, plain)
    except VerificationError as failure:
        if found is not None:
            found.close()
        report.fail(failure)
        return report  # nothing read from a broken ledger can be trusted
    if found is not None:
        # Every recorded output on disk, read back a window at a time: bounded memory
        # whatever the ledger's size (see .report).
        report.bound()
        with found, _fewer_collections():
            for window in found.windows(_WINDOW):
                _verify_window(ledger, window, report, files=files, audit=True)
    # Many files (a results directory): checked as an audit's outputs are, in bounded memory,
    # the first SHOWN of those verified and of those failing kept with their trees, the rest
    # counted. Every failure is reported whatever is kept.
    many = len(paths) > SHOWN
    if many:
        report.bound()
    # The last part verified meanwhile by a second process, where that pays (.verify_ahead).
    ahead = verify_ahead(ledger, paths, plain, head, SHOWN) if many and files and head is not None else None
    with contextlib.ExitStack() as stack, _fewer_collections():
        mine = len(paths) if ahead is None else stack.enter_context(ahead).first
        for start, end in _windows(0, mine):
            _verify_window(ledger, paths[start:end], report, files=files, audit=False, plain=plain, bounded=many)
        for start in range(mine, len(paths), _WINDOW):
            window = paths[start : start + _WINDOW]
            verified = ahead.verdicts(len(window)) if ahead is not None else [False] * len(window)
            if report.shown_verified < SHOWN:
                verified = [False] * len(window)  # kept with its tree: verified here
            report.not_shown += sum(verified)  # verified there, with no problem: counted, as here
            _verify_window(ledger, [p for p, done in zip(window, verified, strict=True) if not done], report,
                           files=files, audit=False, plain=plain, bounded=many)
    from .._ledger.deferred import waiting_for

    # The targets as given too: a directory no record names yet is walked, and a waiting
    # record that wrote it names the directory, not the files the walk found.
    checked = [os.path.abspath(t) for t in targets] + [t.path for t in report.targets] + \
        [p for t in report.targets for p in t.files]
    waiting, report.waiting_named = waiting_for(ledger._spool_root, ledger.backend.identity, checked)
    report.waiting, report.waiting_manifests = waiting.records, waiting.manifests
    return report


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """No automatic run of the cyclic garbage collector while an audit checks its outputs or
    targets are checked; the young generation is collected at a window's end only once it
    has grown past :data:`_YOUNG_MOST` (:func:`_collect_window`). Each file's look-ups make a
    few hundred short-lived objects, freed by their counts, none in cycles (a verification of
    10,000 files, some modified, some missing, a source edited, left 8 to 28 objects in
    cycles in all, the same for 3,000 files); but what a window keeps (its records proved and
    decoded, the rows read ahead, lineage nodes, checks) was scanned again and again by
    collections every 10,000 new objects and every tenth of those: 12-20% of the CPU of
    checking the outputs of 10,000 tasks. The collector's state is put back.

    What the windows kept (the report, the caches) is then moved to the oldest generation as
    it is, frozen and thawed at once (two list splices), where only a full collection looks
    at it, instead of being scanned by the first collection of the young generation once the
    collector runs again: 160,000 objects, 87 ms, after 10,000 tasks' outputs. Not where the
    process has frozen objects of its own: thawing them is not ours to do."""
    with _quiet_lock:
        if _quiet[0] == 0:  # the first in: the collector as the process had it, to put back
            _quiet[1] = gc.isenabled()
            gc.disable()
        _quiet[0] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet[0] -= 1
            if _quiet[0] == 0:  # the last out (threads may verify at once: one put back is the state before any)
                if gc.get_freeze_count() == 0:
                    gc.freeze()
                    gc.unfreeze()
                if _quiet[1]:
                    gc.enable()


_quiet_lock = threading.Lock()
_quiet: list = [0, False]  # threads within _fewer_collections; whether the collector ran before the first


# Container objects made and not freed since the last collection past which a window's end
# collects the young generation. What the windows keep levels off (the caches are trimmed
# between windows): 100,000 after the first 5,000 of 10,000 tasks' outputs, 160,000 after
# the second, 40,000 for one task's outputs; collecting them took 20-30 ms a window, a third
# of what the collector still cost. Past this bound something is piling up (cycles the
# collector alone frees, if any): an audit of a million files stays in bounded memory.
_YOUNG_MOST = 500_000


def _collect_window() -> None:
    """At the end of a window, with automatic collection off (:func:`_fewer_collections`):
    the young generation collected once it holds more than :data:`_YOUNG_MOST` objects."""
    if not gc.isenabled() and gc.get_count()[0] > _YOUNG_MOST:
        gc.collect(0)


# Targets whose index rows are read ahead together (bounded memory for a million files:
# each window keeps its paths' proved producers, about 30 MB at most for 5,000 one-output
# records; each reads the 1,024 files of names once, so 2,000 paths a window cost 3.5% more
# for 10,000 files), and the fewest for which that pays (a statement per path and role
# costs about 15 us).
_WINDOW = 5_000
_LOOK_AHEAD = 16


def _windows(start: int, end: int) -> Iterator[tuple[int, int]]:
    """The windows of paths ``start`` to ``end``: :data:`_WINDOW` each, the last taking in
    a remainder shorter than a quarter of one (at most 25% more memory). Each window reads
    the names kept whole (1,024 files) and starts a hashing child: this process's part of
    10,000 files beside a second one (.verify_ahead: 6,047) made a second window of 1,047
    paths that cost as much of that as the first's 5,000."""
    while start < end:
        stop = end if end - start < _WINDOW + _WINDOW // 4 else start + _WINDOW
        yield start, stop
        start = stop


def _verify_window(ledger: Ledger, window: list[str], report: Report, *, files: bool, audit: bool,
                   plain: Collection[str] = (), bounded: bool = False, hash_files_ahead: bool = True,
                   answer: Answer | None = None) -> None:
    """``answer``: told of each path whether it verified with no problem met (the second
    process of .verify_ahead, which hashes its files itself: ``hash_files_ahead`` False)."""
    # Many files (a directory's, an audit's outputs): hashed in a child process meanwhile
    # (.hash_ahead: it starts first, and hashes while the index rows are read), and their
    # index rows read at once.
    with contextlib.ExitStack() as ahead:  # the child stopped whatever is raised, here or below
        hashed = hash_ahead(window) if files and hash_files_ahead else None
        if hashed is not None:
            ahead.enter_context(hashed)
        if len(window) >= _LOOK_AHEAD:
            try:
                ahead.enter_context(ledger.looking_ahead(window, plain=plain))
            except VerificationError:
                # A row read ahead that does not verify (one that names a record the store does
                # not hold): the window is checked path by path, so that the failure is reported
                # against the path that reads it, beside every other path's answer.
                pass
        for path in window:
            # Failing: a problem of its own, or one its tree shows that an earlier target's
            # reported already (a shared source edited: reported once, failing for each).
            problems = report.problems
            failing = _verify_one(ledger, path, report, files=files, audit=audit, hashed=hashed)
            if answer is not None:
                answer(path, not failing and report.problems == problems and bool(report.targets)
                       and report.targets[-1].path == path)
            if audit:
                report.counted(path, failed=failing or report.problems > problems)
            elif bounded:
                report.kept(path, failed=failing or report.problems > problems)
    report.trim()
    _collect_window()


def _verify_one(ledger: Ledger, path: str, report: Report, *, files: bool, audit: bool,
                hashed: HashAhead | None = None) -> bool:
    """Check ``path`` and its lineage into ``report``; True where it fails. ``hashed``: files
    hashed ahead (a window's)."""
    try:
        return _verify_target(ledger, path, report, files=files, audit=audit, hashed=hashed)
    except VerificationError as failure:  # an index row that disagrees with its record
        report.fail(failure)
    except ArtifactError as err:
        if not os.path.lexists(path):
            raise  # a target that is not there and that no record names: bad input
        # There but unreadable (permission denied, a loop): that one cannot be checked.
        report.fail(ArtifactMismatch(_explain(_unreadable(path, err)), path=path))
    return True


def _verify_target(ledger: Ledger, path: str, report: Report, *, files: bool, audit: bool,
                   hashed: HashAhead | None = None) -> bool:
    """Check one target into ``report``; True where it fails: its own check, its lineage,
    or a file of its tree (a problem an earlier target reported already counts here too)."""
    if not files:
        check = ArtifactCheck(path, ArtifactStatus.OK)
    else:
        check = report.checked.get(path) or check_artifact(ledger, path, containers=report.containers, hashed=hashed)
        report.checked[path] = check
    # In an audit, a produced file that was cleaned up since is not a failure.
    tolerated = audit and check.status is ArtifactStatus.MISSING
    failing = check.status is not ArtifactStatus.OK and not tolerated
    if failing:
        report.fail(ArtifactMismatch(_explain(check), path=path))
    # The tree starts at the version the ledger last saw, which need not be the last one
    # produced: a file edited and then read by a recorded task must show as broken. A file
    # inside a recorded directory has that directory's lineage.
    if check.within is not None:
        tree = ledger.lineage(check.within[0], check.within[1], memo=report.lineage_memo, slim=True)
    elif check.status is not ArtifactStatus.UNRECORDED:
        tree = ledger.lineage(path, check.expected, memo=report.lineage_memo, slim=True)
    else:
        tree = None
    result = TargetResult(path, check, tree)
    report.targets.append(result)
    if tree is None:
        return failing
    nodes = list(walk_lineage(tree))  # walked once for both checks below
    try:
        verify_closure(nodes)
    except LineageBroken as failure:
        report.fail(failure)
        failing = True
    if not files:
        return failing
    # The tree's files: a merge of 20,000 sources has as many. Past _LOOK_AHEAD not checked
    # yet, a window at a time, their index rows are read together and (past a thousand) the
    # files hashed in a child process, as a directory's are (.tree_files).
    return check_tree_files(ledger, nodes, tree, result, report, window=_WINDOW, at_least=_LOOK_AHEAD) or failing


def verify_against(ledger: Ledger, checkpoint: Checkpoint) -> Checkpoint:
    """Raise :class:`HistoryRewritten` unless the ledger is an append-only extension of
    ``checkpoint`` (same origin, at least as many records, the same root over its first
    ``checkpoint.size`` records). The root at that size comes from O(log n) verified nodes."""
    head = ledger.tree_head()
    if checkpoint.origin != head.origin:
        raise HistoryRewritten(f"the checkpoint is of ledger {checkpoint.origin!r}; this ledger is {head.origin!r}")
    if checkpoint.size > head.size:
        raise HistoryRewritten(
            f"the checkpoint covers {checkpoint.size} records, the ledger holds {head.size}: it shrank "
            f"(records {head.size} to {checkpoint.size - 1} are gone)")
    root = ledger.verifier.store.root_at(checkpoint.size)
    if root != checkpoint.root.hex() and checkpoint.size == 0:
        raise HistoryRewritten(f"the checkpoint says an empty ledger has the root {checkpoint.root.hex()}; "
                               f"an empty tree's root is {root}: it is not a checkpoint of this ledger's start")
    if root != checkpoint.root.hex():
        raise HistoryRewritten(
            f"the ledger is not an extension of the checkpoint: its first {checkpoint.size} records hash "
            f"to {root}, the checkpoint says {checkpoint.root.hex()}; one or more of records 0 to "
            f"{checkpoint.size - 1} were changed, reordered or removed")
    return checkpoint
