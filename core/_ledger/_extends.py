"""Before records are shipped: the ledger still extends the tree head this account verified.

The read commands refuse a ledger whose history was rewritten since this account last
verified it (it shrank, or the block the remembered head ended on is no longer stored as
it was): :class:`HistoryRewritten`, exit 1, "run `lineage-ledger reset-trust`". Appending
to it anyway would put records into a history the user has not accepted, and bury the
rewrite under new blocks (a shrunk ledger, once appended to, reads as a fork). So the
shipping path (:class:`~.deferred.DeferredLedger`: ``run``, ``spool ship``, the engines'
recorders and shippers) makes the check :meth:`Verifier.refresh` begins with, without
verifying the blocks appended since (a reader's work, which grows with them): one look at
the stored head, and one at the id of the block the remembered head ended on, before every
shipment. The records wait in the spool until the user looks, or resets the trust on purpose.

Every shipment, not once per remembered head: a long-running process (a scheduler, a
DataFlowKernel) whose account's head lags more than 64 blocks behind (so its own appends do
not move it: :meth:`Ledger._remember_appended`) confirmed that block once and then shipped
into a fork made afterwards that left the ledger no shorter, for the rest of its life
(tests/test_writer_fork_check.py). One indexed row a shipment (``Backend.block_id_at``).

Only a head that is remembered is checked, and nothing is created to find out: an account
that never verified the ledger, or whose state cannot be used (the read commands say why),
ships as before.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._environment import state_root
from .._errors import ConfigError, HistoryRewritten
from .._log.trust import TrustStore, trust_identity
from .spool import earlier_names

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = ["check_extends", "remembered_store"]


def remembered_store(ledger: Ledger) -> TrustStore | None:
    """This account's state of ``ledger`` where it holds a head (or an interrupted audit
    left one aside), else None; nothing is created to find out."""
    backend = ledger.backend
    if not backend.shared_between_processes:
        return None  # memory://: its state lives and dies with this process
    try:
        base = ledger._state_dir or state_root()
    except ConfigError:
        return None  # a relative LINEAGE_STATE_DIR: no state kept, the readers refuse it
    identity = trust_identity(backend)
    for name in (identity, *earlier_names(identity)):
        directory = TrustStore.directory_for(name, base)
        if os.path.lexists(os.path.join(directory, "head.json")) or os.path.lexists(directory + ".old"):
            break
    else:
        return None
    try:
        return ledger.verifier.store  # the state as every reader opens it (an earlier name's taken over)
    except ConfigError:
        return None


def check_extends(ledger: Ledger) -> tuple[int, str] | None:
    """Raise :class:`HistoryRewritten` where ``ledger`` no longer extends the tree head this
    account remembers for it. Returns ``(blocks, last block id)`` of the head found still
    stored (None where no head is remembered)."""
    store = remembered_store(ledger)
    if store is None:
        return None
    try:
        head = store.reload()  # an origin that changed raises HistoryRewritten here
    except ConfigError:
        return None  # a damaged state: the read commands name it and ask for reset-trust
    if head is None or not head.blocks or head.block_id is None:
        return None  # nothing verified, or an empty ledger: anything extends it
    backend = ledger.backend
    tip = backend.head()
    stored = -1 if tip is None else tip.height
    if tip is None or stored < head.blocks - 1:
        raise HistoryRewritten(
            f"{backend.identity}: the ledger shrank: {head.blocks} blocks ({head.size} records) were verified on "
            f"{head.verified}, {stored + 1} are stored now, so nothing is appended to it. If it was restored "
            "from a backup on purpose, run `lineage-ledger reset-trust` and verify it again")
    key = (head.blocks, head.block_id)
    if (tip.height, tip.id) == (head.blocks - 1, head.block_id):
        return key
    if backend.block_id_at(head.blocks - 1) != head.block_id:
        raise HistoryRewritten(
            f"{backend.identity}: block {head.blocks - 1}, where the tree verified on {head.verified} ended "
            f"({head.size} records, root {head.root}), is no longer stored as it was: history was rewritten, "
            "so nothing is appended to it. Run `verify-lineage` (a full audit names the first changed "
            "record); if the ledger was restored on purpose, run `lineage-ledger reset-trust`")
    return key
