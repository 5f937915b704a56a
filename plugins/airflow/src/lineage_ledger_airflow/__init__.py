"""lineage-ledger for Airflow 3.

* :mod:`.listener` - records every task instance (any operator) with the BLAKE3 digests of
  its ``file://`` inlets and outlets; registered by :class:`.plugin.LineageLedgerPlugin`
  through the ``airflow.plugins`` entry point.
* :class:`LedgerOperator` - runs a callable or a shell command on declared files,
  verifying the inputs' lineage before it runs.
* :func:`.policy.task_policy` - an optional cluster policy: the same pre-run check for
  every task of a deployment.

Nothing here imports Airflow at package import time, so ``get_provider_info`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .operators import LedgerOperator

__all__ = ["LedgerOperator", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "LedgerOperator":
        from .operators import LedgerOperator

        return LedgerOperator
    raise AttributeError(name)
