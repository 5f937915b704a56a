"""The trusted state's tree head and its writer: what :class:`~.trust.TrustStore` keeps for
a ledger, appended a block at a time (a refresh) or built whole beside the remembered tree
(an audit), then committed by writing the head last (see :mod:`.trust` for the files).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass
from operator import attrgetter

from blake3 import blake3

from .._artifact import _HEX64_MATCH
from .._canonical import format_time, utcnow
from .audit_records import BODIES_FORMAT
from .merkle import _next_level
from .names import FORMAT as NAMES_FORMAT
from .names import NamesBatch
from .names import kept as names_kept
from .names_files import NamesWriter, copy_names, drop_names, write_atomic
from .names_files import recover as recover_names

__all__ = ["TreeHead", "TreeWriter"]

_NODE = 32
_EMPTY = blake3(b"").digest()
_STARTS = struct.Struct("<Q")
_ended = attrgetter("ended")  # a view's end in the ledger's order (audit_rows.decode_views)


@dataclass(frozen=True)
class TreeHead:
    """A verified tree head and the chain position it was read at."""

    origin: str
    size: int  # records (leaves)
    root: str  # hex
    blocks: int  # blocks verified (heights 0 .. blocks - 1)
    block_id: str | None  # id of block ``blocks - 1``
    verified: str = ""  # when (UTC, canonical spelling)
    audited: str = ""  # when the whole ledger was last read and checked
    names: int = 0  # the format of the names kept for every verified record (0: none)
    # The rule every record under this head was checked by (audit_records.BODIES_FORMAT; 0:
    # not every record was, as in a head of an earlier release): an audit checks again only
    # the records after a head of the current rule.
    bodies: int = 0
    # The latest end, in the ledger's order (.._order), of the records verified under this
    # head ("" unknown: a head of an earlier release, or an empty ledger). A recorder that
    # read it before its task started marks its record as later (.._ledger.seen).
    latest: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TreeHead:
        """The head ``head.json`` holds; ``ValueError`` for one of the wrong shape (edited by
        hand, or damaged), which the readers then name, rather than fail on later."""
        raw = json.loads(data)
        # A head written before names were kept has no "names": 0, so it is audited once.
        head = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        counts = (head.size, head.blocks, head.names, head.bodies)
        if any(type(n) is not int or n < 0 for n in counts) or not isinstance(head.origin, str) \
                or not _is_hex(head.root) or not (head.block_id is None if head.blocks == 0 else _is_hex(head.block_id)) \
                or not isinstance(head.verified, str) or not isinstance(head.audited, str) \
                or not isinstance(head.latest, str):
            raise ValueError("a field is missing, of the wrong type, or out of range")
        return head


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and _HEX64_MATCH(value) is not None


class TreeWriter:
    """Extends the stored tree by whole blocks; ``commit`` publishes the new head.

    Holds the right edge of every level in memory (the node of each level not yet paired,
    the compact range), so an extension reads O(log n) nodes once and writes each new node
    once, whatever the batch sizes.
    """

    def __init__(self, directory: str, head: TreeHead | None, origin: str) -> None:
        self.directory = directory
        self.origin = origin
        self.size = head.size if head else 0
        self.blocks = head.blocks if head else 0
        self.block_id = head.block_id if head else None
        self.audited = head.audited if head else ""
        self.latest = head.latest if head else ""  # see TreeHead.latest
        # Names are complete only where the tree extended had them for every record, and
        # every record added since gets them (checked at commit).
        self.names_format = NAMES_FORMAT if names_kept() and (head is None or head.names == NAMES_FORMAT) else 0
        # Every block is added after its records' bodies were checked (audit_rows.decode_views),
        # so the rule holds for the tree extended where it held for the head extended.
        self.bodies_format = BODIES_FORMAT if head is None or head.bodies == BODIES_FORMAT else 0
        # Names a writer that died before its commit appended are cut back first (this
        # writer holds the state's lock), or its records would be counted twice.
        recover_names(directory, self.size)
        self._names = NamesWriter(directory, self.size)
        self._batch = NamesBatch()
        self._named = self.size  # records below this have their names written or batched
        self._files: list = []
        self._carry: list[bytes | None] = []
        size = self.size
        level = 0
        while size >> level:
            count = size >> level
            self._file(level)
            if count & 1:
                with open(_level_path(directory, level), "rb") as reader:
                    reader.seek((count - 1) * _NODE)
                    self._carry[level] = reader.read(_NODE)
            level += 1
        self._starts = _open_private(os.path.join(directory, "starts.bin"))
        self._starts.truncate(self.blocks * _STARTS.size)
        self._starts.seek(self.blocks * _STARTS.size)

    def _file(self, level: int):
        while len(self._files) <= level:
            # Level k takes 1/2**k of the writes: a megabyte of buffer for the leaves, less
            # above (twenty 1 MiB buffers were a fifth of a million-record audit's memory).
            handle = _open_private(_level_path(self.directory, len(self._files)),
                                   max(64 << 10, (1 << 20) >> len(self._files)))
            # A crashed writer may have left nodes past the head: the head says what is valid.
            valid = (self.size >> len(self._files)) * _NODE
            handle.truncate(valid)
            handle.seek(valid)
            self._files.append(handle)
            self._carry.append(None)
        return self._files[level]

    def add_block(self, block_id: str, leaves: list[bytes]) -> None:
        """Append one verified block's leaf hashes (in order) to the tree."""
        self._starts.write(_STARTS.pack(self.size))
        count = len(leaves)
        nodes, level = leaves, 0
        while nodes:
            self._file(level).write(b"".join(nodes))
            carry = self._carry[level]
            if carry is not None:
                nodes = [carry, *nodes]
            if len(nodes) & 1:
                self._carry[level] = nodes[-1]
                nodes = nodes[:-1]
            else:
                self._carry[level] = None
            nodes = _next_level(nodes) if nodes else nodes  # even length here: pairs only
            level += 1
        self.blocks += 1
        self.block_id = block_id
        self.size += count

    _BATCH = 25_000  # records whose names are gathered before they are written (an entry a batch per path and role)

    def add_names(self, first_leaf: int, views) -> None:
        """The names of the verified records ``first_leaf`` on (decoded by
        :func:`.audit_rows.decode_views`); call for every block added, in order."""
        if views:
            self.latest = max(self.latest, max(map(_ended, views)))
        if first_leaf != self._named:
            self.names_format = 0  # a gap: these names can no longer vouch for completeness
        self._batch.add(first_leaf, views)
        self._named = first_leaf + len(views)
        if self._batch.records >= self._BATCH:
            self._queue_names(*self._batch.packed())

    def carry_names(self, source: str, size: int) -> None:
        """Start a fresh writer's names from those the state directory ``source`` keeps for
        its head of ``size`` records (names of format :data:`NAMES_FORMAT`): an audit that
        finds those same records again then names only the records after them. Call under
        the state's lock, before anything is added."""
        if self.size or self._named or self._batch.records:
            raise ValueError("names are carried into a fresh writer only")
        try:
            copy_names(source, self.directory)
            recover_names(self.directory, size)  # a writer that died past that head: cut back
        except BaseException:
            drop_names(self.directory)  # nothing half copied: the records are named afresh
            raise
        self._named = size

    def add_packed_names(self, first_leaf: int, records: int, counts, data: bytes) -> None:
        """Names an audit worker gathered and packed for ``records`` records from ``first_leaf``."""
        if first_leaf != self._named:
            self.names_format = 0
        if self._batch.records:
            self._queue_names(*self._batch.packed())
        self._queue_names(counts, data)
        self._named = first_leaf + records

    _QUEUED = 8 << 20  # bytes of names held before they are written: about 6 of an audit's ranges

    def _queue_names(self, counts, data: bytes) -> None:
        self._names.queue(counts, data)
        if self._names.queued_bytes >= self._QUEUED:
            self._names.flush()

    def root(self) -> str:
        digest: bytes | None = None
        for carry in self._carry:  # lowest level first: the rightmost, smallest subtree
            if carry is not None:
                digest = carry if digest is None else blake3(b"\x01" + carry + digest).digest()
        return (digest or _EMPTY).hex()

    def head(self, *, audited: bool = False) -> TreeHead:
        now = format_time(utcnow())
        names = self.names_format if self._named == self.size else 0
        return TreeHead(self.origin, self.size, self.root(), self.blocks, self.block_id, now,
                        now if audited else self.audited, names, self.bodies_format, self.latest)

    def close(self) -> None:
        for handle in [*self._files, self._starts]:
            handle.close()
        self._files = []

    def commit(self, *, audited: bool = False) -> TreeHead:
        """Flush the nodes and names, then replace ``head.json``: readers never see a head
        whose nodes or names are not written."""
        if self._batch.records:
            self._names.queue(*self._batch.packed())
        self._names.flush()
        head = self.head(audited=audited)
        for handle in [*self._files, self._starts]:
            handle.flush()
        _write_atomic(os.path.join(self.directory, "head.json"), head.to_json())
        self._names.committed()
        return head


def _level_path(directory: str, level: int) -> str:
    return os.path.join(directory, f"level-{level:02d}.bin")


def _open_private(path: str, buffering: int = 1 << 20):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "r+b", buffering=buffering)


def _write_atomic(path: str, data: bytes) -> None:
    write_atomic(path, data, ".head-")
