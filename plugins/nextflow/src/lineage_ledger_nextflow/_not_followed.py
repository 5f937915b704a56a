"""The links out of a staged directory that were not followed: kept small, and said.

A staged directory's links to a directory, or to nothing, are not followed (``_workdir``):
what one leading out of the directory names (a reference tree, ``/usr``) is no input of the
task, so an edit there is not caught before ``-resume``. That is a limit the user must know
of, so it is said twice, through the wrapper's log (stderr of ``nextflow-ledger``):

- when the task is recorded, one warning per task try (:func:`recorded_warning`) for the
  first :data:`WARNINGS_SHOWN` tries, then one line at the end counting the others
  (:func:`more_tries_line`): a workflow of 1,000 tasks each staging such a directory said
  1,000 warnings, which buried everything else on the terminal;
- by the check before ``-resume``, one line per task it looked at (:func:`not_checked_lines`),
  under every policy: the check cannot say those files changed or did not, so ``strict``
  does not refuse for them (nothing was seen to change), but never calls them checked either.

The record keeps at most :data:`LIMIT` of them (``extra.links_not_followed``, the first by
path) and the count of the others (``extra.links_not_followed_more``): a directory holding
thousands of links out of it made a record, and the session's list, as large as they were many.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Links a record (and the session's list) names; the others are counted.
LIMIT = 100
#: Links a warning or a note shows.
SHOWN = 3
#: Tasks the check before ``-resume`` names, one line each; the others are counted.
TASKS_SHOWN = 20
#: Task tries whose warning is said when they are recorded; the others are counted at the end.
WARNINGS_SHOWN = 5
ADVICE = "stage a target as a path input of its own to have it checked"


def capped(found: Mapping[str, str]) -> tuple[dict[str, str], int]:
    """The first :data:`LIMIT` of ``found`` (link path -> target text) by path, and how many more."""
    first = sorted(found)[:LIMIT]
    return {path: found[path] for path in first}, len(found) - len(first)


def _shown(links: Mapping[str, str], more: int) -> str:
    """The first :data:`SHOWN` links as ``path -> target``, escaped for the terminal (a target
    is any text: a newline or an escape sequence in one must not forge or hide a line)."""
    from lineage_ledger._terminal import printable

    first = sorted(links)[:SHOWN]
    rest = len(links) + more - len(first)
    return (", ".join(f"{printable(path)} -> {printable(links[path])}" for path in first)
            + (f", ... and {rest} more" if rest else ""))


def recorded_warning(name: str, workdir: str, links: Mapping[str, str], more: int) -> str:
    """What is said once a task whose staged directory holds such links is recorded."""
    from lineage_ledger._terminal import printable

    count = len(links) + more
    return (f"lineage-ledger: task {printable(name)} ({printable(workdir)}): {count} symbolic link(s) in its "
            f"staged directory(ies) lead out of it and were not followed, so what they lead to is no input of its "
            f"record and an edit there goes unseen before -resume: {_shown(links, more)}; {ADVICE}")


def more_tries_line(count: int) -> str:
    """Said once the run is recorded: how many more task tries had such links than were warned of."""
    return (f"lineage-ledger: ... and {count} more task try(s) whose staged directory(ies) hold symbolic links "
            "out of them, not followed either: what they lead to is no input of their records "
            "(extra.links_not_followed names them)")


def not_checked_lines(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per task (``_state``'s entries) with links not followed: what the check before
    ``-resume`` did not look at; the tasks past :data:`TASKS_SHOWN` counted in a last line."""
    from lineage_ledger._terminal import printable

    lines = []
    with_links = [task for task in tasks.values() if task.get("links_not_followed")]
    for task in with_links[:TASKS_SHOWN]:
        links = task["links_not_followed"]
        more = int(task.get("links_not_followed_more") or 0)
        name = task.get("name") or task.get("process") or "without a record"
        lines.append(f"lineage-ledger: task {printable(name)} ({printable(task.get('workdir'))}): "
                     f"{len(links) + more} symbolic link(s) in its staged directory(ies) lead out of it: what they "
                     f"lead to is not checked before -resume: {_shown(links, more)}; {ADVICE}")
    if len(with_links) > TASKS_SHOWN:
        lines.append(f"lineage-ledger: ... and {len(with_links) - TASKS_SHOWN} more task(s) with links not followed "
                     "(extra.links_not_followed in their records)")
    return lines
