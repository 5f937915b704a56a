# The generated *_pb2 modules ship py.typed without stubs, so mypy sees none of their classes.
# mypy: disable-error-code="attr-defined,name-defined"
"""A small client for Fabric's Gateway gRPC service (Fabric 2.4+), from its protobufs.

The Fabric SDK for Python is unmaintained; the Gateway service on every peer does the work
the SDKs used to do (endorsement plan, collecting endorsements, forwarding to the orderer),
so a client only has to build and sign messages:

    proposal  = Proposal(Header(ChannelHeader, SignatureHeader(creator, nonce)), payload)
    Endorse   (SignedProposal)            -> a prepared transaction Envelope (endorsed)
    Submit    (Envelope signed by us)     -> the gateway hands it to the orderer
    CommitStatus (signed request)         -> the validation code once our peer committed it
    Evaluate  (SignedProposal)            -> a chaincode answer, nothing is ordered

Signatures are ECDSA P-256 over SHA-256, DER-encoded with a low S value, which Fabric
requires (it refuses a high-S signature as malleable).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2, transaction_pb2
from google.protobuf import timestamp_pb2

__all__ = ["GatewayCallError", "GatewayClient", "Prepared", "Signer", "TransactionInvalid"]

# Order of the P-256 group: a signature's S must be at most half of it.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_MAX_MESSAGE = 256 * 1024 * 1024
# A peer of another org may not have committed the block that our gateway's peer has; an
# endorsement that names it waits this long (times the attempt) before asking again.
_LAGGING_RETRIES = 3
_LAGGING_PAUSE = 0.02
_ANSWER_RETRIES = 12  # about 1.5 s in all for an endorsed query's peers to agree


class Signer:
    """An enrolled identity: MSP id, X.509 certificate (PEM) and its P-256 private key."""

    def __init__(self, msp_id: str, certificate_pem: bytes, private_key_pem: bytes) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("Fabric identities here use ECDSA P-256 keys")
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        if certificate.public_key() != key.public_key():
            raise ValueError("the private key does not belong to the certificate")
        self.msp_id = msp_id
        self._key = key
        self.creator = identities_pb2.SerializedIdentity(mspid=msp_id, id_bytes=certificate_pem).SerializeToString()

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        if s > _P256_ORDER // 2:
            s = _P256_ORDER - s
        return encode_dss_signature(r, s)


class GatewayCallError(Exception):
    """A Gateway call failed; ``code`` is the gRPC status, ``messages`` what each peer said."""

    def __init__(self, method: str, code: grpc.StatusCode, message: str, messages: Sequence[str]) -> None:
        self.method, self.code, self.messages = method, code, list(messages)
        detail = "; ".join(self.messages)
        super().__init__(f"{method}: {code.name}: {message}" + (f" ({detail})" if detail else ""))

    @property
    def text(self) -> str:
        return " ".join([str(self), *self.messages])


class TransactionInvalid(Exception):
    """The transaction was ordered but the peers marked it invalid (e.g. MVCC_READ_CONFLICT)."""

    def __init__(self, transaction_id: str, code: int) -> None:
        self.transaction_id, self.code = transaction_id, code
        self.code_name = transaction_pb2.TxValidationCode.Name(code)
        super().__init__(f"transaction {transaction_id[:16]} was invalidated: {self.code_name}")


@dataclass
class Prepared:
    """An endorsed transaction, signed by us, not yet handed to the orderer."""

    transaction_id: str
    envelope: common_pb2.Envelope


@dataclass
class _Proposal:
    transaction_id: str
    signed: proposal_pb2.SignedProposal


def _error_details(error: grpc.RpcError) -> list[str]:
    """The ErrorDetail messages the gateway attaches (one per peer or orderer that failed)."""
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return [f"{d.msp_id or d.address}: {d.message}" if (d.msp_id or d.address) else d.message
                    for d in _status_details(value)]
    return []


def _status_details(status: bytes) -> list[gateway_pb2.ErrorDetail]:
    # google.rpc.Status is {1: code, 2: message, 3: repeated Any{1: type_url, 2: value}};
    # reading its few fields here spares a dependency on googleapis-common-protos.
    details = []
    for number, value in _fields(status):
        if number == 3 and isinstance(value, bytes):
            parts = dict(_fields(value))
            if str(parts.get(1, b""), "utf-8", "replace").endswith("gateway.ErrorDetail"):
                detail = gateway_pb2.ErrorDetail()
                detail.ParseFromString(parts.get(2, b""))
                details.append(detail)
    return details


def _fields(data: bytes):
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(data, position)
            yield number, data[position : position + length]
            position += length
        else:  # fixed-width fields do not occur in these messages; stop rather than guess
            return


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _endorsing_msps(envelope: common_pb2.Envelope) -> list[str]:
    """The MSP ids of the peers whose endorsements an endorsed transaction carries."""
    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    msps: set[str] = set()
    for action in transaction.actions:
        chaincode_action = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
        for endorsement in chaincode_action.action.endorsements:
            msps.add(identities_pb2.SerializedIdentity.FromString(endorsement.endorser).mspid)
    return sorted(msps)


class GatewayClient:
    """Calls one chaincode on one channel through one peer's Gateway service."""

    def __init__(self, endpoint: str, tls_ca_pem: bytes, signer: Signer, channel: str, chaincode: str,
                 *, server_name: str | None = None, timeout: float = 60.0) -> None:
        options: list[tuple[str, object]] = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE),
                   ("grpc.keepalive_time_ms", 60_000)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca_pem)
        self._channel = grpc.secure_channel(endpoint, credentials, options=options)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self.endpoint, self.signer, self.channel, self.chaincode, self.timeout = (
            endpoint, signer, channel, chaincode, timeout)
        self._endorsing_organizations: list[str] | None = None

    def close(self) -> None:
        self._channel.close()

    def _proposal(self, function: str, args: Sequence[bytes], chaincode: str | None = None) -> _Proposal:
        chaincode = chaincode or self.chaincode
        nonce = os.urandom(24)
        transaction_id = hashlib.sha256(nonce + self.signer.creator).hexdigest()
        timestamp = timestamp_pb2.Timestamp()
        timestamp.GetCurrentTime()
        channel_header = common_pb2.ChannelHeader(
            type=common_pb2.HeaderType.ENDORSER_TRANSACTION, timestamp=timestamp, channel_id=self.channel,
            tx_id=transaction_id,
            extension=proposal_pb2.ChaincodeHeaderExtension(
                chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode)).SerializeToString(),
        )
        signature_header = common_pb2.SignatureHeader(creator=self.signer.creator, nonce=nonce)
        invocation = chaincode_pb2.ChaincodeInvocationSpec(chaincode_spec=chaincode_pb2.ChaincodeSpec(
            type=chaincode_pb2.ChaincodeSpec.Type.GOLANG, chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode),
            input=chaincode_pb2.ChaincodeInput(args=[function.encode(), *args])))
        proposal = proposal_pb2.Proposal(
            header=common_pb2.Header(channel_header=channel_header.SerializeToString(),
                                     signature_header=signature_header.SerializeToString()).SerializeToString(),
            payload=proposal_pb2.ChaincodeProposalPayload(input=invocation.SerializeToString()).SerializeToString(),
        )
        proposal_bytes = proposal.SerializeToString()
        signed = proposal_pb2.SignedProposal(proposal_bytes=proposal_bytes, signature=self.signer.sign(proposal_bytes))
        return _Proposal(transaction_id, signed)

    def _call(self, method: str, request):
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            message = exc.details() if hasattr(exc, "details") else str(exc)  # type: ignore[attr-defined]
            raise GatewayCallError(method, code, message or "", _error_details(exc)) from exc

    def evaluate(self, function: str, *args: bytes, organization: str | None = None) -> bytes:
        """Run a query on a peer of the gateway's org (or of ``organization``); nothing is
        ordered or committed."""
        proposal = self._proposal(function, args)
        response = self._call("Evaluate", gateway_pb2.EvaluateRequest(
            transaction_id=proposal.transaction_id, channel_id=self.channel,
            proposed_transaction=proposal.signed, target_organizations=[organization] if organization else ()))
        return response.result.payload

    def evaluate_system(self, chaincode: str, function: str, *args: bytes) -> bytes:
        """Query a system chaincode of the channel (e.g. ``cscc``) on the gateway's peer."""
        proposal = self._proposal(function, args, chaincode)
        response = self._call("Evaluate", gateway_pb2.EvaluateRequest(
            transaction_id=proposal.transaction_id, channel_id=self.channel, proposed_transaction=proposal.signed))
        return response.result.payload

    @property
    def endorsing_organizations(self) -> list[str]:
        """The orgs named in endorsements (learnt from the last planned one), or []."""
        return list(self._endorsing_organizations or ())

    def endorse(self, function: str, *args: bytes) -> Prepared:
        """Collect the endorsements the chaincode's policy needs; nothing is ordered yet.

        Left to plan alone, the gateway runs the proposal on its own org's peer first and only
        then on the other orgs' peers, one after the other. Once a transaction shows which
        orgs' endorsements satisfied the policy, later ones name those orgs and the gateway
        asks their peers at the same time. The policy is still the chaincode's: naming orgs
        only chooses whom to ask, and the peers' validation refuses a transaction whose
        endorsements do not satisfy it. When some of the named peers endorse and others
        answer from an older state (still committing the block our last call waited for),
        the request is repeated after a short pause; a named plan that keeps failing is
        forgotten and the gateway plans again, one peer after the other.
        """
        proposal = self._proposal(function, args)
        envelope = self._endorse(proposal)
        envelope.signature = self.signer.sign(envelope.payload)
        return Prepared(proposal.transaction_id, envelope)

    def endorsed_answer(self, function: str, *args: bytes,
                        organizations: Sequence[str] = ()) -> tuple[bytes, common_pb2.Envelope]:
        """Have peers run ``function`` and sign its answer; nothing is ordered.

        With ``organizations``, a peer of each of them is asked (whatever the chaincode's
        policy would need); without, the peers the policy needs. Returns the proposal's bytes
        (what the answer's ``proposal_hash`` must match: this request, its nonce and
        arguments) and the endorsed, unsigned transaction envelope, whose endorsements the
        caller verifies (``_endorsement.py``)."""
        proposal = self._proposal(function, args)
        # Without organizations the gateway plans alone, as it does for the policy's needs.
        request = gateway_pb2.EndorseRequest(transaction_id=proposal.transaction_id, channel_id=self.channel,
                                             proposed_transaction=proposal.signed,
                                             endorsing_organizations=organizations)
        for attempt in range(_ANSWER_RETRIES + 1):
            try:
                return proposal.signed.proposal_bytes, self._call("Endorse", request).prepared_transaction
            except GatewayCallError as exc:
                # Peers that answered from different states (one still committing the last
                # block: "ProposalResponsePayloads do not match") make the gateway refuse,
                # whether we named the orgs or it planned: ask again once they have caught
                # up. The chaincode's own refusal ("chaincode response 500, ...") would only
                # repeat.
                if attempt == _ANSWER_RETRIES or "chaincode response" in exc.text:
                    raise
                time.sleep(_LAGGING_PAUSE * (attempt + 1))
        raise AssertionError("unreachable")

    def _endorse(self, proposal: _Proposal) -> common_pb2.Envelope:
        organizations = self._endorsing_organizations
        request = gateway_pb2.EndorseRequest(transaction_id=proposal.transaction_id, channel_id=self.channel,
                                             proposed_transaction=proposal.signed,
                                             endorsing_organizations=organizations or ())
        endorsed = None
        for attempt in range(_LAGGING_RETRIES + 1 if organizations else 0):
            try:
                endorsed = self._call("Endorse", request)
                break
            except GatewayCallError as exc:
                # Fewer failures than orgs asked: some peers endorsed, others answered from an
                # older state (they are still committing the block our last call waited for).
                if not organizations or len(exc.messages) >= len(organizations) or attempt == _LAGGING_RETRIES:
                    break
                time.sleep(_LAGGING_PAUSE * (attempt + 1))
        if endorsed is None:
            if organizations:
                self._endorsing_organizations = None
                del request.endorsing_organizations[:]
            endorsed = self._call("Endorse", request)
        envelope = endorsed.prepared_transaction
        if self._endorsing_organizations is None:
            self._endorsing_organizations = _endorsing_msps(envelope)
        return envelope

    def commit(self, prepared: Prepared) -> int:
        """Order an endorsed transaction and wait for our peer's verdict; the block number."""
        self._call("Submit", gateway_pb2.SubmitRequest(
            transaction_id=prepared.transaction_id, channel_id=self.channel,
            prepared_transaction=prepared.envelope))
        request = gateway_pb2.CommitStatusRequest(
            transaction_id=prepared.transaction_id, channel_id=self.channel, identity=self.signer.creator
        ).SerializeToString()
        status = self._call("CommitStatus", gateway_pb2.SignedCommitStatusRequest(
            request=request, signature=self.signer.sign(request)))
        if status.result != transaction_pb2.TxValidationCode.VALID:
            raise TransactionInvalid(prepared.transaction_id, status.result)
        return status.block_number

    def submit(self, function: str, *args: bytes) -> int:
        """Endorse, order and wait until committed; returns the Fabric block number."""
        named = bool(self._endorsing_organizations)
        try:
            return self.commit(self.endorse(function, *args))
        except TransactionInvalid as exc:
            # The orgs learnt earlier no longer satisfy the policy (the chaincode's definition
            # changed): nothing was written, so plan afresh and submit once more.
            if not named or exc.code != transaction_pb2.TxValidationCode.ENDORSEMENT_POLICY_FAILURE:
                raise
            self._endorsing_organizations = None
            return self.commit(self.endorse(function, *args))
