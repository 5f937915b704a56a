"""The check before ``-resume``: the files the resumed run would build on, against the ledger.

Nextflow decides whether to reuse a task from its cache by the task's hash, which (in its
default ``cache`` mode) covers each input file's path, size and modification time, and
then only checks that the declared outputs exist. An output in a work directory, or a
published file, edited with its size kept and its mtime put back (``touch -r``) is reused
as if nothing happened. So before a ``-resume`` the wrapper rehashes, for every task of the
resumed session that ended well and whose work directory is still there:

- its outputs in the work directory (what a cached task hands downstream),
- the files it published,
- the real files behind its staged inputs (a source edited the same way),

and compares each with the ledger's last record of it (``lineage_ledger.check_before_run``:
a produced file with its last producer, a source with its last read). It cannot know which
of these tasks Nextflow will really reuse (that needs Nextflow's hash), so it checks them all.

Policies on a changed file: ``warn`` names it and runs; ``strict`` refuses (exit status 1,
nothing run); ``rerun`` moves aside the work directory of each task that made a changed file
(or read a changed source), and the files that task published, into
``.lineage/nextflow/quarantine/<time>/``. Nextflow then finds no cache entry it can use for
that task and runs it again, in the same place; its downstream tasks follow because their
inputs changed. That is Nextflow's own documented way to force one task again (remove its
work directory); moving keeps the changed files for inspection.

When the batch check fails the ledger's own verification (a ``VerificationError``: an index
row that disagrees with its record, a deleted row, a broken chain, a fork from the remembered
head), ``strict`` refuses; ``warn`` and ``rerun`` check each file again on its own
(:func:`one_by_one`), and only those whose own check fails are unverified (all of them when
the ledger fails as a whole). ``rerun`` counts them as changed, so the tasks that made them
(or read them, for sources), as the wrapper's own record of the session names them, are
moved aside and run again; the records of the readers of an unverified source leave it out
as under ``warn`` (``_unverified``), since they read the same edit. A ledger merely out of
reach (back-end down, locked) is logged and the run goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import _state
from ._workdir import a_link_to_no_file

log = logging.getLogger("lineage_ledger.nextflow")


@dataclass
class Plan:
    checked: list[str] = field(default_factory=list)
    producers: dict[str, str] = field(default_factory=dict)  # output or published path -> task key
    consumers: dict[str, list[str]] = field(default_factory=dict)  # input path -> reader task keys
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # the candidates for the cache
    tampered: list[Any] = field(default_factory=list)  # lineage_ledger.ArtifactCheck (MODIFIED)
    unverified: list[str] = field(default_factory=list)  # asked about, but the ledger failed its own check


def plan(tasks: dict[str, dict[str, Any]]) -> Plan:
    """Every file the tasks (``{key: task}`` as ``_state`` keeps them) that Nextflow may reuse
    consist of."""
    result = Plan()
    checked: dict[str, None] = {}
    for key, task in tasks.items():
        workdir = task.get("workdir")
        if task.get("status") != "succeeded" or not workdir or not os.path.isfile(os.path.join(workdir, ".exitcode")):
            continue  # Nextflow reruns it anyway: its files are about to be replaced
        result.tasks[key] = task
        for path in task.get("outputs", []):
            result.producers[path] = key
            checked[path] = None
        for source, target in task.get("published", []):
            result.producers[target] = key
            # The published link to a link the task made that leads to no file is not recorded
            # (_tasks), and its check would walk what it leads to: the task's link is compared
            # by its target text (_appeared).
            if not (a_link_to_no_file(source) and os.path.islink(target)):
                checked[target] = None
        for path in task.get("inputs", []):
            result.consumers.setdefault(path, []).append(key)
            checked[path] = None
    result.checked = list(checked)
    return result


#: Seconds the records earlier runs left in the spool may take to ship before a check.
SHIP_LEFT_WAIT = 15.0
_shipped: set[str] = set()  # the ledgers whose spool this process shipped before its check


def ship_left(url: str) -> None:
    """Ship what earlier runs left in the ledger's spool before the check reads the ledger.

    A run killed (SIGKILL, a lost machine) between journaling a task's record in the durable
    spool and shipping it (about once a second), or whose ledger was out of reach, leaves the
    record there. The check reads the ledger only: without this, that task counted as one the
    ledger holds no record of, and ``strict`` refused every ``-resume`` (its refusal came
    before any run could ship the spool). What still waits is said; a ledger URL no retry can
    fix raises ``ConfigError``, which the caller refuses."""
    if url in _shipped:
        return
    _shipped.add(url)
    from lineage_ledger import ConfigError
    from lineage_ledger._ledger.deferred import WaitingInSpool, ship

    try:
        ship(url, timeout=SHIP_LEFT_WAIT)
    except ConfigError:
        raise
    except WaitingInSpool as err:
        log.warning("lineage-ledger: records of earlier runs still wait in the spool (%s): the check compares "
                    "the files they name with them, but a task found without the session's list counts as "
                    "unrecorded until they ship (lineage-ledger spool ship)", err)
    except Exception as err:  # noqa: BLE001 - the check says what is wrong with the ledger
        log.warning("lineage-ledger: could not ship the records of earlier runs from the spool (%s: %s)",
                    type(err).__name__, err)


def check(url: str, paths: list[str]) -> list[Any]:
    """The MODIFIED files among ``paths``; no ledger yet means nothing to vouch against."""
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return []
    from lineage_ledger import NoLedger, check_before_run, open_ledger

    try:  # the check only reads: nothing created, no spool replayed
        ledger = open_ledger(url, read_only=True)
    except NoLedger:  # a ledger this account verified that is gone raised HistoryRewritten instead
        return []
    try:
        return check_before_run(ledger, paths, "warn")
    finally:
        ledger.close()


def one_by_one(url: str, paths: list[str]) -> tuple[list[Any], list[str], bool]:
    """After the batch check raised a ``VerificationError``: each of ``paths`` checked on its
    own (``lineage_ledger.check_each``): (the MODIFIED or unreadable files among those whose own
    check passed, the files whose own check fails, whether the ledger failed as a whole)."""
    from lineage_ledger import check_each, open_ledger

    ledger = open_ledger(url, read_only=True)
    try:
        return check_each(ledger, paths)
    finally:
        ledger.close()


def to_rerun(result: Plan) -> list[str]:
    """Keys of the tasks to run again: each changed (or unverified) file's maker, or a changed
    source's readers."""
    keys: dict[str, None] = {}
    for path in [changed.path for changed in result.tampered] + result.unverified:
        producer = result.producers.get(path)
        if producer is not None:
            keys[producer] = None
        else:
            keys.update(dict.fromkeys(result.consumers.get(path, [])))
    return list(keys)


