"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point.

The plugin is registered through the ``airflow.plugins`` entry point only. Listing it here
as well would load it twice, and Airflow's loader stops registering provider plugins at
the first duplicate name, which would silently drop the plugins of providers after ours.

The ``config`` section declares the ``[lineage_ledger]`` options, so that
``airflow config list`` shows them and ``AIRFLOW__LINEAGE_LEDGER__*`` variables set them.
"""

from __future__ import annotations

from typing import Any

from . import __version__

_OPTIONS: dict[str, dict[str, Any]] = {
    "url": {
        "description": "Ledger URL (sqlite:///path, postgresql://..., a plain path). Empty: "
        "$LINEAGE_LEDGER_URL, else $AIRFLOW_HOME/lineage/ledger.db.",
        "type": "string", "example": "sqlite:////srv/lineage/ledger.db", "default": "",
    },
    "spool": {
        "description": "Directory of the write-behind spool. Empty: $LINEAGE_SPOOL, else "
        "$AIRFLOW_HOME/lineage/spool. Every process writing to one ledger should share it.",
        "type": "string", "example": "/srv/lineage/spool", "default": "",
    },
    "policy": {
        "description": "What the pre-run check does with an input changed outside the workflow: "
        "warn (log it), strict (fail the task before it runs), rerun (run and record it as "
        "a rerun on changed inputs). LedgerOperator's own policy argument wins over it.",
        "type": "string", "example": "strict", "default": "warn",
    },
    "flush_timeout": {
        "description": "Seconds a task process waits at its end for the ledger to take its "
        "records (they are in the durable spool already; what is not shipped is replayed "
        "by the next open).",
        "type": "float", "example": "5", "default": "5",
    },
    "enabled": {
        "description": "Set to False to keep the listener installed but silent.",
        "type": "boolean", "example": "False", "default": "True",
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "lineage-ledger-airflow",
        "name": "lineage-ledger",
        "description": "Provenance ledger: BLAKE3 digests of every task's file assets in a "
        "hash-chained ledger, verified before tasks run.",
        "versions": [__version__],
        "operators": [
            {"integration-name": "lineage-ledger", "python-modules": ["lineage_ledger_airflow.operators"]},
        ],
        "config": {
            "lineage_ledger": {
                "description": "Where lineage-ledger records Airflow tasks, and how strictly it checks.",
                "options": {name: {**option, "version_added": "0.1.0"} for name, option in _OPTIONS.items()},
            }
        },
    }
