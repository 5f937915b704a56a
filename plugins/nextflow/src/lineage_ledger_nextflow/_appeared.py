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
that leads nowhere, inside a directory output is in that directory's manifest (recorded
whole beside its files, ``_workdir``), which the ledger's check compares. One at the top of
the work directory is in no manifest (the work directory is not recorded whole: Nextflow's
own files are no output): the list (or, without one, the task's record, ``extra.links``)
keeps its target text, and one pointed elsewhere, made to dangle, or slipped in, is a change.

Limits: a list written before the wrapper listed links makes a link its task made count as
appeared (run that session once without ``-resume``, or under ``warn``). A list or record
made before ``.command.out`` and ``.command.env`` (the task's ``stdout`` and ``env`` outputs)
were recorded names neither, nor its links (its work directory was recorded whole, and the
ledger checks that): those are not looked at here.
"""

from __future__ import annotations

import os
from typing import Any

REASON = "appeared in the work directory of a task that did not write it (changed outside the workflow)"
GONE = "vanished from a directory the task wrote (changed outside the workflow)"
UNRECORDED = "written by a task the ledger holds no record of (nothing vouches for it)"
LINK = "a link "  # the start of the reasons of :func:`_links`
#: Nextflow's files that hold the task's ``stdout`` and ``env`` outputs (outputs since lists
#: and records name them; see the module's docstring).
VALUE_OUTPUTS = (".command.out", ".command.env")


def appeared(tasks: dict[str, dict[str, Any]], links: dict[str, str] | None = None) -> dict[str, str]:
    """``{path: task key}`` of the files in each task's work directory that it did not write,
    of those it wrote inside a directory there that are gone (see :func:`_vanished`), and of
    the links at its top that changed (``links`` gets ``{path: why}`` for each of those)."""
    from ._workdir import _walk_written, staged_files

    found: dict[str, str] = {}
    for key, task in tasks.items():
        workdir = task["workdir"]
        try:
            with open(os.path.join(workdir, ".command.run"), encoding="utf-8", errors="replace") as handle:
                staged = staged_files(handle.read())
        except OSError:
            continue  # not a work directory Nextflow can reuse: nothing to compare with
        written = set(task.get("outputs", []))
        unnamed = set(task.get("not_utf8") or [])  # the task's own files no record can name (_workdir)
        current = _lists_values(task) or bool(task.get("unrecorded"))
        files, _unrecordable, loose = _walk_written(workdir, staged)
        for path in files:
            if path not in written and path not in unnamed and (current or os.path.relpath(path, workdir) not in VALUE_OUTPUTS):
                found[path] = key
        found.update(dict.fromkeys(_vanished(task, written), key))
        if current:
            changed = _links(workdir, task.get("links") or {}, loose)
            found.update(dict.fromkeys(changed, key))
            if links is not None:
                links.update(changed)
    return found


def _lists_values(task: dict[str, Any]) -> bool:
    """Whether the task's list (or record) names its ``.command.out``: one made since that
    and its links were recorded (Nextflow writes a ``.command.out`` for every task)."""
    return os.path.join(task["workdir"], VALUE_OUTPUTS[0]) in task.get("outputs", ())


def _links(workdir: str, recorded: dict[str, str], loose: list[str]) -> dict[str, str]:
    """``{path: why}`` of the links at the top of ``workdir`` that lead to no file (``loose``)
    and differ from ``recorded`` (name -> target text): pointed elsewhere, made to dangle, or
    slipped in. One that is gone is left to Nextflow, as a file there is."""
    changed = {}
    for name in loose:
        path = os.path.join(workdir, name)
        try:
            now = os.readlink(path)
        except OSError:
            continue
        if name not in recorded:
            changed[path] = (f"{LINK}the task did not make, leading to {now!r}, appeared in its work directory "
                             "(changed outside the workflow)")
        elif recorded[name] != now:
            changed[path] = (f"{LINK}the task made, recorded leading to {recorded[name]!r}, now leads to {now!r} "
                             "(changed outside the workflow)")
    for name, then in recorded.items():
        path = os.path.join(workdir, name)
        if name not in loose and os.path.islink(path):  # it leads to a file now
            changed[path] = (f"{LINK}the task made, recorded leading to {then!r}, now leads to the file "
                             f"{os.readlink(path)!r} (changed outside the workflow)")
    return changed


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


def as_checks(found: dict[str, str], tasks: dict[str, dict[str, Any]] | None = None,
              links: dict[str, str] | None = None) -> list[Any]:
    """The files of :func:`appeared` as the core's MODIFIED checks (no recorded digest);
    ``tasks`` says which task the ledger holds no record of (``_recovered``); ``links`` why
    each link changed (never hashed: it would walk what it leads to)."""
    from lineage_ledger import ArtifactCheck, ArtifactError, ArtifactStatus, hash_file

    from ._workdir import a_link_to_no_file

    checks = []
    for path in found:
        digest: str | None = None
        if not a_link_to_no_file(path):
            try:
                digest = hash_file(path).blake3
            except ArtifactError:
                pass
        reason = (links or {}).get(path) or (REASON if os.path.lexists(path) else GONE)
        if tasks is not None and tasks.get(found[path], {}).get("unrecorded"):
            reason = UNRECORDED
        checks.append(ArtifactCheck(path, ArtifactStatus.MODIFIED, None, digest, reason=reason))
    return checks


def describe(changed: Any, default: Any) -> str:
    """How the check before ``-resume`` names a changed file: ``default`` (``_preflight.describe``)
    unless it is one of :func:`as_checks`."""
    if changed.expected is None and changed.reason and changed.reason.startswith(LINK):
        return f"{changed.path}: {changed.reason}"
    if changed.reason in (REASON, GONE, UNRECORDED) and changed.expected is None:
        return f"{changed.path}: {changed.reason} (disk {(changed.actual or '-')[:16]})"
    return str(default(changed))
