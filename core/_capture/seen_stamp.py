"""A task's report stamped, in the engine's process, with what that process had seen of the
ledger when the task started (``extra["lineage_ledger.after"]`` and ``["lineage_ledger.seen"]``;
the order of :mod:`lineage_ledger._order`).

Stamped where the report arrives from the engine, never where its record is built: the same
report may be built into a record by more than one process (a recording process, and the
engine's process taking back the reports it had not acknowledged; a killed run's journal
replayed by the next run), and each must build the same bytes, one id. A report that says
already is left as it is, so that a report stamped by the engine's process keeps that value
wherever it goes.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from .._ledger.seen import reading_at_start, seen_values
from .._order import AFTER_KEY, SEEN_KEY
from .report import TaskRun

__all__ = ["seen_for", "stamp_seen"]

# (url as given, spool as given, what they default to and resolve against) -> (the ledger's
# identity, "" where it cannot be worked out; when what earlier processes left was last read,
# monotonic seconds).
_IDENTITIES: dict[tuple[str | None, ...], tuple[str, float]] = {}
_READ_AGAIN = 60.0  # a long-lived engine process (a scheduler) takes later readings too


def stamp_seen(run: TaskRun, url: str | None = None, spool: str | None = None) -> TaskRun:
    """``run``, its ``extra`` naming the latest record, and how many records, this process
    knew were in the ledger at ``url`` (``LINEAGE_LEDGER_URL`` or the default when None)
    before ``run.started``, where it knew any. A new mapping: the engine's own ``extra`` is
    left as it is. Never raises."""
    if AFTER_KEY in run.extra or SEEN_KEY in run.extra:
        return run
    values = seen_for(run.started, url, spool)
    if values:
        run.extra = {**run.extra, **values}
    return run


def seen_for(started: datetime, url: str | None = None, spool: str | None = None) -> dict[str, Any]:
    """The keys :func:`stamp_seen` gives a task that started at ``started`` (none, one or
    both): for an engine's process that sends its reports in a form of its own (Snakemake's
    journal lines). Never raises."""
    try:
        identity = _identity(url, spool)
        return seen_values(identity, started) if identity else {}
    except Exception:  # noqa: BLE001 - the record is made without them: ordered by its clock
        return {}


def _identity(url: str | None, spool: str | None) -> str:
    """The identity of the ledger at ``url`` (worked out once a process, without connecting),
    after taking what this account's other processes saw of it, again each minute (their
    readings are dated: taken late, they still serve the tasks that started after them)."""
    # What the default URL and spool resolve against is part of the key: a process that moved to
    # another project (os.chdir, a notebook's %cd) or set LINEAGE_LEDGER_URL records elsewhere.
    try:
        here = os.getcwd()
    except OSError:  # the working directory was removed: a relative default names nothing
        here = ""
    key = (url, spool, os.environ.get("LINEAGE_LEDGER_URL"), os.environ.get("LINEAGE_SPOOL"), here)
    known = _IDENTITIES.get(key)
    now = time.monotonic()
    if known is not None and (not known[0] or now - known[1] < _READ_AGAIN):
        return known[0]
    identity = ""
    try:
        from .._ledger.backlog import _default_spool
        from .._ledger.deferred import _default_url
        from .._ledger.identity import ledger_identity
        from .._ledger.spool import spool_path

        given = _default_url(url)
        identity = known[0] if known is not None else ledger_identity(given)[0]
        reading_at_start(identity, given, spool_path(_default_spool(spool), identity))
    except Exception:  # noqa: BLE001 - a bad URL is said where the record is made
        pass
    _IDENTITIES[key] = (identity, now)
    return identity