def failed_its_own_check(err: BaseException) -> bool:
    """A ``VerificationError``: the ledger was read and found tampered with, not out of reach.
    (Not imported here: an error raised before the core was imported cannot be one.)"""
    core = sys.modules.get("lineage_ledger")
    return core is not None and isinstance(err, core.VerificationError)


def quarantine(launch_dir: str, result: Plan, keys: list[str]) -> str:
    """Move the work directories and published files of ``keys`` aside; returns where."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    place = os.path.join(launch_dir, _state.STATE_DIR, "quarantine", stamp)
    _state.private_dirs(place)
    for key in keys:
        task = result.tasks[key]
        workdir = task["workdir"]
        if os.path.lexists(workdir):  # a storeDir task's may be gone: its stored files are what counts
            shutil.move(workdir, os.path.join(place, "work", key[:2], key[2:]))
        # Resumed runs do not overwrite published files by default: a stale or changed copy
        # would stay. Moved aside, the rerun task publishes afresh. Nextflow skips a storeDir
        # task while its stored files are there (_stored): moved aside, it runs again.
        for kind, paths in (("published", [target for _source, target in task.get("published", [])]),
                            ("stored", task.get("stored") or [])):
            for target in paths:
                if os.path.lexists(target):  # a stored directory's files went with it
                    _move_aside(launch_dir, target, os.path.join(place, kind))
        log.warning("lineage-ledger: task %s (%s) will run again; its work directory is now in %s",
                    task.get("name") or task.get("process"), workdir, place)
    return place


def _move_aside(launch_dir: str, path: str, into: str) -> None:
    """Move ``path`` to the same place below ``into`` (``_abs/...`` for one outside ``launch_dir``)."""
    relative = os.path.relpath(path, launch_dir)
    if relative.startswith(".."):
        relative = os.path.join("_abs", path.lstrip(os.sep))
    dest = os.path.join(into, relative)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(path, dest)


def describe(changed: Any) -> str:
    text = (f"{changed.path}: changed since the last recorded run "
            f"(ledger {(changed.expected or '-')[:16]}, disk {(changed.actual or '-')[:16]})")
    # A directory (a published one is recorded whole): the files inside that changed, appeared
    # or disappeared, as the core's check found them; without them only the directory was named.
    if getattr(changed, "changes", None):
        text += f"; inside it, {changed.changes.describe()}"
    if getattr(changed, "reason", None):
        text += f"; {changed.reason}"
    return text
