"""Files that appeared in (or vanished from) a cached task's work directory after it ended.

A task's outputs are recorded file by file: everything it wrote in its work directory, as
the wrapper listed it when the task ended (``_workdir``), also inside a directory it declared
as one output. The check before ``-resume`` rehashes those files against the ledger, and a
file no record names is not reported, so a file slipped into such a directory (its mtime put
back, so that Nextflow reuses the task) was read by the downstream tasks that run again (a
glob over the directory) under ``strict``, and their records then list it as a source.

The session's list says what each task wrote. A regular file in its work directory that the
list does not name, outside Nextflow's own files and the staged inputs, was not written by
the task: it changed outside the workflow, and counts as a changed output of that task
(``strict`` refuses, ``rerun`` moves the task aside, ``warn`` names it).

A file the task wrote inside a directory of its work directory (a directory output) that is
gone now is a change too: Nextflow checks that the directory is there, not what it holds.

A symbolic link to a file counts as a file (``_workdir`` lists the links a task makes to
files among its outputs), so a link slipped in is seen too. A link to a directory, or one
that leads nowhere, is not looked at here: the manifest of the directory output it lies in
(recorded whole beside its files, ``_workdir``), or of the work directory for one the task
made at its top, differs, which the ledger's check sees.
Limits: a list written before the wrapper listed links makes a link its task made count as
appeared (run that session once without ``-resume``, or under ``warn``).
"""

from __future__ import annotations

import os
from typing import Any

REASON = "appeared in the work directory of a task that did not write it (changed outside the workflow)"
GONE = "vanished from a directory the task wrote (changed outside the workflow)"
UNRECORDED = "written by a task the ledger holds no record of (nothing vouches for it)"


def appeared(tasks: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{path: task key}`` of the files in each task's work directory that it did not write,
    and of those it wrote inside a directory there that are gone (see :func:`_vanished`)."""
    from ._workdir import _written_files, staged_files

    found: dict[str, str] = {}
    for key, task in tasks.items():
        workdir = task["workdir"]
        try:
            with open(os.path.join(workdir, ".command.run"), encoding="utf-8", errors="replace") as handle:
                staged = staged_files(handle.read())
        except OSError:
            continue  # not a work directory Nextflow can reuse: nothing to compare with
        written = set(task.get("outputs", []))
        for path in _written_files(workdir, staged):
            if path not in written:
                found[path] = key
        found.update(dict.fromkeys(_vanished(task, written), key))
    return found


def _vanished(task: dict[str, Any], written: set[str]) -> list[str]:
    """Files the task wrote inside a directory of its work directory (a directory output)
    that are gone. Nextflow checks that a declared output is there, not what a directory
    holds: a cached task hands the rest on, and a file removed from it went unnoticed. A file
    directly in the work directory is left to Nextflow (a declared one that is missing makes
    it run the task again); so is a directory there that is gone as a whole (``publishDir
    mode: 'move'`` or ``storeDir`` took it away, or Nextflow sees its declared output missing)."""
    workdir = task["workdir"]
    moved = {source for source, _target in task.get("published", [])}
    gone = []
    for path in written:
        if os.path.dirname(path) == workdir or path in moved or os.path.lexists(path):
            continue
        if not path.startswith(workdir + os.sep):
            continue  # the file a link of the task leads to, recorded beside it (``alias_of``)
        top = os.path.relpath(path, workdir).split(os.sep, 1)[0]
        if os.path.isdir(os.path.join(workdir, top)):  # the directory is there, without the file
            gone.append(path)
    return gone


def as_checks(found: dict[str, str], tasks: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """The files of :func:`appeared` as the core's MODIFIED checks (no recorded digest);
    ``tasks`` says which task the ledger holds no record of (``_recovered``)."""
    from lineage_ledger import ArtifactCheck, ArtifactError, ArtifactStatus, hash_file

    checks = []
    for path in found:
        try:
            digest: str | None = hash_file(path).blake3
        except ArtifactError:
            digest = None
        reason = REASON if os.path.lexists(path) else GONE
        if tasks is not None and tasks.get(found[path], {}).get("unrecorded"):
            reason = UNRECORDED
        checks.append(ArtifactCheck(path, ArtifactStatus.MODIFIED, None, digest, reason=reason))
    return checks


def describe(changed: Any, default: Any) -> str:
    """How the check before ``-resume`` names a changed file: ``default`` (``_preflight.describe``)
    unless it is one of :func:`as_checks`."""
    if changed.reason in (REASON, GONE, UNRECORDED) and changed.expected is None:
        return f"{changed.path}: {changed.reason} (disk {(changed.actual or '-')[:16]})"
    return str(default(changed))
