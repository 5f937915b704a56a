"""The full audit: every block, record and index row of the ledger, read at the head read
first, in bounded memory (see :mod:`.verified`, whose :class:`~.verified.Verifier` this is
mixed into). The ranges go to worker processes (:mod:`.audit_parallel`) or are checked here
by their bulk check; where anything disagrees, the sequential audit runs and names the
problem. The new tree is built beside the remembered one and replaces it only if it extends
it; duplicate record ids are looked for in bounded memory (:mod:`.dedup`), and the recorded
outputs found on disk are kept on disk for the caller (:mod:`.found`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING

from .._errors import ChainBroken, HistoryRewritten
from . import audit_parallel as _parallel
from .audit_records import BODIES_FORMAT
from .audit_rows import ExistingFiles, IndexChecker
from .chain import ChainSummary
from .dedup import IdDedup
from .found import FoundOutputs
from .names import FORMAT as NAMES_FORMAT
from .names import HotNames
from .trust import TreeHead, TreeWriter, TrustStore

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend

__all__ = ["AuditResult", "FullAudit"]

_outputs = attrgetter("outputs")


class _Disagreement(Exception):
    """The workers' ranges do not join up (or one found a problem): audit sequentially."""


@dataclass
class AuditResult:
    summary: ChainSummary
    head: TreeHead
    index_rows: int | None  # rows compared, or None where the back-end keeps no separate index
    # Output paths that exist on disk (``files=True``), kept on disk: close() it when done.
    outputs: FoundOutputs = field(default_factory=FoundOutputs)


def _audit_source(backend: Backend) -> Backend | None:
    """A read-only view of the same ledger for the audit's workers and bulk check, where
    ``backend`` was opened for writing and so has neither (SQLite's and PostgreSQL's
    read-only back-ends have both); None where none is needed or none can be opened.

    A ledger opened for writing (a plugin's, ``lineage-ledger repair-index``'s) audited
    record by record in this process: at a million records 66 s and 208 MiB against 19 s
    and 76 MiB through the view. The view is the same ledger (its identity is checked), and
    the audit trusts only what it proves: a view that fails makes the sequential audit run."""
    if hasattr(backend, "worker_spec") or hasattr(backend, "audit_chunk"):
        return None
    url = getattr(backend, "url", None)
    if not isinstance(url, str) or url.split("://", 1)[0].lower().split("+", 1)[0] not in ("sqlite", "postgresql"):
        return None
    from lineage_ledger.backends import open_backend

    try:
        view = open_backend(url, create=False)
    except Exception:  # noqa: BLE001 - the audit runs in this process, as before
        return None
    if view.identity != backend.identity or not hasattr(view, "audit_chunk"):
        view.close()
        return None
    return view


