"""The check before ``-resume`` without the session's list: planned from the work directory
and the ledger's records.

The wrapper's list of a session's tasks (``_state``) may be missing: lost with the user's
state, kept on another machine, or (before it moved to the private state) moved aside from
``.lineage/`` by another user who could write there. Without it the check used to find
nothing to check, and ``-resume`` reused whatever the work directory held, under ``strict``
too. The ledger still holds the records of the session's tasks, and the work directory still
holds the tasks, so the list is rebuilt from them:

- every task directory of the work directory (``work/ab/cdef...``) whose ``.exitcode`` says
  0 is a task Nextflow may reuse (of any session: checking more than the resumed session's
  tasks is the safe side);
- its record is the latest one whose ``task_id`` is the directory's hash, found through the
  files in it (the ledger indexes records by the files they wrote): what it wrote, as
  recorded, is what the check compares with what is there (a file slipped in, or gone,
  counts as changed, as with the list); its publication's record names its published files;
- a task the ledger holds no record of (it ran without the wrapper, or its record was lost)
  vouches for nothing: each file it wrote counts as changed (``UNRECORDED``), so ``strict``
  refuses rather than reuse it unchecked.

The work directory is the one Nextflow uses, in Nextflow's order: ``run``'s
``-w``/``-work-dir``, else the ``workDir`` of the run's configuration, else ``$NXF_WORK``,
else ``work``, relative to the launch directory. The configuration is Nextflow's to read (its
files are Groovy, evaluated as code; several files, profiles, includes): the wrapper asks
``nextflow config -o json`` with the run's configuration options (``-c``, ``-C``,
``-profile``) and reads ``workDir`` from that JSON, never the files themselves. It asks only
where a configuration file may be (one given, ``nextflow.config`` in the launch or the
project directory, ``$NXF_HOME/config``, or a pipeline Nextflow fetches), since each question
starts a JVM. A configuration that uses ``params`` in ``workDir`` is read without the
command line's parameters (``nextflow config`` takes none): pass ``-w`` then.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

from ._not_followed import capped
from ._workdir import read_workdir, task_key

if TYPE_CHECKING:
    from ._args import Command

log = logging.getLogger("lineage_ledger.nextflow")
_HEX = frozenset("0123456789abcdef")
#: Seconds ``nextflow config`` may take (a JVM start, a few seconds; more on a loaded machine).
CONFIG_TIMEOUT = 120


def work_directory(command: Command, launch_dir: str, nextflow: str | None) -> str:
    """Where Nextflow keeps the task directories of this run (see the module's docstring)."""
    given = command.work_dir or configured_work_dir(command, launch_dir, nextflow)
    return os.path.realpath(os.path.join(launch_dir, given or os.environ.get("NXF_WORK") or "work"))


def configured_work_dir(command: Command, launch_dir: str, nextflow: str | None) -> str | None:
    """The ``workDir`` the run's configuration sets, as ``nextflow config`` prints it; None
    where none is set, no configuration file may set one, or Nextflow could not say (logged)."""
    if nextflow is None or not command.run or not _may_be_configured(command, launch_dir):
        return None
    argv = [nextflow, *command.config_files, "config", "-o", "json", *command.profile, command.run[0]]
    try:
        done = subprocess.run(argv, cwd=launch_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=CONFIG_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("lineage-ledger: could not ask Nextflow for the run's workDir (%s)", err)
        return None
    # The JSON starts at its first line that opens an object (a warning may come before it).
    start = next((i for i, line in enumerate(done.stdout.splitlines()) if line.startswith("{")), None)
    try:
        if done.returncode != 0 or start is None:
            raise ValueError(f"exit status {done.returncode}")
        value = json.loads("\n".join(done.stdout.splitlines()[start:])).get("workDir")
    except (ValueError, AttributeError) as err:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        log.warning("lineage-ledger: `nextflow config` did not give the run's configuration (%s%s); the work "
                    "directory is taken from -w, $NXF_WORK or work/", err, f": {said[0]}" if said else "")
        return None
    return value if isinstance(value, str) and value else None


def _may_be_configured(command: Command, launch_dir: str) -> bool:
    """Whether a configuration file may set the run's ``workDir``: one given (``-c``, ``-C``),
    ``nextflow.config`` in the launch directory or the pipeline's, ``$NXF_HOME/config``, or a
    pipeline that is not a local path (a project Nextflow fetches or keeps in its assets)."""
    if command.config_files:
        return True
    pipeline = os.path.join(launch_dir, command.run[0])
    if not os.path.exists(pipeline):
        return True
    project = pipeline if os.path.isdir(pipeline) else os.path.dirname(pipeline)
    home = os.environ.get("NXF_HOME") or os.path.join(os.path.expanduser("~"), ".nextflow")
    return any(os.path.exists(path) for path in (
        os.path.join(launch_dir, "nextflow.config"), os.path.join(project, "nextflow.config"),
        os.path.join(home, "config")))


def nextflow_cached(launch_dir: str, session: str) -> bool:
    """Whether Nextflow keeps a cache of ``session`` here (what ``-resume`` reuses tasks from)."""
    from ._log import cache_dir

    return os.path.isdir(os.path.join(cache_dir(launch_dir), "cache", session))


def finished_tasks(work_dir: str) -> list[str]:
    """The task directories below ``work_dir`` whose task exited 0."""
    found = []
    for prefix in _hex_names(work_dir, 2):
        for rest in _hex_names(os.path.join(work_dir, prefix), None):
            path = os.path.join(work_dir, prefix, rest)
            try:
                with open(os.path.join(path, ".exitcode"), encoding="ascii", errors="replace") as handle:
                    if handle.read().strip() == "0":
                        found.append(path)
            except OSError:
                continue  # not a task's directory, or a task that never ended
    return found


def _hex_names(directory: str, length: int | None) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [n for n in names if (length is None or len(n) == length) and set(n) <= _HEX
            and os.path.isdir(os.path.join(directory, n))]


def tasks_from_work(url: str, work_dir: str) -> dict[str, dict[str, Any]]:
    """``{task key: task}`` as ``_state`` keeps them, for the finished tasks of ``work_dir``
    (see the module's docstring); a task without a record is marked ``unrecorded``."""
    directories = finished_tasks(work_dir)
    if not directories:
        return {}
    from lineage_ledger import NoLedger, open_ledger

    try:
        ledger = open_ledger(url, read_only=True)
    except NoLedger:  # a verified ledger that is gone raised HistoryRewritten instead
        ledger = None
    try:
        return {task_key(path): _task(ledger, path) for path in directories}
    finally:
        if ledger is not None:
            ledger.close()


def _task(ledger: Any, workdir: str) -> dict[str, Any]:
    key = task_key(workdir)
    work = read_workdir(workdir)
    task: dict[str, Any] = {"process": None, "name": None, "workdir": workdir, "status": "succeeded",
                            "inputs": list(work.inputs), "outputs": [], "published": []}
    if work.not_followed:  # said by the check before -resume (_not_followed); a record's replace them
        task.update(links_not_followed=work.not_followed, links_not_followed_more=work.not_followed_more)
    found = _latest(ledger, key, work.outputs, "producers") if ledger is not None else None
    if found is None:
        # Nothing vouches for what it wrote: with no output listed, each file it wrote is
        # found by _appeared, and counted as changed.
        task["unrecorded"] = True
        return task
    record = found.record
    task.update(process=record.task_name, name=record.extra.get("name"), status=record.status,
                inputs=list(dict.fromkeys([*record.inputs, *work.inputs])), outputs=list(record.outputs),
                links=dict(record.extra.get("links") or {}),
                stored=[p for p in record.extra.get("stored") or [] if isinstance(p, str)])
    if record.extra.get("links_not_followed"):  # said by the check before -resume (_not_followed)
        # A record made before they were capped names every one: kept to the same size.
        links, more = capped(record.extra["links_not_followed"])
        task.update(links_not_followed=links,
                    links_not_followed_more=more + int(record.extra.get("links_not_followed_more") or 0))
    # Every publication of the task: a -resume records what it publishes for a cached task
    # (another place, _republished) as a publication of its own, the earlier ones still there.
    for publication in _all_found(ledger, f"{key}/publish", list(record.outputs), "consumers"):
        # Pairs as the list keeps them; only the sets of sources and of targets are used.
        task["published"] += [[source, target] for source, target
                              in zip_longest(publication.record.inputs, publication.record.outputs, fillvalue="")]
    return task


def _latest(ledger: Any, task_id: str, paths: list[str], role: str) -> Any:
    """The latest record of ``task_id`` among the producers (or consumers) of ``paths``,
    asked one path at a time until one names it (a file slipped in names none)."""
    found = _found(ledger, task_id, paths, role)
    return found[-1] if found else None


def _all_found(ledger: Any, task_id: str, paths: list[str], role: str) -> list[Any]:
    """The records of ``task_id`` among the producers (or consumers) of any of ``paths``,
    each once, oldest first (each publication names what it published only)."""
    found: dict[str, Any] = {}
    for path in paths:
        found.update((e.id, e) for e in getattr(ledger, role)(path) if e.record.task_id == task_id)
    return sorted(found.values(), key=lambda e: e.order)


def _found(ledger: Any, task_id: str, paths: list[str], role: str) -> list[Any]:
    """The records of ``task_id`` among the producers (or consumers) of the first of ``paths``
    that any of them names, oldest first."""
    for path in paths:
        found = [e for e in getattr(ledger, role)(path) if e.record.task_id == task_id]
        if found:
            return found
    return []
