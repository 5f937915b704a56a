"""A task's inputs as the task read them, or left out where that cannot be known.

The wrapper reads a task's files once it has read the task's end in Nextflow's log, up to
0.2 s later, and the capture hashes them after that. A file outside the work directory can
change in between, or while the task ran, and the record then said the task read what was
there afterwards:

- a pipeline that updates its result in place (a task reads ``results/db.txt``, the last
  release, and ``publishDir`` writes the new release over it): Nextflow publishes within
  about 0.1 s of the task's end, so the record usually said the task read its own output, a
  lineage of the file from itself, and an edited last release went into the new one unseen;
- a task that appends to its input through the staged link: the record said it read the
  appended file, which then verified as what the task read.

So each input outside the work directory is hashed here, and then its modification time
compared with the task's ``.command.begin`` (both set by the file server, one clock): a file
not modified since the task began held, when hashed, what the task read. One modified later
is left out of the record's inputs and named in ``extra.not_verified``, which
``verify-lineage`` notes as never hashed as read (exit 0 for what the task made; the file
itself is then vouched for by no read of this task). An input in the work directory (another
task's output) is left to the capture: nothing Nextflow publishes writes there, and a task
that changed it leaves its producer's record to say so. An input on a file system whose
clock is ahead of the work directory's may be left out in the same way (a note, never a
failure).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._workdir import WorkDir


def inputs_as_read(work: WorkDir) -> tuple[list[str], dict[str, dict[str, Any]], list[str]]:
    """(the inputs to record, the digests of those hashed here, the inputs changed since the
    task began)."""
    began = work.started
    if began is None or not work.inputs:
        return list(work.inputs), {}, []
    from lineage_ledger import ArtifactError, hash_file

    root = os.path.dirname(os.path.dirname(os.path.realpath(work.path))) + os.sep
    known: dict[str, dict[str, Any]] = {}
    changed: list[str] = []
    for path in work.inputs:
        if path.startswith(root):
            continue  # another task's output: the capture hashes it
        try:
            artifact = hash_file(path)  # first, then its time: a change after this shows in it
            modified = os.stat(path).st_mtime
        except (OSError, ArtifactError):
            if _replaced_since(path, began):
                # Gone, or there again and newer, as it is hashed: Nextflow's publishDir
                # replaces a file by deleting it and copying the new one. Left to the capture,
                # it was hashed later (the new release, or gone: left out with no note).
                changed.append(path)
            continue  # unreadable, not replaced: the capture says so
        if modified > began:
            changed.append(path)
        elif not artifact.is_dir:
            known[path] = artifact.entry()
    if not changed:
        return list(work.inputs), known, []
    left_out = set(changed)
    return [p for p in work.inputs if p not in left_out], known, changed


def _replaced_since(path: str, began: float) -> bool:
    """Whether ``path`` is gone, or was modified after ``began``, now."""
    try:
        return os.stat(path).st_mtime > began
    except FileNotFoundError:
        return True
    except OSError:
        return False
