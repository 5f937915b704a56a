"""The check before every run of what ``storeDir`` tasks stored, with ``-resume`` or without.

Nextflow skips a task with ``storeDir`` on any run while its declared outputs are in the
store ("[skipping] Stored process"): it looks that they are there, not at what they hold.
A stored file edited since (its size and mtime kept, or not) was read by the tasks that run
on it and went into the results, under ``strict`` too, on a run without ``-resume``, which
the wrapper did not check at all. So before every run (unless ``--ledger-policy off``) the
files the tasks launched from this directory stored (``_state.load_stores``; each task's
record lists them, ``_stored``) are rehashed and compared with the ledger (their producer's
record), as before a ``-resume``: ``strict`` refuses (exit status 1, Nextflow not started),
``rerun`` moves the storing task's stored files (and its work directory, if still there)
aside so that Nextflow makes them again, ``warn`` names them. A ledger that cannot be read
refuses under ``strict``; under the others it is logged and the run goes on (a ledger that
fails its own check is not singled out file by file here, as it is before a ``-resume``).

Only runs from a launch directory whose tasks stored files pay for it: looking for that
list is a ``stat`` (``_stored.stores_listed``) before Nextflow starts.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._args import Command

log = logging.getLogger("lineage_ledger.nextflow")


def check_stored(command: Command, launch_dir: str, url: str, checked: set[str]) -> int | None:
    """Apply the policy to the stored files; an exit status when the run must not start.
    ``checked`` gets the files looked at (the check before ``-resume`` leaves them out)."""
    from lineage_ledger import ConfigError

    from . import _preflight, _state

    plan = _preflight.Plan()
    try:
        _preflight.ship_left(url)  # a killed run's records, before anything reads the ledger
        for key, task in _state.load_stores(launch_dir).items():
            stored = [p for p in task.get("stored") or [] if isinstance(p, str) and os.path.lexists(p)]
            if task.get("status") != "succeeded" or not stored:
                continue  # a failed try stored nothing; files gone are made again by Nextflow
            plan.tasks[key] = task
            plan.producers.update(dict.fromkeys(stored, key))
            plan.checked += stored
        checked.update(plan.checked)
        plan.tampered = _preflight.check(url, plan.checked)
    except ConfigError as err:  # a URL no retry can fix: every record of the run would be lost too
        print(f"nextflow-ledger: refusing to run: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - an unreadable ledger: strict refuses, others say so
        if command.policy == "strict":
            print(f"nextflow-ledger: refusing to run (--ledger-policy strict): the stored files could not be "
                  f"checked against the ledger: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        log.error("lineage-ledger: could not check the stored files (storeDir) against the ledger (%s: %s); "
                  "running without the %s policy for them", type(err).__name__, err, command.policy)
        return None
    if not plan.tampered:
        return None
    lines = "\n  ".join(_preflight.describe(c) for c in plan.tampered)
    if command.policy == "strict":
        print(f"nextflow-ledger: refusing to run (--ledger-policy strict); files changed outside the "
              f"workflow:\n  {lines}", file=sys.stderr)
        return 1
    log.warning("lineage-ledger: files changed outside the workflow:\n  %s", lines)
    if command.policy != "rerun":
        return None
    try:
        _preflight.quarantine(launch_dir, plan, _preflight.to_rerun(plan))
    except OSError as err:  # the promised rerun cannot happen: do not run on the changed files
        print(f"nextflow-ledger: refusing to run (--ledger-policy rerun): cannot move a changed task's files "
              f"aside: {err}", file=sys.stderr)
        return 1
    return None
