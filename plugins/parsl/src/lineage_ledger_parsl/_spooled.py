"""What earlier runs left in the spool, before a run's first check of its files.

The memoizer compares a task's files with the ledger's records of them. A run whose ledger
was locked or down left its records in the durable spool; they ship at the next open of
the ledger, which the recording process makes on a thread of its own, not waited for. Until
then no record in the ledger names the files that run wrote, and a file no record names is
not checked: an output edited meanwhile passed the next run's check, and ``strict`` reused
its cached result (``tests/test_parsl_spooled_check.py``).

So the memoizer's start ships what dead processes left in this ledger's spool, for at most
``START_WAIT`` seconds (nothing is opened when nothing waits). What the ledger still has not
taken (it is still locked or down) is read back for each check: a file that a record
waiting there wrote must hold what one of them wrote, or it changed outside the workflow.
The spool is read for each check only then, a run that met a ledger it cannot write to.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lineage_ledger import ArtifactCheck, ArtifactStatus, LedgerError, hash_file

if TYPE_CHECKING:
    from ._session import ParslLedger

__all__ = ["START_WAIT", "LeftInSpool", "ship_left"]

log = logging.getLogger("lineage_ledger.parsl")

#: How long a run's start waits for the back-end to take what earlier runs left in the spool.
START_WAIT = 2.0


class LeftInSpool:
    """Records of this ledger that wait in the spool while a run checks its files."""

    def __init__(self, root: str, identity: str, count: int) -> None:
        self.root, self.identity, self.count = root, identity, count

    def changed(self, paths: Iterable[str], already: Iterable[str] = ()) -> list[ArtifactCheck]:
        """Those of ``paths`` (not in ``already``) that a waiting record wrote, and that no
        longer hold what any waiting record wrote to them. Files that are gone are not
        here (the memoizer says what it does with a cached result's missing outputs)."""
        from lineage_ledger._ledger.deferred import waiting_digests

        skip = set(already)
        wanted = [p for p in paths if p not in skip]
        if not wanted:
            return []
        try:
            _, written = waiting_digests(self.root, self.identity, wanted)
        except OSError as err:
            log.warning("lineage-ledger: cannot read the records waiting in the spool (%s)", err)
            return []
        found = []
        for path, digests in written.items():
            if not os.path.lexists(path):
                continue
            try:
                actual: str | None = hash_file(path).blake3
            except LedgerError as err:
                found.append(ArtifactCheck(path, ArtifactStatus.UNREADABLE, reason=str(err)))
                continue
            if actual not in digests:
                found.append(ArtifactCheck(path, ArtifactStatus.MODIFIED, expected=sorted(digests)[0], actual=actual))
        return found


    def vouches(self, memo_hash: str, digest: str) -> bool:
        """Whether a try recorded here (``succeeded`` or ``cached``) made the checkpoint entry
        ``digest`` under ``memo_hash`` (see _values): the run that checkpointed a value ended
        while the ledger was locked or down, and its records still wait."""
        from lineage_ledger._ledger.backlog import _distinct, _read_own
        from lineage_ledger._ledger.spool import spool_path

        directory = spool_path(os.path.abspath(self.root), self.identity)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return False
        needle, seen = digest.encode(), set[bytes]()
        for name in sorted(os.listdir(directory)):
            read = _read_own(os.path.join(directory, name)) if name.endswith(".log") else None
            for line in (_distinct(read[0], seen) if read else ()):
                if needle not in line:  # a digest is written as it is: no line without it is decoded
                    continue
                try:
                    body = json.loads(line.partition(b" ")[2])
                    extra = body.get("extra") or {}
                    if body.get("status") in ("succeeded", "cached") and extra.get("memo_hash") == memo_hash \
                            and extra.get("memo_result") == digest:
                        return True
                except (ValueError, AttributeError, TypeError):
                    continue
        return False


def ship_left(ledger: ParslLedger) -> LeftInSpool | None:
    """At the start of a run: ship what earlier runs left in ``ledger``'s spool (at most
    ``START_WAIT`` s); what still waits then, to check files against, or None. A spool with
    no record waiting (the usual case; the recording process's own segment is empty or
    shipped) is only listed: the ledger is not opened."""
    from lineage_ledger._ledger.backlog import _scan
    from lineage_ledger._ledger.deferred import WaitingInSpool, ship, spool_first
    from lineage_ledger._ledger.spool import spool_path

    capture = ledger.capture
    try:
        place = spool_first(capture.url, spool=capture.spool)
        root, identity = place.spool_root, place.identity
        place.close()
        directory = spool_path(os.path.abspath(root), identity)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return None
        left = _scan(directory)
        if left.records > left.live:  # what dead processes left: theirs to ship is nobody's but ours
            shipped, left = ship(capture.url, spool=capture.spool, timeout=START_WAIT)
            if shipped:
                log.info("lineage-ledger: shipped %d record(s) of earlier runs from the spool", shipped)
    except WaitingInSpool as err:
        left = err.left
        log.warning("lineage-ledger: records of earlier runs wait in the spool (%s); this run checks its files "
                    "against them as well as against the ledger", err)
    except Exception as err:  # noqa: BLE001 - the checks say what is wrong with the ledger
        log.warning("lineage-ledger: could not ship the records of earlier runs from the spool (%s: %s)",
                    type(err).__name__, err)
        return None
    return LeftInSpool(root, identity, left.records) if left.records else None
