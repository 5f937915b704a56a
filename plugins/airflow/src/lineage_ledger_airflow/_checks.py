"""The pre-run check shared by LedgerOperator and the cluster policy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from lineage_ledger import ArtifactCheck, ChainBroken, LedgerError, verify_before_run

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
        changed = _verify(existing, policy)
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


def _verify(paths: list[str], policy: str) -> list[ArtifactCheck]:
    """``verify_before_run`` on this process's ledger, read while no write of ours is in flight.

    The core reads a chain's blocks and its stored head in separate queries, so a block
    appended in between (by our own recorder thread, or by another task process writing to
    the same ledger) reads as "block N is missing". A chain that is really broken stays
    broken, so the check is tried again a few times before ChainBroken counts.
    """
    capture = _tries.capture()
    ledger = capture.ledger
    capture.flush(timeout=_settings.flush_timeout())
    for attempt in range(3):
        try:
            return verify_before_run(ledger, paths, policy)  # type: ignore[arg-type]
        except ChainBroken:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
