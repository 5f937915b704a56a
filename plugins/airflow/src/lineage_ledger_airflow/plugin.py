"""The Airflow plugin (``airflow.plugins`` entry point) that installs the listener."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from .listener import listener


class LineageLedgerPlugin(AirflowPlugin):
    name = "lineage_ledger"
    listeners = [listener]
