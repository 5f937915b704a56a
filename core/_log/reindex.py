"""The index rebuilt from the verified records, for ``lineage-ledger repair-index``.

An audit that finds index rows deleted or edited (``IndexTampered``) names the problem but
fixes nothing, and every targeted read of those paths keeps failing: a plugin under the
``strict`` policy refuses the file for good, even after its producer ran again. The index
is derived data: every artifact row and every record row's run id, height and position
follows from the record bodies and their places in the chain. So it can be derived again,
from records verified here first, exactly as the audit verifies the chain (ids, heights,
links, Merkle roots, record hashes). Where the records themselves do not verify, nothing is
rebuilt: that is a matter for a backup, not for the index.

The back-ends write only the rows that differ from what this derives, and delete the record
rows no verified block places (past the chain's last record, before its first): after a
repair, every index row is one derived here (``ledger_backends/_sql_rebuild.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._errors import ChainBroken
from .audit_rows import decode_views
from .chain import verify_block_columns

__all__ = ["verified_index"]

INPUT, OUTPUT = 0, 1  # the artifact rows' roles


def verified_index(backend: Any, stop: int) -> Iterator[tuple[list[tuple], list[tuple]]]:
    """For each of blocks 0 to ``stop`` in order, once verified: its records' index columns
    ``(height, position, run_id, seq)`` and its artifact rows ``(path, role, seq, digest,
    ended)``, the sequence number of a record being its place in the ledger."""
    prev: str | None = None
    expected = seq = 0
    for block in backend.block_columns(0, stop):
        verify_block_columns(block, expected, prev)
        records: list[tuple] = []
        artifacts: list[tuple] = []
        for position, view in enumerate(decode_views(block)):
            records.append((block.height, position, view.run_id, seq))
            artifacts.extend((path, INPUT, seq, entry.blake3, view.ended) for path, entry in view.inputs.items())
            artifacts.extend((path, OUTPUT, seq, entry.blake3, view.ended) for path, entry in view.outputs.items())
            seq += 1
        yield records, artifacts
        prev = block.id
        expected += 1
    if expected != stop:
        raise ChainBroken(f"block {expected} is missing: the chain stops before the stored head", height=expected)
