"""What the pre-run check must know of a run beyond its DAG's jobs: ``--touch``, and changed
files that a job made but that no job of this DAG can make again.

``--touch`` runs no job: Snakemake's touch executor sets the outputs' mtimes and logs each job
as finished. Recording those jobs would write the files' current digests as the rule's
product, and an output edited by hand and then touched would pass every later ``strict`` run.
So a touch run records nothing, and its pre-run check treats every job as kept: the outputs
it is about to mark up to date are checked like any output the run builds on.

A checkpoint's ``directory()`` output, once complete, is not in the DAG of a later run:
Snakemake reads the files inside it as if they were sources. One of them edited by hand has
no producer to force, and forcing its readers (as for a source) would have them read the
edit and list it, the ledger's latest view of it from then on. :func:`made_elsewhere` names
such files from the ledger: ``rerun`` refuses (it cannot make them again; ``--forcerun DIR``
can), and ``warn`` leaves them, and what is made from them, out of the records
(:mod:`._unverified`), as for a file the ledger could not vouch for.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Collection
from typing import Any

log = logging.getLogger("lineage_ledger.snakemake")


def touch_run() -> bool:
    """Whether the running workflow only touches its outputs (``snakemake --touch``); known
    once ``Workflow.execute`` has its executor, before the DAG is built."""
    workflow = getattr(sys.modules.get("snakemake.workflow"), "workflow", None)
    try:
        return bool(workflow is not None and workflow.touch)
    except Exception:  # noqa: BLE001 - a Snakemake without the property: a run like any other
        return False


def made_elsewhere(ledger: Any, tampered: list[Any], producers: dict[str, Any],
                   checkpoints: Collection[str] = ()) -> dict[str, str]:
    """The changed files no job of the DAG produces: a complete checkpoint's output (path ->
    itself), or a file inside a directory a recorded job wrote (path -> that directory). A
    changed file with no producer that lies in no recorded output is a source; not named here."""
    found: dict[str, str] = {}
    memo: dict[str, Any] = {}
    for changed in tampered:
        path = changed.path
        if path in producers:
            continue
        if path in checkpoints:
            found[path] = path
            continue
        try:
            container = ledger.container_of(path, memo)
        except Exception:  # noqa: BLE001 - a name no record can hold: treated as a source, as before
            continue
        if container is not None and container[2] == "out":
            found[path] = container[0]
    return found


def describe_elsewhere(found: dict[str, str]) -> str:
    """What to run to make them again: Snakemake's ``--forcerun`` of each directory."""
    directories = sorted(set(found.values()))
    cwd = os.getcwd()
    shown = " ".join(_shell_word(os.path.relpath(d, cwd) if d.startswith(cwd + os.sep) else d)
                     for d in directories)
    files = "\n  ".join(path + (" (a checkpoint's output)" if found[path] == path else f" (inside {found[path]})")
                         for path in sorted(found))
    return (f"changed files that a job of an earlier run wrote (a checkpoint), which no job of this run's DAG "
            f"makes again:\n  {files}\n"
            f"run `snakemake --forcerun {shown} ...` to make them again")


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)
