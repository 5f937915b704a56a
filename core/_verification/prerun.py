"""The pre-run checks the plugins make before a task runs again: each input file against the
record that last wrote it (or read it), under a policy (``warn``, ``strict``, ``rerun``), and
each file on its own after a batch met a ledger that fails its own check.

Split from :mod:`.verify`, whose per-file check (:func:`.checks.check_artifact`) they use.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from typing import Literal

from .._errors import ArtifactError, ArtifactMismatch, NoLedger, VerificationError
from .._files.hashing import Hasher, normalize_path
from .._ledger.ledger import Ledger, open_ledger
from .checks import WAITING, ArtifactCheck, ArtifactStatus, _explain, _unreadable, check_artifact
from .verify import _LOOK_AHEAD, _WINDOW

__all__ = ["Policy", "check_before_run", "check_each", "verify_before_run"]

Policy = Literal["warn", "strict", "rerun"]

# The plugins' checks log where their captures do: one logger for what a workflow run says.
_plugin_log = logging.getLogger("lineage_ledger.capture")


def check_each(ledger: Ledger, paths: Iterable[str]) -> tuple[list[ArtifactCheck], list[str], bool]:
    """After :func:`check_before_run` raised a :class:`VerificationError` for a batch (the
    ledger failed its own check): each path checked on its own, so that a plugin treats as
    unverified only the files whose own check fails, not the whole batch.

    Returns the MODIFIED (or unreadable) files among those whose own check passed, the paths
    whose own check fails, and whether the ledger failed as a whole: a tree that fails its
    own audit (a broken chain, a fork from the remembered head, a first use's full audit that
    meets a deleted index row) can vouch for none of them, so all are returned as failing
    without a check each (each would repeat the same failing audit). That failure stays until
    the ledger is repaired: the next strict run meets it again."""
    paths = list(paths)
    try:
        ledger.tree_head()
    except VerificationError:
        return [], paths, True
    changed: list[ArtifactCheck] = []
    failing: list[str] = []
    for path in paths:
        try:
            changed.extend(check_before_run(ledger, [path], "warn"))
        except VerificationError:
            failing.append(path)
    return changed, failing, False


def check_before_run(ledger: Ledger, paths: Iterable[str], policy: Policy = "warn") -> list[ArtifactCheck]:
    """The plugins' pre-run check: files and directories that exist and differ from the ledger.

    A produced file must still hold what its last producer wrote, whoever read it since;
    a source must still hold what was last read from it. A directory is compared through
    its manifest (its files through the stat cache, whose key holds the ctime an edit
    cannot restore), and a changed one names the files inside that differ.

    Returns the MODIFIED files, and the UNREADABLE ones: recorded files that are there but
    cannot be hashed (permission denied, say), each reported alone while the others are
    checked. With ``strict`` it raises ``ArtifactMismatch`` naming them all; with ``warn``
    and ``rerun`` the caller logs them or forces their producers to run. A file that
    vanishes while it is checked counts as missing, which is not tampering.
    """
    if policy not in ("warn", "strict", "rerun"):
        from .._errors import ConfigError

        raise ConfigError(f"unknown policy {policy!r}; choose warn, strict or rerun")
    # A broken or rewritten ledger raises: nothing in it can vouch for a file. Only the
    # blocks appended since the last verification are read; each record used is proved.
    ledger.tree_head()
    from .._files.hashing import cached_hasher

    tampered = []
    unrecorded: list[ArtifactCheck] = []  # no record in the ledger names them (yet?)
    hasher: Hasher | None = None
    containers: dict = {}
    paths = list(paths)
    for start in range(0, len(paths), _WINDOW):
        window = paths[start : start + _WINDOW]
        # A task with many inputs (a merge of thousands of chunks): their index rows read at
        # once, as verify-lineage reads a directory's (10,000 inputs: 1.5-2.0 s -> 0.8 s).
        with ledger.looking_ahead(window) if len(window) >= _LOOK_AHEAD else contextlib.nullcontext():
            for path in window:
                if not os.path.exists(path):
                    continue
                try:
                    if hasher is None and os.path.isdir(path):
                        hasher = cached_hasher()
                    check = check_artifact(ledger, path, against="producer", hasher=hasher, containers=containers)
                except ArtifactError as err:
                    try:
                        recorded = os.path.lexists(path) and ledger.last_seen(path) is not None
                    except ArtifactError:  # a name no record can hold (not UTF-8)
                        recorded = False
                    if not recorded:
                        continue  # vanished meanwhile, or nothing recorded could vouch for it anyway
                    check = _unreadable(normalize_path(path), err)
                if check.status in (ArtifactStatus.MODIFIED, ArtifactStatus.UNREADABLE):
                    tampered.append(check)
                elif check.status is ArtifactStatus.UNRECORDED and check.actual is not None:
                    unrecorded.append(check)
    if tampered or unrecorded:
        tampered = _against_spool(ledger, tampered, unrecorded)
    if tampered and policy == "strict":
        raise ArtifactMismatch(
            "refusing to run on files changed outside the workflow:\n  "
            + "\n  ".join(_explain(c) for c in tampered),
            path=tampered[0].path,
        )
    return tampered


def _against_spool(ledger: Ledger, changed: list[ArtifactCheck],
                   unrecorded: list[ArtifactCheck]) -> list[ArtifactCheck]:
    """The records still waiting in this user's spool (a task of this workflow made them
    while the back-end was down, locked or slow, and they are on their way), compared with:

    * ``changed`` (differs from the ledger): a file whose content a waiting record wrote is
      dropped, a false alarm otherwise, refused under ``strict``;
    * ``unrecorded`` (no record in the ledger names it): a file a waiting record wrote, that
      no longer holds what any waiting record wrote, is MODIFIED. Its record not shipped
      yet, it counted as a file no record names, and ``strict`` let a task run on it.

    Read only where some file differs from the ledger or is not in it: a clean check of
    recorded files never reads the spool (and lines that name none of the files asked of
    are not decoded: :func:`~.._ledger.backlog.waiting_digests`)."""
    from .._ledger.deferred import waiting_digests

    try:
        count, written = waiting_digests(ledger._spool_root, ledger.backend.identity,
                                         [c.path for c in changed] + [c.path for c in unrecorded])
    except OSError:
        return changed
    if count and (changed or written):
        # INFO: in a healthy deployment a task often starts before its producer's record is
        # shipped (a shipper ships it within seconds); a file that differs is said anyway.
        _plugin_log.info("lineage-ledger: %d record(s)%s of this ledger wait in the spool (`lineage-ledger "
                         "spool ship` ships them); files they wrote are checked against them", count.records, count.kinds)
    kept = [c for c in changed if not (c.actual and c.actual in written.get(c.path, ()))]
    for check in unrecorded:
        digests = written.get(check.path)
        if digests and check.actual not in digests:
            kept.append(ArtifactCheck(check.path, ArtifactStatus.MODIFIED, min(digests), check.actual, None, "out",
                                      reason=WAITING))
    return kept


def verify_before_run(ledger: Ledger | str | None, paths: Iterable[str], policy: Policy = "warn") -> list[ArtifactCheck]:
    """The plugins' pre-run check with the policy applied; returns the MODIFIED files.

    ``strict`` raises :class:`ArtifactMismatch` naming every tampered file; ``warn`` logs
    each one; ``rerun`` returns them for the caller to force their producers. A file that
    is missing or that no record mentions is not tampering and is not reported.
    """
    try:  # the check only reads: open it so (nothing created, nothing replayed)
        opened = ledger if isinstance(ledger, Ledger) else open_ledger(ledger, read_only=True)
    except NoLedger:
        return []  # no ledger yet: nothing was recorded that could vouch for or against a file
    try:
        tampered = check_before_run(opened, [normalize_path(p) for p in paths], policy)
    finally:
        if opened is not ledger:
            opened.close()
    for check in tampered:
        if check.status is ArtifactStatus.UNREADABLE:
            _plugin_log.warning("lineage-ledger: %s cannot be checked (%s)%s", check.path, check.reason,
                                "; its producer will run again" if policy == "rerun" else "")
            continue
        _plugin_log.warning(
            "lineage-ledger: %s changed outside the workflow (ledger %s, disk %s)%s",
            check.path, (check.expected or "-")[:12], (check.actual or "-")[:12],
            "; its producer will run again" if policy == "rerun" else "",
        )
    return tampered
