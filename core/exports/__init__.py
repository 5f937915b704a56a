"""Standard exports of a ledger's records and a picture of their lineage.

* W3C PROV (PROV-JSON, PROV-N) through the ``prov`` package: :mod:`._prov`.
* Workflow Run RO-Crate, Provenance Run Crate profile, through ``rocrate``, carrying the
  ledger's checkpoint and an inclusion proof per record so that a recipient verifies it
  offline: :mod:`._rocrate` writes it, :mod:`._crate_verify` checks it.
* OpenLineage run events with a BLAKE3 dataset facet: :mod:`._openlineage`.
* The lineage DAG as self-contained HTML, SVG or DOT: :mod:`._graph`.

Nothing here is imported by ``import lineage_ledger``; the third-party packages are
imported only by the format that needs them, with an install hint (``MissingExtra``)
when the ``exports`` extra is absent.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .._errors import MissingExtra

__all__ = ["require"]


def require(module: str, distribution: str) -> ModuleType:
    """Import a dependency of the ``exports`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtra(
            f"this export needs {distribution!r} (module {exc.name!r}): pip install 'lineage-ledger[exports]'"
        ) from exc
