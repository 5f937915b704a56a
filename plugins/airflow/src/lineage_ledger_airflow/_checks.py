"""The pre-run check shared by LedgerOperator and the cluster policy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from lineage_ledger import (
    ArtifactCheck,
    ArtifactStatus,
    ChainBroken,
    Ledger,
    LedgerError,
    check_artifact,
    normalize_path,
)

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
    existing = [normalize_path(p) for p in paths if os.path.exists(p)]
    if not existing:
        return []
    try:
        changed = _changed(existing)
    except LedgerError as err:
        if policy == "strict":
            details.refused = True
            raise AirflowFailException(f"lineage-ledger refused to run {task}: {err}") from err
        log.error("lineage-ledger: could not verify the inputs of %s: %s", task, err)
        return []
    if not changed:
        return []
    explained = "\n  ".join(_explain(c) for c in changed)
    if policy == "strict":
        details.refused = True
        raise AirflowFailException(
            f"lineage-ledger refused to run {task} on files changed outside the workflow:\n  {explained}")
    details.extra["modified_inputs"] = [c.path for c in changed]
    details.extra["policy"] = policy
    log.warning("lineage-ledger: %s runs on files changed outside the workflow (policy %s):\n  %s",
                task, policy, explained)
    return changed


def _explain(check: ArtifactCheck) -> str:
    verb = "written" if check.role == "out" else "read"
    return (f"{check.path}: MODIFIED since it was last {verb} by record {(check.record_id or '-')[:12]} "
            f"(ledger {(check.expected or '-')[:12]}, disk {(check.actual or '-')[:12]})")


def _changed(paths: list[str]) -> list[ArtifactCheck]:
    """Files that differ from the ledger: the core's check, then the producers' versions.

    The core's ``check_before_run`` compares a file with the last record that read *or*
    wrote it (``check_artifact``, done here per path so that each file is hashed once). A read is
    not a vouch: once a task without the check (a plain operator, or ``warn``) has read
    an edited file, its record would make the edited version look current, and in one
    DAG run the order of parallel tasks would decide whether a strict task refuses. So a
    file that a recorded task produced must also still be what its last producer wrote.
    """
    view = _snapshot()
    found = []
    for path in paths:
        check = check_artifact(view, path)  # what check_before_run does for each path
        if check.status is ArtifactStatus.MODIFIED:
            found.append(check)
            continue
        producer = view.producer(path)
        if producer is None or check.actual is None:
            continue
        expected = producer.record.outputs[path]["blake3"]
        if check.actual != expected:
            found.append(ArtifactCheck(path, ArtifactStatus.MODIFIED, expected, check.actual, producer.id, "out"))
    return found


def _snapshot() -> Ledger:
    """The verified chain, read while no write of this process is in flight.

    The core reads a chain's blocks and its stored head in separate queries, so a block
    appended in between (by our own recorder thread, or by another task process writing
    to the same ledger) reads as "block N is missing". A chain that is really broken stays
    broken, so the read is tried again a few times before ChainBroken counts.
    """
    capture = _tries.capture()
    ledger = capture.ledger
    capture.flush(timeout=_settings.flush_timeout())
    for attempt in range(3):
        try:
            view, _summary = ledger.snapshot()
            return view
        except ChainBroken:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
