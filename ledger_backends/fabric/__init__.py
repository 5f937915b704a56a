"""Hyperledger Fabric back-end: ``fabric:///path/to/profile.json[?ledger=name]``.

A Python client of Fabric's Gateway gRPC service (``_gateway``) talking to the provenance
chaincode in ``chaincode/`` (Go). Needs the ``fabric`` extra:
``pip install 'lineage-ledger[fabric]'``. See docs/fabric.md.
"""

from ._endorsement import EndorsementRefused, Endorser
from ._profile import ConnectionProfile, parse_fabric_url
from ._tree_head import EndorsedHeadMismatch, EndorsedTreeHead, TreeNotBuilt, check_endorsed_head
from .backend import AccessDenied, FabricBackend, InvalidBlock

__all__ = ["AccessDenied", "ConnectionProfile", "EndorsedHeadMismatch", "EndorsedTreeHead", "EndorsementRefused",
           "Endorser", "FabricBackend", "InvalidBlock", "TreeNotBuilt", "check_endorsed_head", "parse_fabric_url"]
