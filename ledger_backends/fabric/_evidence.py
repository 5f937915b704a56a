# The generated *_pb2 modules ship py.typed without stubs, so mypy sees none of their classes.
# mypy: disable-error-code="attr-defined,name-defined"
"""An endorsed tree head kept as evidence, and checked again offline.

``endorsed-head --save FILE`` writes what the peers signed: our proposal and the endorsed
transaction (base64 of their protobuf bytes), beside the head it proves and the checkpoint
body of that head. ``verify-endorsement FILE --ca MSP=PEM ...`` checks it again with no
network: the proposal asks ``TreeHead`` of the named ledger on the named channel and
chaincode, the endorsements prove the answer (``_endorsement.py``, certificates judged at
the time the proposal was made), and the answer is the head the file claims. The
checkpoint it then writes is the input of ``verify-lineage --against``: anyone holding the
member organisations' CA certificates can show that a ledger extends what they endorsed.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from fabric_protos.common import common_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2

from lineage_ledger._errors import ConfigError
from lineage_ledger._log.checkpoint import Checkpoint

from ._endorsement import EndorsementRefused, MSPTrust, verify_endorsed_answer

__all__ = ["FORMAT", "evidence", "verify_evidence"]

FORMAT = "lineage-ledger fabric endorsed tree head v1"


def _made_at(proposal_bytes: bytes) -> tuple[common_pb2.ChannelHeader, list[bytes], str]:
    """The proposal's channel header, chaincode arguments and chaincode name."""
    proposal = proposal_pb2.Proposal.FromString(proposal_bytes)
    header = common_pb2.ChannelHeader.FromString(common_pb2.Header.FromString(proposal.header).channel_header)
    payload = proposal_pb2.ChaincodeProposalPayload.FromString(proposal.payload)
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(payload.input).chaincode_spec
    return header, list(spec.input.args), spec.chaincode_id.name


def evidence(*, origin: str, channel: str, chaincode: str, ledger: str, size: int, root: str,
             proposal: bytes, envelope: bytes) -> dict[str, Any]:
    header, _, _ = _made_at(proposal)
    checkpoint = Checkpoint(origin, size, bytes.fromhex(root), header.timestamp.ToDatetime(datetime.timezone.utc))
    return {"format": FORMAT, "channel": channel, "chaincode": chaincode, "ledger": ledger, "size": size,
            "root": root, "checkpoint": checkpoint.body(),
            "proposal": base64.b64encode(proposal).decode(), "endorsed": base64.b64encode(envelope).decode()}


def verify_evidence(data: Any, trust: Mapping[str, MSPTrust | Sequence[x509.Certificate]],
                    quorum: int) -> tuple[Checkpoint, list[str]]:
    """The checkpoint the evidence proves and the MSPs that signed it. Raises
    ``EndorsementRefused`` (exit 1) when it does not prove it, ``ConfigError`` (exit 2) for
    a file that is not such evidence."""
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not {FORMAT!r}")
        proposal = base64.b64decode(data["proposal"], validate=True)
        envelope = common_pb2.Envelope.FromString(base64.b64decode(data["endorsed"], validate=True))
        header, args, chaincode = _made_at(proposal)
        claimed = Checkpoint.from_text(data["checkpoint"])
        channel, ledger, size, root = data["channel"], data["ledger"], data["size"], data["root"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"not an endorsed tree head saved by endorsed-head --save: {exc}") from exc
    if header.channel_id != channel or chaincode != data.get("chaincode"):
        raise EndorsementRefused(f"the proposal was made on channel {header.channel_id!r}, chaincode {chaincode!r}, "
                                 f"not those the file names")
    if args != [b"lineage:TreeHead", str(ledger).encode()]:
        raise EndorsementRefused(f"the proposal does not ask the tree head of ledger {ledger!r}")
    made = header.timestamp.ToDatetime(datetime.timezone.utc)
    answer, endorsers = verify_endorsed_answer(proposal, envelope, roots=trust, quorum=quorum, chaincode=chaincode,
                                               now=made)
    fields = answer.decode(errors="replace").split("\t")
    if fields[:2] != [str(size), root] or (claimed.size, claimed.root.hex()) != (size, root) or claimed.time != made:
        raise EndorsementRefused(f"the peers endorsed size {fields[0]}, root {fields[1:2]}; the file claims "
                                 f"size {size}, root {root} (checkpoint: {claimed.size}, {claimed.root.hex()})")
    return claimed, [e.msp_id for e in endorsers]


def save(path: str, data: Mapping[str, Any]) -> None:
    from lineage_ledger.exports._output import open_output  # never through a link planted at --save

    with open_output(path) as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
