"""The proofs a user asks for (``show ID --size N``, ``lineage-ledger consistency``): RFC
9162 inclusion and consistency proofs within the verified tree, from its stored nodes. A
mixin of :class:`~.ledger.Ledger`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .._errors import LedgerError

if TYPE_CHECKING:
    from .._log.trust import TreeHead
    from .._log.verified import Verifier
    from .lineage import LedgerRecord

__all__ = ["Proofs"]


class Proofs:
    """Inclusion and consistency proofs to the verified tree head or an earlier size of it."""

    if TYPE_CHECKING:  # what Ledger gives
        @property
        def verifier(self) -> Verifier: ...

        def tree_head(self) -> TreeHead: ...

    def inclusion_proof(self, entry: LedgerRecord, *, size: int | None = None) -> tuple[TreeHead, int, list[str]]:
        """(tree head, leaf index, RFC 9162 audit path) for a record read from this ledger:
        in the verified tree, or in that of its first ``size`` records (an earlier
        checkpoint's), whose head then holds that size and root."""
        from .._log.tree import BLAKE3
        from .._log.tree import inclusion_proof as path_of

        store = self.verifier.store
        head = self._head_at(size)
        index = store.block_start(entry.height) + entry.position
        if index >= head.size:
            raise LedgerError(f"record {entry.id[:16]} is leaf {index}: it is not in the tree of the first "
                              f"{head.size} records")
        return head, index, [node.hex() for node in path_of(store.node, index, head.size, BLAKE3)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> tuple[TreeHead, TreeHead, list[str]]:
        """(old head, new head, RFC 9162 consistency proof) from the tree of the first
        ``old_size`` records to that of ``new_size`` (default: the verified head), both
        within the verified tree."""
        from .._log.tree import BLAKE3
        from .._log.tree import consistency_proof as proof_of

        new = self._head_at(new_size)
        if old_size > new.size:
            raise LedgerError(f"no consistency proof from {old_size} records to {new.size}: the old tree must "
                              "not be the larger")
        old = self._head_at(old_size)
        return old, new, [node.hex() for node in proof_of(self.verifier.store.node, old.size, new.size, BLAKE3)]

    def _head_at(self, size: int | None) -> TreeHead:
        """The verified head, or the head of its first ``size`` records (its root from
        O(log n) verified nodes); a size past the verified tree is an error."""
        head = self.tree_head()
        if size is None or size == head.size:
            return head
        if not 0 <= size <= head.size:
            raise LedgerError(f"the verified tree holds {head.size} records; there is no tree of {size}")
        return dataclasses.replace(head, size=size, root=self.verifier.store.root_at(size))
