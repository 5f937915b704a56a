"""The ``lineage-ledger`` and ``verify-lineage`` commands: argument parsing (main), ``run``,
``adopt``, exports, and the text rendering of reports. The top layer: nothing imports it.

Private: import public names from :mod:`lineage_ledger`.
"""