class FullAudit:
    """The full audit, mixed into :class:`~.verified.Verifier`."""

    backend: Backend
    store: TrustStore
    audited_now: bool
    if TYPE_CHECKING:  # the Verifier's, which this builds on
        def _extend(self, writer: TreeWriter, start: int, stop: int, prev: str | None, on_block=None,
                    touched: set[tuple[str, int]] | None = None) -> None: ...

        def _check_endorsed(self, head: TreeHead, size: int, root: str) -> TreeHead: ...

    def audit(self, *, files: bool = False, endorsed: bool = True) -> AuditResult:
        """Verify everything up to the head read now; replace the remembered tree with it."""
        store, backend = self.store, self.backend
        claim = backend.endorsed_head() if endorsed else None  # before the head, as in refresh()
        with store.locked():
            old = store.reload()
            # The ledger's head is read under the lock, after the remembered one: read before
            # it, another process could verify past it meanwhile, and the audit would take a
            # remembered head larger than its snapshot for a ledger that shrank.
            tip = backend.head()
            stop = 0 if tip is None else tip.height + 1
            records = backend.record_count() if stop else 0
            source = _audit_source(backend) if stop else None
            try:
                reads = source or backend
                tasks = _parallel.plan(reads, records, stop) if stop else None
                done = self._audit_parallel(tasks, stop, records, files, reads, old) if tasks else None
                if done is None and tasks is None:  # no workers: their bulk check, in this process
                    here = _parallel.plan_here(reads, stop) if stop else None
                    done = self._audit_parallel(here, stop, records, files, reads, old, in_process=True) \
                        if here else None
            finally:
                if source is not None:
                    source.close()
            if done is None:
                done = self._audit_here(stop, records, files)
            writer, compared, found = done
            try:
                if old is not None:
                    self._check_extends(old, writer)
                writer.close()
                store.adopt(writer)
            except BaseException:
                found.close()
                writer.close()
                shutil.rmtree(writer.directory, ignore_errors=True)
                raise
        self.audited_now = True
        head = store.head
        assert head is not None
        if claim is not None:
            try:
                head = self._check_endorsed(head, *claim)
            except BaseException:
                found.close()
                raise
        summary = ChainSummary(blocks=head.blocks, records=head.size, head=head.block_id, log_root=head.root)
        return AuditResult(summary, head, compared, found)

    def _audit_here(self, stop: int, records: int, files: bool) -> tuple[TreeWriter, int | None, FoundOutputs]:
        """The audit in this process; raises the error that names the first problem."""
        backend = self.backend
        checker = IndexChecker(backend) if backend.index_summaries(0, 0) is not None else None
        existing = ExistingFiles() if files else None
        found = FoundOutputs()
        writer = self.store.fresh_writer()

        def on_block(block, first: int, leaves: list[bytes], views) -> None:
            dedup.add(bytes.fromhex("".join(block.ids)), b"".join(leaves))
            if checker is not None:
                checker.block(block, first, views)
            if existing is not None:
                existing.add(chain.from_iterable(map(_outputs, views)))
                found.add(existing.take())

        try:
            with IdDedup(records, writer.directory) as dedup:
                self._extend(writer, 0, stop, None, on_block)
                if checker is not None:
                    checker.finish(writer.size, writer.blocks)
                self._check_duplicates(dedup)
            writer.commit(audited=True)  # into the new directory, not yet adopted
        except BaseException:
            found.close()
            writer.close()
            shutil.rmtree(writer.directory, ignore_errors=True)
            raise
        return writer, checker.compared if checker else None, found

    def _audit_parallel(self, tasks: list[_parallel.Task], stop: int, records: int, files: bool,
                        backend: Backend, old: TreeHead | None,
                        in_process: bool = False) -> tuple[TreeWriter, int | None, FoundOutputs] | None:
        """The audit by worker processes (see :mod:`._audit_parallel`), or by their bulk check
        run here (``in_process``), reading through ``backend`` (this ledger's, or a read-only
        view of it); None where anything disagrees, so that the sequential audit runs and
        names the problem."""
        writer = self.store.fresh_writer()
        found = FoundOutputs()
        try:
            names_from = self._carry_names(writer, old)
            # The records under a remembered head whose records were all checked by this rule:
            # the same bytes, or the tree does not extend it and nothing is adopted.
            checked_below = old.size if old is not None and old.bodies == BODIES_FORMAT else 0
            with IdDedup(records, writer.directory) as dedup:
                answers = (_parallel.results_here if in_process else _parallel.results)(
                    backend, tasks, files=files, names_from=names_from, checked_below=checked_below)
                compared = self._join(writer, dedup, found, answers, stop, backend, names_from)
            writer.commit(audited=True)
        except _Disagreement:
            found.close()
            writer.close()
            shutil.rmtree(writer.directory, ignore_errors=True)
            return None
        except BaseException:
            found.close()
            writer.close()
            shutil.rmtree(writer.directory, ignore_errors=True)
            raise
        return writer, compared, found

    def _carry_names(self, writer: TreeWriter, old: TreeHead | None) -> int:
        """The leaf from which the ranges' records are named: where the remembered head keeps
        names for every record it covers, the new tree starts from them and only the records
        after it are named (a repeated audit: 3.5-4 us of a worker's 19 a record); else 0.
        The new tree is adopted only if it extends the remembered one (:meth:`_check_extends`),
        so the names carried are those of the same records."""
        if old is None or not old.size or old.names != NAMES_FORMAT or writer.names_format != NAMES_FORMAT:
            return 0
        try:
            writer.carry_names(self.store.directory, old.size)
        except OSError:  # a names file that cannot be read: every record is named afresh
            return 0
        return old.size

    def _join(self, writer: TreeWriter, dedup: IdDedup, found: FoundOutputs, answers, stop: int,
              backend: Backend, names_from: int = 0) -> int:
        """Add the ranges' leaves and names to the new tree, and the outputs they found on
        disk to ``found``, in order; the index rows compared. Raises :class:`_Disagreement`
        where the ranges do not join."""
        compared = artifacts = 0
        hot = HotNames()  # names many records of a range named, joined over the ranges
        prev: str | None = None
        for task, result in answers:
            if result is None or result.first_prev != prev or task.first_index != writer.size:
                raise _Disagreement
            leaves, at = result.leaves, 0
            dedup.add(result.ids, leaves)
            named, end = max(writer.size, names_from), writer.size + len(leaves) // 32
            if named < end:  # the range's records from leaf names_from on (audit_bulk.name_from)
                writer.add_packed_names(named, end - named, result.name_counts, result.names)
            for block_id, count in zip(result.block_ids, result.counts, strict=True):
                writer.add_block(block_id, [leaves[i : i + 32] for i in range(at * 32, (at + count) * 32, 32)])
                at += count
            writer.latest = max(writer.latest, result.latest)
            hot.add(result.hot)
            if len(hot) >= hot.MAX:
                writer.add_packed_names(writer.size, 0, *hot.packed())
            prev = result.block_ids[-1] if result.block_ids else prev
            compared += result.compared
            artifacts += result.artifacts
            found.add(result.outputs)
        # Each worker counted the artifact rows of its own range (all roles) against what its
        # records name; the ranges cover every sequence number from 0, so only rows below 0
        # remain to be counted here (an index seek, not a scan of millions of rows).
        if writer.blocks != stop or backend.artifact_count(0) != 0 or \
                backend.rows_outside_the_chain(writer.size, writer.blocks):
            raise _Disagreement
        if len(hot):
            writer.add_packed_names(writer.size, 0, *hot.packed())
        self._check_duplicates(dedup)
        return compared

    def _check_duplicates(self, dedup: IdDedup) -> None:
        for record_id in dedup.duplicates():
            # A Bloom filter's suspect is looked up exactly; the scratch table's answer is exact.
            if dedup.exact or len(self.backend.by_id_prefix(record_id, limit=2)) > 1:
                raise ChainBroken(f"record {record_id[:16]} appears twice in the ledger")

    def _check_extends(self, old: TreeHead, writer: TreeWriter) -> None:
        """The new tree must hold the remembered one as its prefix (a consistency check done
        with every leaf in hand, so the first rewritten record can be named)."""
        if old.size > writer.size:
            raise HistoryRewritten(
                f"{self.backend.identity}: the ledger shrank: {old.size} records were verified on "
                f"{old.verified}, {writer.size} are stored now"
            )
        fresh = TrustStore.at(writer.directory, self.store.origin, writer.head())
        if fresh.root_at(old.size) == old.root:
            return
        first = _first_difference(self.store, fresh, old.size)
        height, position = fresh.place(first)
        raise HistoryRewritten(
            f"{self.backend.identity}: record {first} (block {height}, position {position}) is not the "
            f"record verified there on {old.verified}: history was rewritten from there on. If the "
            "ledger was restored on purpose, run `lineage-ledger reset-trust`",
            height=height,
        )


def _first_difference(old: TrustStore, new: TrustStore, size: int) -> int:
    """The first leaf index below ``size`` where two trees differ, in O(log n) node reads:
    skip each whole subtree that is the same, descend into the first that is not."""
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        width = 1 << level
        if start + width <= size and old.node(level, start >> level) == new.node(level, start >> level):
            start += width
    return start
