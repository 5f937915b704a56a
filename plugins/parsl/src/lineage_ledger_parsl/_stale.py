"""Whether a cached result's outputs on disk are the ones it made.

The pre-run check compares each file with the ledger's *last* record of it. For a cache hit
that is not enough: runs with a parameter ``a``, then ``b``, then ``a`` again leave on disk
what ``b``'s try wrote, which is also what the last record says, and Parsl's checkpoint
still holds ``a``'s result. Reusing it hands the next task ``b``'s file under ``a``'s name
(tests/test_parsl_deployed_stale_cache.py). Every try the plugin records carries its memo
key (``extra["memo_hash"]``), so the ledger can tell which versions of an output the cached
result's own key made: an output on disk that is none of them, where some are known, is
stale. Where no record of the key wrote the file (a checkpoint older than the ledger), the
check above is all there is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lineage_ledger import LedgerError, hash_file

__all__ = ["StaleOutput", "stale_outputs"]

_MADE = ("succeeded", "cached")  # a failed try's partial output is not what the result made


class StaleOutput:
    """An output of a cached result that its memo key never wrote with the bytes on disk."""

    __slots__ = ("path", "disk", "made")

    def __init__(self, path: str, disk: str, made: list[str]) -> None:
        self.path, self.disk, self.made = path, disk, made

    def __str__(self) -> str:
        return f"{self.path} (made {', '.join(d[:12] for d in self.made)}; disk {self.disk[:12]})"


def stale_outputs(ledger: Any, memo_hash: str | None, paths: Iterable[str]) -> list[StaleOutput]:
    """The ``paths`` (existing outputs of a cache hit with key ``memo_hash``) whose bytes no
    try with that key recorded writing, where some did write the path. Raises
    :class:`LedgerError` where the ledger cannot be read."""
    if not memo_hash:
        return []
    found: list[StaleOutput] = []
    for path in paths:
        try:
            disk = hash_file(path).blake3
        except LedgerError:  # gone or unreadable: the other checks name it
            continue
        key = ledger.query_path(path)
        # The common case in one index step: the last writer is a try of this very key.
        last = ledger.last_seen(path, ("out",))
        if last is not None and _made(last[0].record, memo_hash) and last[2].get("blake3") == disk:
            continue
        made = sorted({entry.record.outputs[key]["blake3"] for entry in ledger.producers(path)
                       if _made(entry.record, memo_hash) and key in entry.record.outputs})
        if made and disk not in made:
            found.append(StaleOutput(path, disk, made))
    return found


def _made(record: Any, memo_hash: str) -> bool:
    return record.status in _MADE and (record.extra or {}).get("memo_hash") == memo_hash
