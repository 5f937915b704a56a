"""The back-end conformance suite now ships as ``lineage_ledger.testing``; this module keeps
the test files that import it from here working."""

from lineage_ledger.testing import BackendConformance, chain_of

__all__ = ["BackendConformance", "chain_of"]
