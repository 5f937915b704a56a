"""The pre-run check shared by LedgerOperator and the cluster policy."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from lineage_ledger import ArtifactCheck, LedgerError, verify_before_run

from . import _settings, _tries

log = logging.getLogger("lineage_ledger.airflow")


def check_inputs(paths: Iterable[str], policy: str | None, *, ti: Any) -> list[ArtifactCheck]:
    """Verify the files a task is about to read against the ledger, before it runs.

    Returns the files changed outside the workflow (``warn`` and ``rerun``). Under
    ``strict`` a changed file fails the task without retries (``AirflowFailException``:
    tampering does not go away by trying again), and so does a ledger that cannot vouch
    for anything (a broken chain, an unreachable back-end). Under the other policies those
    are logged and the task runs.
    """
    from airflow.sdk.exceptions import AirflowFailException

    task = f"{ti.dag_id}.{ti.task_id}"
    details = _tries.details_for(ti)
    policy = (policy or _settings.default_policy()).lower()
    if policy not in _settings.POLICIES:
        raise AirflowFailException(f"lineage-ledger: unknown policy {policy!r}; choose warn, strict or rerun")
    existing = [p for p in paths if os.path.exists(p)]
    if not existing:
        return []
    try:
        changed = verify_before_run(_tries.capture().ledger, existing, policy)  # type: ignore[arg-type]
    except LedgerError as err:
        if policy == "strict":
            details.refused = True
            raise AirflowFailException(f"lineage-ledger refused to run {task}: {err}") from err
        log.error("lineage-ledger: could not verify the inputs of %s: %s", task, err)
        return []
    if changed:
        details.extra["modified_inputs"] = [c.path for c in changed]
        details.extra["policy"] = policy
        log.warning("lineage-ledger: %s runs on inputs changed outside the workflow (policy %s): %s",
                    task, policy, ", ".join(c.path for c in changed))
    return changed
