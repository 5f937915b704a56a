# The generated *_pb2 modules ship py.typed without stubs, so mypy sees none of their classes.
# mypy: disable-error-code="attr-defined,name-defined"
"""Endorsed answers: a chaincode result that the endorsing peers signed, checked here.

A Fabric query answered through ``Evaluate`` is one peer's word. An *endorsed* answer is the
same query run by the peers that the chaincode's endorsement policy names (with the
channel's default policy, a majority of the member organisations), each signing its
result. The gateway returns them as a prepared transaction, which we never submit::

    Envelope.payload = Payload(header, data = Transaction(actions = [TransactionAction(
        payload = ChaincodeActionPayload(action = ChaincodeEndorsedAction(
            proposal_response_payload = ProposalResponsePayload(
                proposal_hash,                      SHA-256 of our proposal (nonce, arguments)
                extension = ChaincodeAction(response = (status, message, payload = the answer),
                                            chaincode_id, results = the read set)),
            endorsements = [Endorsement(endorser = SerializedIdentity(MSP id, PEM),
                                        signature = ECDSA(proposal_response_payload || endorser))]))]))

:func:`verify_endorsed_answer` checks, with nothing taken from the gateway on trust: the
response answers *this* proposal (its hash covers our nonce, the function and the ledger
name, so neither an old answer nor another ledger's can be replayed); each endorser's
certificate was issued by a trusted root CA of the MSP it names, is valid now and is a
peer's (NodeOU ``peer``); each signature verifies; and enough distinct organisations signed.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import proposal_pb2, proposal_response_pb2, transaction_pb2

from lineage_ledger._errors import VerificationError

__all__ = ["EndorsementRefused", "Endorser", "MSPTrust", "response_of", "verify_endorsed_answer"]


class EndorsementRefused(VerificationError):
    """An endorsed answer does not prove itself: a signature, a certificate, the quorum or
    the binding to our request failed (a forged or replayed response)."""


@dataclass(frozen=True)
class Endorser:
    """An organisation's peer that signed an answer."""

    msp_id: str
    subject: str  # the peer certificate's subject, RFC 4514


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


@dataclass(frozen=True)
class MSPTrust:
    """Who belongs to one MSP, as its definition says: certificates issued by a root CA, or
    by an intermediate CA that a root issued, and not revoked by a CRL of their issuer."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    def issuer_of(self, certificate: x509.Certificate) -> x509.Certificate | None:
        for root in self.roots:
            if _issued_by(certificate, root):
                return root
        for ca in self.intermediates:
            if _issued_by(certificate, ca) and any(_issued_by(ca, root) for root in self.roots):
                return ca
        return None

    def revoked(self, certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
        """A CRL of ``issuer``, signed by it, lists the certificate's serial number."""
        key = issuer.public_key()
        for crl in self.crls:
            if crl.issuer != issuer.subject or not isinstance(key, ec.EllipticCurvePublicKey):
                continue
            if crl.is_signature_valid(key) and crl.get_revoked_certificate_by_serial_number(
                    certificate.serial_number) is not None:
                return True
        return False


def _trust(value: MSPTrust | Sequence[x509.Certificate]) -> MSPTrust:
    return value if isinstance(value, MSPTrust) else MSPTrust(tuple(value))


def proposal_hash(proposal_bytes: bytes) -> bytes:
    """What an endorser signs as ``proposal_hash``: SHA-256 of the channel header, the
    signature header and the proposal payload without its transient map (Fabric's
    ``protoutil.GetProposalHash1``; our proposals carry no transient data)."""
    proposal = proposal_pb2.Proposal.FromString(proposal_bytes)
    header = common_pb2.Header.FromString(proposal.header)
    payload = proposal_pb2.ChaincodeProposalPayload.FromString(proposal.payload)
    stripped = proposal_pb2.ChaincodeProposalPayload(input=payload.input).SerializeToString()
    return hashlib.sha256(header.channel_header + header.signature_header + stripped).digest()


def response_of(envelope: common_pb2.Envelope) -> bytes:
    """The chaincode's answer inside an endorsed transaction (unchecked: for our own writes)."""
    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    action = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload).action
    response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(action.proposal_response_payload)
    return proposal_pb2.ChaincodeAction.FromString(response_payload.extension).response.payload


def _is_peer(certificate: x509.Certificate) -> bool:
    units = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)
    return any(unit.value == "peer" for unit in units)


