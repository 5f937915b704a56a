"""Records for tests, made the way engines make them: the helpers shipped with the package
for third-party back-ends (``lineage_ledger.testing``), so both make identical records."""

from __future__ import annotations

from lineage_ledger.testing.records import BASE_TIME, artifact, make_record, make_records

__all__ = ["BASE_TIME", "artifact", "make_record", "make_records"]
