"""The records of a ``warn`` run on files a tampered ledger could not vouch for.

When the pre-run check fails because the ledger fails its own verification (index rows
deleted or edited, a broken chain: a ``VerificationError``), ``warn`` logs it and Snakemake
runs. A job of that run that reads one of the files the check asked about must not list it
as an input: the record would carry the file's current digest, become the ledger's latest
view of it, and the next ``strict`` run would accept a hidden edit of it (for a source that
no rule produces, nothing else would ever tell). What the job wrote was made from it, so its
outputs are left out too, and so, in turn, are the inputs and outputs of the jobs that read
those. The record names all of them in ``extra["not_verified"]``, with their digests under
``extra["not_verified_digests"] = {"inputs": {path: digest}, "outputs": {path: digest}}`` and
the error under ``extra["check_failed"]``: the key names Airflow's and Parsl's records use.
Under ``rerun`` the same is done for the sources whose own check failed (``extra.policy``
is then ``"rerun"``): their readers run again, but on the same file.

:class:`Unverified` rewrites a job's message in Snakemake's process (no hashing there: this
runs on its logging thread); :func:`fill_digests` hashes in the recording process, just
before the message becomes a ``TaskRun``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


class Unverified:
    """The files a failed check could not vouch for, and those this run made from them."""

    def __init__(self, paths: Iterable[str], check_failed: str, policy: str = "warn") -> None:
        self.tainted = set(paths)
        self.check_failed = check_failed[:2000]
        self.policy = policy  # rerun: only the sources whose own check failed (see _preflight)
        self._lock = threading.Lock()  # jobs end on the listener thread; the end of a run on another

    def apply(self, run: dict[str, Any]) -> None:
        """Leave the unverified inputs of ``run`` (a ``TaskRun`` message), and then all its
        outputs, out of its lists; name them in its ``extra`` instead."""
        with self._lock:
            read = [p for p in run["inputs"] if p in self.tainted]
            if not read:
                # Made from verified files only: an ordinary record, and what it wrote (a file the
                # check could not vouch for, rewritten) is this run's product, which it vouches for.
                self.tainted.difference_update(run["outputs"])
                return
            made = list(run["outputs"])
            self.tainted.update(made)  # what reads them later was made from the edit too
        known = run.get("known") or {}
        run["inputs"] = [p for p in run["inputs"] if p not in read]
        run["outputs"] = []
        # Digests the caller already has (a temp() output hashed before its deletion) are kept;
        # the others (None) are taken by the recording process (fill_digests).
        run["known"] = {p: entry for p, entry in known.items() if p not in read and p not in made}
        run["extra"] = {
            **run["extra"], "policy": self.policy, "check_failed": self.check_failed,
            "not_verified": sorted({*read, *made}),
            "not_verified_digests": {"inputs": {p: known.get(p) for p in read},
                                     "outputs": {p: known.get(p) for p in made}},
        }


def fill_digests(run: dict[str, Any]) -> None:
    """Hash the files of ``run["extra"]["not_verified_digests"]`` that have no digest yet; a
    file that cannot be hashed (gone, unreadable) keeps ``None``."""
    digests = (run.get("extra") or {}).get("not_verified_digests")
    if not isinstance(digests, dict):
        return
    missing = [(side, p) for side in ("inputs", "outputs") for p, d in (digests.get(side) or {}).items() if d is None]
    if not missing:
        return
    from lineage_ledger import LedgerError, hash_file

    for side, path in missing:
        try:
            digests[side][path] = hash_file(path).entry()
        except (LedgerError, OSError):
            pass
