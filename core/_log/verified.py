"""Verified reads: the trusted tree head brought up to date, and every row checked against it.

Three operations, after RFC 9162 and the Go checksum-database client:

* :meth:`Verifier.audit` streams the whole ledger at the head it read first: every block's
  id, height, link, Merkle root and record hashes; every index row against the record it
  names; duplicate record ids. Memory stays bounded (a block at a time; duplicates by a
  Bloom filter of at most 16 MiB, or a scratch table sorted on disk: :mod:`.dedup`). It
  builds the log tree beside the remembered one and replaces it only if the new tree
  extends the old (else :class:`HistoryRewritten`). In :mod:`.audit_full`.
* :meth:`Verifier.refresh` proves the ledger still holds the block the remembered head
  ended on, then verifies and adds only the blocks appended since; with nothing remembered
  it audits once.
* :meth:`Verifier.check` takes a row a back-end's index returned (block height, position,
  record id and body) and proves it: the body hashes to the id, and that id is the leaf the
  verified tree holds at that place. Callers then check that the record says what the index
  claimed (path, digest, role, run): a row that disagrees raises :class:`IndexTampered`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from blake3 import blake3

from .._errors import ChainBroken, ConfigError, HistoryRewritten, IndexTampered, RecordTampered
from .._model import BlockColumns, StoredRecord
from .audit_full import AuditResult, FullAudit
from .audit_rows import decode_views
from .chain import verify_block_columns
from .names import DIRECTORY, INPUT, OUTPUT, RUN, bucket_of, directories_of, path_key
from .names import FORMAT as NAMES_FORMAT
from .names import kept as names_kept
from .names_files import drop_entries
from .trust import TreeHead, TreeWriter, TrustStore

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend, Located

__all__ = ["AuditResult", "Verifier"]

_CATCH_UP_SECONDS = 5.0  # how long an endorsed head may be ahead of what our peer serves
_NAMES_KEPT = 16  # entries of one path and role kept beside the tree before older ones go
_COMPACT_RECORDS = 1_000  # a refresh of more records leaves them (it keeps one entry a path)
_COMPACT_PATHS = 256  # paths a refresh looks at for that


class Verifier(FullAudit):
    """Keeps one ledger's trusted tree head current and checks rows against it."""

    def __init__(self, backend: Backend, store: TrustStore) -> None:
        self.backend = backend
        self.store = store
        self.audited_now = False  # set when this process had to audit the whole ledger

    # -- keeping the head current ------------------------------------------------------------
    @contextlib.contextmanager
    def _state_disk(self) -> Iterator[None]:
        """A state that cannot be written (a full disk, a quota, read-only, not this user's to
        write) named as the state's: it ended in "unexpected OSError: [Errno 28] No space left
        on device", and a user looked at the ledger's disk (tests/test_trust_attack_state.py). The head is replaced only
        after its files are written, so nothing verified before is lost."""
        try:
            yield
        except OSError as err:
            # Only the state's own files (or a write that names no file: a close, a flush): a
            # file the audit hashes that cannot be read is the audit's finding, not the state's.
            where = os.fsdecode(err.filename) if isinstance(err.filename, (str, bytes)) else None
            root = os.path.dirname(self.store.directory)
            if (err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
                    or (where is not None and os.path.commonpath([root, os.path.abspath(where)]) != root)
                    or (where is None and not _state_cannot_take(self.store.directory, err.errno))):
                raise
            raise ConfigError(f"cannot keep the verified tree head in {self.store.directory}: {err.strerror}"
                              f"{f' ({where})' if where else ''}; make room there or give it back to this user, "
                              "or set LINEAGE_STATE_DIR to another private directory") from err

    def audit(self, *, files: bool = False, endorsed: bool = True) -> AuditResult:
        with self._state_disk():
            return super().audit(files=files, endorsed=endorsed)

    def refresh(self, *, endorsed: bool = True) -> TreeHead:
        """Bring the verified head up to date; where the back-end's other parties sign a tree
        head (Fabric's peers), it must be this tree's at that size (``endorsed=False``: the
        caller compares it itself)."""
        with self._state_disk():
            if not endorsed:
                return self._refresh(endorsed=False)
            # Read first, so that the verified head read after it covers at least its size.
            claim = self.backend.endorsed_head()
            head = self._refresh()
            if claim is not None:
                head = self._check_endorsed(head, *claim)
            return head

    def _check_endorsed(self, head: TreeHead, size: int, root: str) -> TreeHead:
        """The tree head the back-end's other parties sign must be this tree's at that size."""
        deadline = time.monotonic() + _CATCH_UP_SECONDS
        while size > head.size and time.monotonic() < deadline:
            time.sleep(0.05)  # the endorsers committed a block our own peer has not yet
            head = self._refresh()
        if size > head.size:
            raise HistoryRewritten(
                f"{self.backend.identity}: its endorsers sign a tree of {size} records, {head.size} were "
                "read and verified here: records are withheld from this client")
        if self.store.root_at(size) != root:
            raise HistoryRewritten(
                f"{self.backend.identity}: the tree head its endorsers sign (size {size}, root {root}) is "
                f"not the tree verified here (root {self.store.root_at(size)} at that size): the records "
                "read, or the tree remembered here, differ from the ledger they hold")
        return head

    def _refresh(self, *, endorsed: bool = True) -> TreeHead:
        store, backend = self.store, self.backend
        for _ in range(50):
            head = store.reload()
            if head is None or (head.names != NAMES_FORMAT and names_kept()):
                # Nothing remembered, or a tree remembered before names (or their counts) were
                # kept beside it (readers need them to notice deleted index rows): read
                # everything once.
                return self.audit(endorsed=endorsed).head
            tip = backend.head()
            have = -1 if tip is None else tip.height
            if have < head.blocks - 1:
                raise HistoryRewritten(
                    f"{backend.identity}: the ledger shrank: {head.blocks} blocks ({head.size} records) "
                    f"were verified on {head.verified}, {have + 1} are stored now. If it was restored "
                    "from a backup on purpose, run `lineage-ledger reset-trust` and verify it again"
                )
            if tip is None or (tip.height, tip.id) == (head.blocks - 1, head.block_id):
                return head
            # The block the head ended on, as it was (its id: one row, not the block's bodies).
            if head.blocks and backend.block_id_at(head.blocks - 1) != head.block_id:
                raise self._forked(head)
            with store.locked():
                if store.reload() != head:
                    continue  # another process extended it meanwhile: look again
                writer = store.writer()
                touched: set[tuple[str, int]] = set()
                try:
                    self._extend(writer, head.blocks, tip.height + 1, head.block_id, touched=touched)
                    writer.commit()
                finally:
                    writer.close()
                head = store.reload()
                self._compact_names(touched)
                # Up to the tip read above: a writer appending faster than this process
                # verifies must not keep it here (it gave up after 50 rounds, ChainBroken).
                assert head is not None
                return head
        raise ChainBroken(f"{backend.identity}: the verified head kept changing under this process")

    def _extend(self, writer: TreeWriter, start: int, stop: int, prev: str | None,
                on_block=None, touched: set[tuple[str, int]] | None = None) -> None:
        expected, first = start, writer.size
        for block in self.backend.block_columns(start, stop):
            _header, leaves = verify_block_columns(block, expected, prev)
            views = decode_views(block)
            if on_block is not None:
                on_block(block, writer.size, leaves, views)
            if touched is not None:
                if writer.size + len(views) - first > _COMPACT_RECORDS:
                    touched.clear()
                    touched = None
                elif len(touched) < _COMPACT_PATHS:
                    for view in views:
                        touched.update((path, OUTPUT) for path in view.outputs)
                        touched.update((path, INPUT) for path in view.inputs)
                        touched.add((view.run_id, RUN))
                        touched.update((directory, DIRECTORY) for directory in directories_of([*view.outputs, *view.inputs]))
            writer.add_names(writer.size, views)
            writer.add_block(block.id, leaves)
            prev = block.id
            expected += 1
        if expected != stop:
            raise ChainBroken(f"block {expected} is missing: the chain stops before the stored head",
                              height=expected)

    def _compact_names(self, touched: set[tuple[str, int]]) -> None:
        """Each refresh keeps the last writer and the last reader of every path its records
        name, and the last record of each run (see :mod:`.names`), so a file every task
        reads or rewrites, a long run, or a directory tasks write in, gains an entry a task.
        Past ``_NAMES_KEPT`` of
        them, the records behind them are proved and read, and the older ones that name the
        path are dropped, their counts added to the latest's: readers need only the latest,
        and the sum. An entry whose record also names another path with the same key stays
        (it may be that path's, with that path's count), and where the latest is such an
        entry, the path is left as it is. (Under the state's lock, after the commit.)"""
        store = self.store
        dropped: dict[int, set[tuple[int, int, int]]] = {}
        counted: dict[int, dict[tuple[int, int], int]] = {}
        for name, role in touched:
            size = store.head.size if store.head else 0
            found = {c.leaf: c.records for c in store.names(name) or () if c.role == role and c.leaf < size}
            if len(found) <= _NAMES_KEPT:
                continue
            key = path_key(name)
            naming = []
            for leaf, located in self.located_at(list(found)).items():
                self.check(located)
                view = decode_views(BlockColumns(located.height, "", b"", [located.record.id],
                                                 [located.record.body]))[0]
                side = {view.run_id: None} if role == RUN else view.outputs if role == OUTPUT else view.inputs \
                    if role == INPUT else dict.fromkeys(directories_of([*view.outputs, *view.inputs]))
                if name in side:
                    shared = any(other != name and path_key(other) == key for other in side)
                    naming.append((view.ended, leaf, shared))
            if len(naming) < 2 or max(naming)[2]:
                continue
            _ended, keep, _shared = max(naming)
            gone = {(key, leaf << 2 | role, found[leaf]) for ended, leaf, shared in naming
                    if leaf != keep and not shared}
            if gone:
                dropped.setdefault(bucket_of(key), set()).update(gone)
                counted.setdefault(bucket_of(key), {})[key, keep << 2 | role] = sum(count for *_k, count in gone)
        for bucket, entries in dropped.items():
            drop_entries(store.directory, bucket, entries, counted[bucket])

    def located_at(self, leaves: list[int]) -> dict[int, Located]:
        """The stored records at these leaves of the verified tree, with their places (not
        yet proved: :meth:`check` them)."""
        from lineage_ledger.backends import Located

        store = self.store
        places = {leaf: store.place(leaf) for leaf in leaves}
        stored = self.backend.records_at(list(places))
        if stored is None:  # a back-end without positions: the blocks that hold them
            stored = {}
            for height in sorted({h for h, _p in places.values()}):
                for block in self.backend.block_columns(height, height + 1):
                    for leaf, (at, position) in places.items():
                        if at == block.height and position < len(block.ids):
                            stored[leaf] = StoredRecord(block.ids[position], block.bodies[position])
        found = {}
        for leaf, (height, position) in places.items():
            record = stored.get(leaf)
            if record is None:
                raise RecordTampered(f"record {leaf} (block {height}, position {position}), which was verified, "
                                     "is no longer stored", height=height)
            found[leaf] = Located(height, position, record)
        return found

    def _forked(self, head: TreeHead) -> HistoryRewritten:
        return HistoryRewritten(
            f"{self.backend.identity}: block {head.blocks - 1}, where the tree verified on "
            f"{head.verified} ended ({head.size} records, root {head.root}), is no longer stored as it "
            "was: history was rewritten. Run `verify-lineage` (a full audit names the first changed "
            "record); if the ledger was restored on purpose, run `lineage-ledger reset-trust`"
        )

    # -- targeted reads --------------------------------------------------------------------------
    def check(self, located: Located, *, hash_body: bool = True) -> int | None:
        """Prove an index row: returns the record's leaf index, or None for a row newer than
        the verified head (appended since; the caller's answer is as of that head).
        ``hash_body=False`` where the caller answers from bytes of this id it proved before."""
        store = self.store
        head = store.head
        assert head is not None
        height, position, stored = located.height, located.position, located.record
        if height >= head.blocks:
            # Appended after the head was read, or a row outside the chain: the head read
            # now covers every row the look-up could have seen, so one past it is forged.
            head = self.refresh()
            if height >= head.blocks:
                raise IndexTampered(f"an index row places record {stored.id[:16]} in block {height}, "
                                    f"past the chain's head (block {head.blocks - 1}): a row outside the chain",
                                    height=height)
        if height < 0 or position < 0:
            raise IndexTampered(f"an index row places record {stored.id[:16]} at block {height}, "
                                f"position {position}, which does not exist", height=height)
        first = store.block_start(height)
        if position >= store.block_start(height + 1) - first:
            raise IndexTampered(f"an index row places record {stored.id[:16]} at block {height}, "
                                f"position {position}, past the end of that block", height=height)
        index = first + position
        if stored.id == "" and stored.body == b"":  # what a store hands back for a row it lacks
            raise RecordTampered(f"record {index} (block {height}, position {position}), which was verified, is "
                                 "missing from the store: its block names it, no record row holds it", height=height)
        if hash_body and blake3(stored.body).hexdigest() != stored.id:
            raise RecordTampered(f"record {stored.id[:16]} in block {height} does not hash to its id",
                                 height=height)
        try:
            leaf = blake3(b"\x00" + bytes.fromhex(stored.id)).digest()
        except ValueError:
            leaf = b""
        if leaf != store.leaf(index):
            raise IndexTampered(
                f"an index row places record {stored.id[:16]} at block {height}, position {position}, "
                "but the verified tree holds another record there", height=height)
        return index


def _state_cannot_take(directory: str, code: int | None) -> bool:
    """Whether the state's own disk is what refused a write that names no file (a flush or a
    close): full, read-only, or not this user's to write. The audit spills what it found to a
    temporary folder elsewhere (its outputs, its duplicate ids), whose full disk is not the
    state's to be blamed for."""
    try:
        if code in (errno.EACCES, errno.EPERM):
            return not os.access(directory, os.W_OK)
        fs = os.statvfs(directory)
    except OSError:
        return True
    if code == errno.EROFS:
        return bool(fs.f_flag & os.ST_RDONLY)
    return fs.f_bavail * fs.f_frsize < (1 << 20)  # ENOSPC, EDQUOT: less than a MiB left there
