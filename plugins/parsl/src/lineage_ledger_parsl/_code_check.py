"""Whether a cached result was made by the code the app has now.

Parsl keys a cached result by the app's name and module, never its code
(``id_for_memo_function``): an app edited between runs, or within one (a notebook cell run
again), reuses the old code's result. Its ``cached`` record named the app's code as it is now
as the code that made it, and ``strict`` passed it without a word
(tests/test_parsl_code.py). So the code that made each cached result is worked out:

* made in this run: the code of the try that made it (a cache hit hands on what its own hit
  said), kept here by memo key as each task ends;
* loaded from Parsl's checkpoint: the ``code_digest`` of the recorded tries that vouch for the
  value (see _values), where some do.

A cache hit's record names that code (``code_digest``) and, where the app's code now differs,
that too (``extra["code_now"]``). The policy applies as to a changed file, as the Snakemake
plugin does for a rule whose code changed: ``strict`` refuses the reuse (recorded as refused),
``rerun`` runs the app again, ``warn`` says so and reuses it. Where nothing says which code
made a value (a checkpoint no recorded try vouches for, a run whose records still wait in the
spool), it is not compared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from lineage_ledger import ArtifactMismatch

from ._tasks import function_digest

if TYPE_CHECKING:
    from ._memoizer import LedgerMemoizer

__all__ = ["MADE_BY", "MadeBy"]

log = logging.getLogger("lineage_ledger.parsl")

#: The mark a cache hit's check leaves on the task: the digest of the code that made the value.
MADE_BY = "lineage_ledger_made_by"


class MadeBy:
    """The code that made each value in the memoizer's table this run, by memo key."""

    def __init__(self) -> None:
        self._here: dict[str, str | None] = {}

    def ended(self, task: Mapping[str, Any], succeeded: bool) -> None:
        """``task`` ended: its value is the table's now (Parsl's ``_update_memo``), made by its
        own code, or by what a cache hit's check found."""
        key = task.get("hashsum")
        if not isinstance(key, str):
            return
        if not succeeded:
            self._here.pop(key, None)  # the table holds the failure now, which nothing checkpoints
        elif task.get("from_memo"):
            self._here[key] = task.get(MADE_BY)
        else:
            self._here[key] = function_digest(task["func"])

    def check(self, memoizer: LedgerMemoizer, task: dict[str, Any], cached: Future) -> tuple[str, str] | None:
        """(code that made ``cached``, the app's code now) where they differ and the policy lets
        the value be reused or run again (``strict`` records the refusal and raises
        ``ArtifactMismatch``); None where they agree or nothing says. Marks the task with the
        code that made it (see ``ParslLedger.task_run``)."""
        key = task.get("hashsum") or ""
        now = function_digest(task["func"])
        if key in self._here:
            made = self._here[key]
        else:  # loaded from a checkpoint: the code of the tries that vouch for it
            known = sorted(c for c in memoizer._values.code_of(memoizer, task, cached) if c)
            made = (now if now in known else known[0]) if known else None
        if made is None:
            return None
        task[MADE_BY] = made
        if made == now or now is None:
            return None
        policy = memoizer.ledger.policy
        said = (f"its cached result was made by other code than the app has now (made by {made[:12]}, the app now "
                f"{now[:12]}): Parsl keys a cached result by the app's name, never its code")
        if policy == "strict":
            refusal = ArtifactMismatch(
                f"lineage-ledger refuses to reuse the cached result of task {task['id']} ({task['func_name']}): {said}. "
                "Run it again with policy rerun, or remove Parsl's checkpoint of it", path=str(task["func_name"]))
            log.error("%s", refusal)
            task.pop(MADE_BY, None)  # the refusal ran nothing: its record names the app's code
            memoizer._record(task, "failed", {"error": str(refusal)[:2000], "refused_by": "strict",
                                              "code_made_by": made})
            raise refusal
        log.warning("lineage-ledger: task %s (%s): %s; %s", task["id"], task["func_name"], said,
                    "the task runs again" if policy == "rerun" else "its cached result is reused all the same")
        return made, now
