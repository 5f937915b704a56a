"""The pre-run check shared by LedgerOperator and the cluster policy."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from lineage_ledger import ArtifactCheck, LedgerError, VerificationError, check_before_run, normalize_path

from . import _settings, _tries
from ._assets import not_utf8, shown

log = logging.getLogger("lineage_ledger.airflow")


def check_inputs(paths: Iterable[str], policy: str | None, *, ti: Any, outputs: Iterable[str] = ()) -> list[ArtifactCheck]:
    """Verify the files a task is about to read against the ledger, before it runs.

    A file among ``paths`` or the task's ``outputs`` whose name is not UTF-8 can be in no
    record: ``strict`` refuses the task (one error, naming them), the other policies let it
    run (the listener says once which files its record leaves out).

    Returns the files changed outside the workflow (``warn`` and ``rerun``). Under
    ``strict`` a changed file fails the task without retries (``AirflowFailException``:
    tampering does not go away by trying again), and so does a ledger that cannot vouch
    for anything (a broken chain, an unreachable back-end). Under the other policies those
    are logged and the task runs.

    What the check found goes into the try's record in the fields the Parsl plugin uses:
    ``refused_by`` (strict), ``check_failed`` and ``not_verified`` (the ledger failed its
    own check), ``rerun_because_not_verified`` (the same, under ``rerun``), and
    ``modified_inputs`` (files changed outside the workflow).
    """
    from airflow.sdk.exceptions import AirflowFailException

    task = f"{ti.dag_id}.{ti.task_id}"
    details = _tries.details_for(ti)
    policy = (policy or _settings.default_policy()).lower()
    if policy not in _settings.POLICIES:
        raise AirflowFailException(f"lineage-ledger: unknown policy {policy!r}; choose warn, strict or rerun")
    if (nothing := _settings.why_nothing_is_recorded()) is not None:
        if policy == "strict":
            details.refused = True
            raise AirflowFailException(f"lineage-ledger refused to run {task}: nothing can be recorded: {nothing} "
                                       "(policy strict)")
        return []  # no ledger to check against; the listener said so once
    paths = list(paths)
    if policy == "strict" and (unnamed := [p for p in (*paths, *outputs) if not_utf8(p)]):
        details.refused = True
        details.extra["refused_by"] = "strict"
        names = ", ".join(shown(p) for p in unnamed)
        raise AirflowFailException(
            f"lineage-ledger refused to run {task}: {names} {'is' if len(unnamed) == 1 else 'are'} not valid UTF-8 "
            "text, and a record names files by their paths, as text, so no record could vouch for "
            f"{'it' if len(unnamed) == 1 else 'them'} (policy strict): rename {'it' if len(unnamed) == 1 else 'them'}")
    existing = [normalize_path(p) for p in paths if not not_utf8(p) and os.path.exists(p)]
    if not existing:
        return []
    try:
        changed = _changed(existing)
    except LedgerError as err:
        failed = f"{type(err).__name__}: {err}"[:2000]
        if policy == "strict":
            details.refused = True
            details.extra.update(refused_by="strict", check_failed=failed, not_verified=sorted(existing))
            raise AirflowFailException(f"lineage-ledger refused to run {task}: {err}") from err
        log.error("lineage-ledger: could not verify the inputs of %s: %s", task, err)
        if isinstance(err, VerificationError):
            # Tampered with, not merely out of reach: nothing vouches for these files, and
            # the try's record must not either (record_try leaves them and what the task
            # writes from them out). An unreachable back-end is only logged, as in Parsl.
            details.unverified = set(existing)
            details.extra.update(policy=policy, check_failed=failed)
            if policy == "rerun":  # counted as changed inputs; their producers are not rerun
                details.extra["rerun_because_not_verified"] = sorted(existing)
        return []
    if not changed:
        return []
    explained = "\n  ".join(_explain(c) for c in changed)
    if policy == "strict":
        details.refused = True
        details.extra.update(refused_by="strict", modified_inputs=[c.path for c in changed])
        raise AirflowFailException(
            f"lineage-ledger refused to run {task} on files changed outside the workflow:\n  {explained}")
    details.extra["modified_inputs"] = [c.path for c in changed]
    details.extra["policy"] = policy
    log.warning("lineage-ledger: %s runs on files changed outside the workflow (policy %s):\n  %s",
                task, policy, explained)
    return changed


def _explain(check: ArtifactCheck) -> str:
    verb = "written" if check.role == "out" else "read"
    text = (f"{check.path}: MODIFIED since it was last {verb} by record {(check.record_id or '-')[:12]} "
            f"(ledger {(check.expected or '-')[:12]}, disk {(check.actual or '-')[:12]})")
    # A directory: the files inside that changed, appeared or disappeared, as the core's check
    # found them (without them the error named the directory only); or why (a file became one).
    if check.changes:
        text += f"; inside it, {check.changes.describe()}"
    if check.reason:
        text += f"; {check.reason}"
    return text


def _changed(paths: list[str]) -> list[ArtifactCheck]:
    """Files that differ from what the ledger vouches for (the core's pre-run check).

    This process's own records are flushed first: the listener journals every try, and a
    file an upstream task wrote in this process must be checked against that task's record.
    """
    capture = _tries.capture()
    ledger = capture.ledger
    capture.flush(timeout=_settings.flush_timeout())
    return check_before_run(ledger, paths, "rerun")  # the caller applies the policy
