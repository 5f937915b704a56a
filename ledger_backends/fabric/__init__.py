"""Hyperledger Fabric back-end: ``fabric:///path/to/profile.json[?ledger=name]``.

A Python client of Fabric's Gateway gRPC service (``_gateway``) talking to the provenance
chaincode in ``chaincode/`` (Go). Needs the ``fabric`` extra:
``pip install 'lineage-ledger[fabric]'``. See docs/fabric.md.
"""

from ._profile import ConnectionProfile, parse_fabric_url
from .backend import AccessDenied, FabricBackend, InvalidBlock

__all__ = ["AccessDenied", "ConnectionProfile", "FabricBackend", "InvalidBlock", "parse_fabric_url"]