def _check_endorser(identity: identities_pb2.SerializedIdentity, roots: Mapping[str, MSPTrust | Sequence[x509.Certificate]],
                    now: datetime.datetime) -> x509.Certificate:
    given = roots.get(identity.mspid)
    if not given:
        raise EndorsementRefused(f"an endorsement is signed by MSP {identity.mspid!r}, which is not a trusted member")
    trusted = _trust(given)
    try:
        certificate = x509.load_pem_x509_certificate(identity.id_bytes)
    except ValueError as exc:
        raise EndorsementRefused(f"an endorser of {identity.mspid} has an unreadable certificate: {exc}") from exc
    subject = certificate.subject.rfc4514_string()
    issuer = trusted.issuer_of(certificate)
    if issuer is None:
        raise EndorsementRefused(f"endorser {subject} claims {identity.mspid}, but no root CA of that MSP issued it")
    if trusted.revoked(certificate, issuer):
        raise EndorsementRefused(f"endorser {subject} ({identity.mspid}): the certificate is revoked")
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise EndorsementRefused(f"endorser {subject} ({identity.mspid}): the certificate is not valid now")
    if not _is_peer(certificate):
        raise EndorsementRefused(f"endorser {subject} ({identity.mspid}) is not a peer (its certificate lacks OU=peer)")
    if not isinstance(certificate.public_key(), ec.EllipticCurvePublicKey):
        raise EndorsementRefused(f"endorser {subject} ({identity.mspid}) has no ECDSA key")
    return certificate


def verify_endorsed_answer(proposal_bytes: bytes, envelope: common_pb2.Envelope, *,
                           roots: Mapping[str, MSPTrust | Sequence[x509.Certificate]], quorum: int, chaincode: str,
                           now: datetime.datetime | None = None) -> tuple[bytes, list[Endorser]]:
    """The answer (the chaincode response's payload) and who endorsed it, once proved.

    ``roots`` maps each trusted MSP id to its :class:`MSPTrust` (or just its root CA
    certificates); ``quorum`` is how many
    distinct MSPs must have signed. Raises :class:`EndorsementRefused`.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        payload = common_pb2.Payload.FromString(envelope.payload)
        transaction = transaction_pb2.Transaction.FromString(payload.data)
        if len(transaction.actions) != 1:
            raise EndorsementRefused(f"the endorsed answer holds {len(transaction.actions)} actions, not one")
        action = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload).action
        response_payload = proposal_response_pb2.ProposalResponsePayload.FromString(action.proposal_response_payload)
        chaincode_action = proposal_pb2.ChaincodeAction.FromString(response_payload.extension)
    except Exception as exc:  # protobuf's DecodeError and friends: a malformed answer
        if isinstance(exc, EndorsementRefused):
            raise
        raise EndorsementRefused(f"the endorsed answer is not a Fabric transaction: {exc}") from exc
    if response_payload.proposal_hash != proposal_hash(proposal_bytes):
        raise EndorsementRefused("the endorsed answer is not the answer to this request (proposal hash differs): "
                                 "a replayed or substituted response")
    if chaincode_action.chaincode_id.name != chaincode:
        raise EndorsementRefused(f"the endorsed answer comes from chaincode {chaincode_action.chaincode_id.name!r}, "
                                 f"not {chaincode!r}")
    if chaincode_action.response.status != 200:
        raise EndorsementRefused(f"the chaincode answered status {chaincode_action.response.status}: "
                                 f"{chaincode_action.response.message}")
    signed_by: dict[str, Endorser] = {}
    for endorsement in action.endorsements:
        identity = identities_pb2.SerializedIdentity.FromString(endorsement.endorser)
        certificate = _check_endorser(identity, roots, now)
        key = certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        try:
            key.verify(endorsement.signature, action.proposal_response_payload + endorsement.endorser,
                       ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError) as exc:
            raise EndorsementRefused(f"the signature of endorser {certificate.subject.rfc4514_string()} "
                                     f"({identity.mspid}) does not verify: the answer was altered") from exc
        signed_by.setdefault(identity.mspid, Endorser(identity.mspid, certificate.subject.rfc4514_string()))
    if len(signed_by) < quorum:
        named = ", ".join(sorted(signed_by)) or "none"
        raise EndorsementRefused(f"the answer is endorsed by {len(signed_by)} organisation(s) ({named}); "
                                 f"{quorum} must sign")
    return chaincode_action.response.payload, sorted(signed_by.values(), key=lambda e: e.msp_id)
