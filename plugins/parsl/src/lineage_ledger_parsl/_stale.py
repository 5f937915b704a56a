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

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lineage_ledger import ArtifactMismatch, LedgerError, hash_file

from ._staging import worker_hashing_used
from ._unrecordable import shown

if TYPE_CHECKING:
    from ._memoizer import LedgerMemoizer

__all__ = ["StaleOutput", "outputs_gone", "stale_outputs"]

log = logging.getLogger("lineage_ledger.parsl")

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


def outputs_gone(memoizer: LedgerMemoizer, task: Mapping[str, Any], outputs: list[str]) -> list[str]:
    """The outputs of a cached result that are gone. ``strict`` refuses the reuse (recorded
    as refused); ``warn`` and ``rerun`` say so, and then reuse it or run the task again as
    for a file edited outside the workflow. Plain Parsl reuses it: the next task fails on
    the missing file, far from the cause. Not with ``WorkerHashingStaging``, whose workers'
    files the submit host may not see."""
    if worker_hashing_used(task["func"]):
        return []  # the submit host may not see the workers' files (no shared file system)
    gone = [p for p in dict.fromkeys(outputs) if not os.path.lexists(p)]
    if not gone:
        return []
    policy = memoizer.ledger.policy
    if policy == "strict":
        refusal = ArtifactMismatch(
            f"lineage-ledger refuses to reuse the cached result of task {task['id']} ({task['func_name']}): "
            "its outputs are gone (deleted outside the workflow since it ran): " + "; ".join(map(shown, gone))
            + ". Run it again with policy rerun, or remove Parsl's checkpoint of it",
            path=gone[0],
        )
        log.error("%s", refusal)
        memoizer._record(task, "failed", {"error": str(refusal)[:2000], "refused_by": "strict"}, leave_out=gone)
        raise refusal
    for path in gone:
        log.warning("lineage-ledger: %s, an output of task %s (%s), is gone (deleted outside the workflow); %s",
                    shown(path), task["id"], task["func_name"],
                    "the task runs again" if policy == "rerun" else "its cached result is reused all the same")
    return gone
