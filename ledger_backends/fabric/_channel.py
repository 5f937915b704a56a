# The generated *_pb2 modules ship py.typed without stubs, so mypy sees none of their classes.
# mypy: disable-error-code="attr-defined,name-defined"
"""The member organisations' root CAs, from the channel's configuration.

The channel configuration (``cscc GetChannelConfig``: a ``common.Config``) names each
application organisation under ``Application``, with its MSP definition as the value
``MSP``: an ``MSPConfig`` of type 0 (X.509) whose ``config`` is a ``FabricMSPConfig`` holding
``name`` (the MSP id), ``root_certs``, ``intermediate_certs`` and ``revocation_list`` (PEM
certificates and CRLs). They are what endorsement signatures are checked against when the
connection profile pins none.

This trusts the gateway's peer to report the channel's configuration truthfully; a profile
that names ``endorsers`` does not (docs/fabric.md, "Endorsed tree head").
"""

from __future__ import annotations

from cryptography import x509
from fabric_protos.common import configtx_pb2
from fabric_protos.msp import msp_config_pb2

from lineage_ledger._errors import BackendError

from ._endorsement import MSPTrust

__all__ = ["application_msp_roots"]

_X509_MSP = 0


def application_msp_roots(config_bytes: bytes) -> dict[str, MSPTrust]:
    """MSP id -> root and intermediate CAs and CRLs of every application organisation."""
    try:
        config = configtx_pb2.Config.FromString(config_bytes)
        application = config.channel_group.groups["Application"]
        roots: dict[str, MSPTrust] = {}
        for group in application.groups.values():
            if "MSP" not in group.values:
                continue
            msp = msp_config_pb2.MSPConfig.FromString(group.values["MSP"].value)
            if msp.type != _X509_MSP:
                continue
            fabric = msp_config_pb2.FabricMSPConfig.FromString(msp.config)
            roots[fabric.name] = MSPTrust(
                roots=tuple(x509.load_pem_x509_certificate(pem) for pem in fabric.root_certs),
                intermediates=tuple(x509.load_pem_x509_certificate(pem) for pem in fabric.intermediate_certs),
                crls=tuple(x509.load_pem_x509_crl(pem) for pem in fabric.revocation_list))
    except Exception as exc:  # protobuf or certificate parsing: a configuration we cannot read
        raise BackendError(f"the channel configuration is unreadable: {exc}") from exc
    if not roots:
        raise BackendError("the channel configuration names no application organisation")
    return roots
