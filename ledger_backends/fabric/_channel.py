# The generated *_pb2 modules ship py.typed without stubs, so mypy sees none of their classes.
# mypy: disable-error-code="attr-defined,name-defined"
"""The member organisations' root CAs, from the channel's configuration.

The channel configuration (``cscc GetChannelConfig``: a ``common.Config``) names each
application organisation under ``Application``, with its MSP definition as the value
``MSP``: an ``MSPConfig`` of type 0 (X.509) whose ``config`` is a ``FabricMSPConfig`` holding
``name`` (the MSP id) and ``root_certs`` (PEM). Those roots are what endorsement
signatures are checked against when the connection profile pins none.

This trusts the gateway's peer to report the channel's configuration truthfully; a profile
that names ``endorsers`` does not (docs/fabric.md, "Endorsed tree head").
"""

from __future__ import annotations

from cryptography import x509
from fabric_protos.common import configtx_pb2
from fabric_protos.msp import msp_config_pb2

from lineage_ledger._errors import BackendError

__all__ = ["application_msp_roots"]

_X509_MSP = 0


def application_msp_roots(config_bytes: bytes) -> dict[str, list[x509.Certificate]]:
    """MSP id -> root CA certificates of every application organisation of the channel."""
    try:
        config = configtx_pb2.Config.FromString(config_bytes)
        application = config.channel_group.groups["Application"]
        roots: dict[str, list[x509.Certificate]] = {}
        for group in application.groups.values():
            if "MSP" not in group.values:
                continue
            msp = msp_config_pb2.MSPConfig.FromString(group.values["MSP"].value)
            if msp.type != _X509_MSP:
                continue
            fabric = msp_config_pb2.FabricMSPConfig.FromString(msp.config)
            roots[fabric.name] = [x509.load_pem_x509_certificate(pem) for pem in fabric.root_certs]
    except Exception as exc:  # protobuf or certificate parsing: a configuration we cannot read
        raise BackendError(f"the channel configuration is unreadable: {exc}") from exc
    if not roots:
        raise BackendError("the channel configuration names no application organisation")
    return roots
