"""Checking files on disk against the ledger: per-artifact checks, the lineage closure, and
the pre-run policies (warn, strict, rerun) the plugins apply. Built on :mod:`.._ledger`.

Private: import public names from :mod:`lineage_ledger`.
"""
