"""The directories given to ``verify-lineage`` under which nothing was checked: such a
target is reported as not verified (exit 1), as a file no record names is."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .._errors import LedgerError
from .._ledger.ledger import Ledger
from .._verification.report import Report

__all__ = ["unchecked_directories"]


def unchecked_directories(report: Report, given: Iterable[str], ledger: Ledger | None = None) -> list[str]:
    """The directories among ``given`` (the targets as the user gave them) under which
    nothing was checked: no file is in them (or only what was skipped: a FIFO, a loop), they
    are not, nor lie in, nor hold a recorded directory, and no record names a file below them
    that is gone (``report.absent``). Such a target is reported as not verified (exit 1), as a
    file no record names is (UNRECORDED): "verified" would vouch for nothing (docs/directories.md).

    ``ledger``: where the report kept only some of its targets (past SHOWN files), what was
    checked under a directory is worked out again as the check's walk found it, a recorded
    directory included (checked whole, file or no file); without it, a directory holding no
    file is taken as unchecked."""
    given = [path for path in given if os.path.isdir(path)]
    if not given:
        return []
    # Every directory at or above something checked, failed or found gone: one set, so that
    # many targets each cost a look-up, not a scan of what the report holds.
    reached: set[str] = set()
    seen = [t.path for t in report.targets] + [f.path for f in report.failures if f.path]
    for path in seen + [a.directory for a in report.absent]:
        while path not in reached:
            reached.add(path)
            path = os.path.dirname(path)
    unchecked = []
    for target in given:
        if {os.path.abspath(target), os.path.realpath(target)} & reached:
            continue
        if report.not_shown and _holds_a_target(target, ledger):
            continue  # its targets were checked and counted, past those a report keeps
        unchecked.append(os.path.abspath(target))
    return unchecked


def _holds_a_target(directory: str, ledger: Ledger | None) -> bool:
    """Whether the check of ``directory`` had something to check: a file in it (a target, or
    in a recorded directory checked whole), or, with the ledger, it is, lies in or holds a
    recorded directory (checked whole, file or no file). A look-up that fails answers no: the
    directory is then said unchecked (exit 1), never taken as verified."""
    from .._files.manifest import walk_tree

    def quiet(_path: str, _why: str) -> None:
        pass

    if next(iter(walk_tree(directory, on_skip=quiet)), None) is not None:
        return True  # the common case, and no look-up for each directory on the way
    if ledger is None:
        return False

    def recorded(path: str) -> bool:
        return ledger.last_seen(path) is not None

    try:
        normal = ledger.query_path(directory)
        if recorded(normal) or ledger.container_of(normal) is not None:
            return True
        return next(iter(walk_tree(normal, is_artifact=recorded, on_skip=quiet)), None) is not None
    except (LedgerError, ValueError):
        return False
