"""OpenLineage datasets carrying the BLAKE3 digest as their version (optional).

OpenLineage names a dataset but says nothing of its contents. A
``DatasetVersionDatasetFacet`` whose ``datasetVersion`` is ``blake3:<hex>`` lets
OpenLineage users tell versions apart, and match them with the ledger's records.
Without the OpenLineage provider there is no one to report to: :func:`available` is
False and the operator logs the install line once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lineage_ledger import MissingExtra

log = logging.getLogger("lineage_ledger.airflow")

INSTALL_HINT = "pip install 'lineage-ledger-airflow[openlineage]'"
_hint_logged = False


def available() -> bool:
    try:
        import airflow.providers.openlineage.extractors  # noqa: F401
        import openlineage.client.generated.dataset_version_dataset  # noqa: F401
    except ImportError:
        return False
    return True


def hint_once() -> None:
    global _hint_logged
    if not _hint_logged:
        _hint_logged = True
        log.info("lineage-ledger: OpenLineage provider not installed; no dataset-version facets (%s)", INSTALL_HINT)


def version_of(entry: Mapping[str, Any]) -> str:
    return f"blake3:{entry['blake3']}"


def operator_lineage(inputs: Mapping[str, Mapping[str, Any] | None], outputs: Mapping[str, Mapping[str, Any] | None]) -> Any:
    """An ``OperatorLineage`` of file datasets (namespace ``file``, name the path).

    A file whose digest is not known (not there yet, not readable) is named without a version.
    Raises :class:`MissingExtra` naming the install line when the provider is missing.
    """
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset
        from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
    except ImportError as exc:
        raise MissingExtra(f"the OpenLineage provider is not installed: {INSTALL_HINT}") from exc

    def datasets(files: Mapping[str, Mapping[str, Any] | None]) -> list[Any]:
        result = []
        for path, entry in files.items():
            facets: dict[str, Any] = (
                {"version": DatasetVersionDatasetFacet(datasetVersion=version_of(entry))} if entry else {}
            )
            result.append(Dataset(namespace="file", name=path, facets=facets))
        return result

    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))
