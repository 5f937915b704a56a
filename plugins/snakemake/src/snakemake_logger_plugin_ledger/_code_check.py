"""The pre-run check's code comparison: a kept output whose last producer's record names other
code than its rule has now. Snakemake reruns such a job by itself unless ``--rerun-triggers``
leaves ``code`` out; the plugin reports it whatever they say (see :mod:`._preflight`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class CodeChange:
    """A kept output whose producer ran other code than its rule has now."""

    path: str
    rule: str
    recorded: str  # the code digest in the producer's record
    current: str  # the rule's code digest now
    output: Any  # the output as the DAG names it (for rerun)


def code_now(job: Any) -> str | None:
    from ._jobs import rule_code

    try:
        return rule_code(job).get("code_digest")
    except Exception:  # noqa: BLE001 - a rule we cannot read is not a code change
        return None


def code_changes(ledger: Any, kept_code: dict[str, tuple[str, str, Any]]) -> list[CodeChange]:
    """Kept outputs whose last producer's record names other code than the rule has now.

    Only records that say their digest is the rule's code (``extra.code_of == "rule"``) are
    compared: older records digested the command as run, and recovered ones Snakemake's
    metadata; comparing those would call every kept job changed.
    """
    changed = []
    for path, (rule, current, output) in kept_code.items():
        if not os.path.exists(path):
            continue
        seen = ledger.last_seen(path, ("out",))
        if seen is None:
            continue
        record = seen[0].record
        if (record.extra or {}).get("code_of") != "rule" or record.task_name != rule:
            continue
        if record.code_digest and record.code_digest != current:
            changed.append(CodeChange(path, rule, record.code_digest, current, output))
    return changed


def describe_code(change: CodeChange) -> str:
    return (f"{change.path}: made by other code than rule {change.rule} has now (recorded code "
            f"{change.recorded[:16]}, rule now {change.current[:16]}); Snakemake keeps it because "
            f"--rerun-triggers leaves code out")
