"""The back-end conformance suite, for authors of third-party back-ends.

Subclass :class:`BackendConformance` in your own tests and give it a ``url`` fixture that
returns the URL of a fresh, empty ledger on your back-end; pytest then runs every check
against it (see ``docs/backends.md``, "Writing a back-end")::

    import uuid
    import pytest
    from lineage_ledger.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def url(self, tmp_path):
            return f"myscheme://{tmp_path}/ledger-{uuid.uuid4().hex}"

The suite is a set of pytest test classes, so this module needs pytest
(``pip install 'lineage-ledger[testing]'``). ``import lineage_ledger`` never imports it.
:func:`make_records` and :func:`chain_of` build the records and blocks the suite appends.
"""

from __future__ import annotations

from .conformance import BackendConformance
from .records import BASE_TIME, artifact, chain_of, make_record, make_records

__all__ = ["BASE_TIME", "BackendConformance", "artifact", "chain_of", "make_record", "make_records"]
