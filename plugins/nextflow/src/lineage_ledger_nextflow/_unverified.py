"""The records of a ``warn`` run on files a tampered ledger could not vouch for.

Before a ``-resume`` the wrapper checks the files of the resumed session's tasks. When that
check fails because the ledger fails its own verification (index rows deleted or edited, a
broken chain: a ``VerificationError``), ``warn`` logs it and Nextflow runs. A task of that
run that reads one of those files must not list it as an input: its record would carry the
file's current digest, become the ledger's latest view of it, and the next ``strict``
``-resume`` would accept a hidden edit of it (for a source no process produced, nothing else
would ever tell). What the task wrote was made from it, so its outputs are left out too, and
so, in turn, are the files of the tasks (and publications) that read those. The record names
them in ``extra["not_verified"]``, with their digests under ``extra["not_verified_digests"] =
{"inputs": {path: digest}, "outputs": {path: digest}}`` and the error under
``extra["check_failed"]``: the key names Airflow's and Parsl's records use.
Under ``rerun`` the same is done for the sources whose own check failed (``extra.policy``
is then ``"rerun"``): their readers run again, but on the same file.

The session file still lists what each task really read and wrote, so the next ``-resume``
checks those files again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any


class Unverified:
    """The files a failed check could not vouch for, and those this run made from them."""

    def __init__(self, paths: Iterable[str], check_failed: str, policy: str = "warn") -> None:
        self.tainted = set(paths)
        self.check_failed = check_failed[:2000]
        self.policy = policy  # rerun: only the sources whose own check failed (see _preflight)
        self._lock = threading.Lock()  # tasks end on the log follower's thread; publications later

    def apply(self, inputs: Sequence[str], outputs: Sequence[str],
              extra: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The inputs and outputs a task's record may list; names the others in ``extra``."""
        with self._lock:
            read = [p for p in inputs if p in self.tainted]
            if not read:
                # Made from verified files only: an ordinary record, and what it wrote (a published
                # file the check could not vouch for, overwritten) is this run's product.
                self.tainted.difference_update(outputs)
                return list(inputs), list(outputs)
            made = list(outputs)
            self.tainted.update(made)  # what reads them later was made from the edit too
        extra.update(
            policy=self.policy, check_failed=self.check_failed, not_verified=sorted({*read, *made}),
            not_verified_digests={"inputs": {p: _digest(p) for p in read}, "outputs": {p: _digest(p) for p in made}},
        )
        return [p for p in inputs if p not in read], []


def _digest(path: str) -> dict[str, Any] | None:
    """What is at ``path`` now, as the record's file entries say it; None if it cannot be hashed."""
    from lineage_ledger import LedgerError, hash_file

    try:
        return hash_file(path).entry()
    except (LedgerError, OSError):
        return None
