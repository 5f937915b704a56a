"""The tree head the consortium endorses, and its comparison with the one the core verified.

The chaincode keeps the ledger's log tree (docs/verification.md section 2) in its world
state and extends it in every append (``chaincode/tree.go``). :meth:`endorsed_tree_head` asks
the endorsing peers for it (``TreeHead``, endorsed, never submitted) and proves their
signatures (``_endorsement.py``) against the member organisations' root CAs: those the
connection profile pins (``endorsers``), else those of the channel's configuration.
:func:`check_endorsed_head` then compares it with the tree head the core computed from the
records it read and verified: equal at the endorsed size, or :class:`EndorsedHeadMismatch`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509

from lineage_ledger._errors import BackendError, ConfigError, HistoryRewritten

from ._endorsement import Endorser, MSPTrust, response_of, verify_endorsed_answer
from ._gateway import GatewayCallError, TransactionInvalid

if TYPE_CHECKING:
    from lineage_ledger import Ledger

    from ._gateway import GatewayClient
    from ._profile import ConnectionProfile

__all__ = ["EndorsedHeadMismatch", "EndorsedTreeHead", "TreeHeadsMixin", "TreeNotBuilt", "check_endorsed_head"]

_BUILD_STEP_BLOCKS = 200  # blocks per BuildTree transaction (the chaincode also stops at ~16 MiB)
_MVCC_CODES = {"MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT"}
_CATCH_UP_SECONDS = 2.0  # for our gateway's peer to commit what the endorsers had


class TreeNotBuilt(BackendError):
    """The ledger was begun by a chaincode without the log tree: build it once."""


class EndorsedHeadMismatch(HistoryRewritten):
    """The tree head the consortium endorsed is not the one verified from the records read."""


@dataclass(frozen=True)
class EndorsedTreeHead:
    size: int  # records
    root: str  # hex
    blocks: int
    block_id: str | None  # the last block's id, None for an empty ledger
    endorsers: tuple[Endorser, ...]
    # What the peers signed, kept as evidence (``_evidence.py``): our proposal and the
    # endorsed transaction, protobuf bytes.
    proposal: bytes = field(default=b"", repr=False)
    endorsed: bytes = field(default=b"", repr=False)


def _parse_tree_head(answer: bytes) -> tuple[int, str, int, str | None]:
    try:
        size, root, blocks, block_id = answer.decode().split("\t")
        parsed = int(size), root, int(blocks), block_id or None
    except ValueError as exc:
        raise BackendError(f"the chaincode answered an unreadable tree head {answer[:120]!r}") from exc
    if len(root) != 64 or parsed[0] < 0 or parsed[2] < 0:
        raise BackendError(f"the chaincode answered an unreadable tree head {answer[:120]!r}")
    return parsed


class TreeHeadsMixin:
    """FabricBackend's endorsed tree head (needs its ``_client``, ``profile``, ``_ledger``)."""

    _trust_roots: dict[str, MSPTrust] | None = None
    if TYPE_CHECKING:  # provided by FabricBackend
        profile: ConnectionProfile
        _client: GatewayClient
        _ledger: bytes

        def _fail(self, exc: Exception, action: str) -> BackendError: ...

    def endorsed_tree_head(self) -> EndorsedTreeHead:
        """The log tree head (size, root) as the endorsing peers sign it, signatures proved.

        Raises ``EndorsementRefused`` (a forged, altered or replayed answer, too few orgs),
        :class:`TreeNotBuilt` for a ledger of an older chaincode, ``BackendError``s as usual.
        """
        roots = self.endorsement_roots()
        quorum = self.profile.endorsement_quorum or len(roots) // 2 + 1
        try:
            # Every trusted org is asked, whatever the chaincode's policy needs (an OR policy
            # would gather one signature); if one cannot answer, the policy's own plan.
            proposal, envelope = self._client.endorsed_answer("lineage:TreeHead", self._ledger,
                                                              organizations=sorted(roots))
        except GatewayCallError as exc:
            self._refuse_tree_head(exc)
            try:
                proposal, envelope = self._client.endorsed_answer("lineage:TreeHead", self._ledger)
            except GatewayCallError as again:
                self._refuse_tree_head(again)
                raise self._fail(again, "TreeHead") from again
        answer, endorsers = verify_endorsed_answer(proposal, envelope, roots=roots, quorum=quorum,
                                                   chaincode=self.profile.chaincode)
        size, root, blocks, block_id = _parse_tree_head(answer)
        return EndorsedTreeHead(size, root, blocks, block_id, tuple(endorsers), proposal,
                                envelope.SerializeToString())

    def endorsed_head(self) -> tuple[int, str] | None:
        """(size, root hex) of the endorsed tree head, signatures proved; None for a ledger
        that has no tree yet. The hook a verifier calls to compare with its own tree (the
        core does not yet; see :func:`check_endorsed_head`). Raises ``EndorsementRefused``."""
        try:
            endorsed = self.endorsed_tree_head()
        except TreeNotBuilt:
            return None
        return endorsed.size, endorsed.root

    def _refuse_tree_head(self, exc: GatewayCallError) -> None:
        """Errors that asking another way would not cure."""
        where = f"fabric ledger {self.profile.ledger!r}"
        if "NO TREE" in exc.text:
            raise TreeNotBuilt(f"{where} has no log tree yet (begun by an older chaincode): run "
                               "`python -m lineage_ledger.backends.fabric build-tree --ledger URL` once") from exc
        if "TreeHead" in exc.text and "not found" in exc.text:
            raise TreeNotBuilt(f"{where}: chaincode {self.profile.chaincode!r} predates the endorsed tree head; "
                               "upgrade it (docs/fabric.md, \"Endorsed tree head\")") from exc
        if "ACCESS DENIED" in exc.text:
            raise self._fail(exc, "TreeHead") from exc

    def endorsement_roots(self) -> dict[str, MSPTrust]:
        """MSP id -> who belongs to it: the root CAs the profile's ``endorsers`` pin, else the
        channel configuration's member organisations (root and intermediate CAs, CRLs; as
        this gateway's peer reports it)."""
        if self._trust_roots is None:
            if self.profile.endorsers:
                self._trust_roots = _pinned_roots(self.profile)
            else:
                self._trust_roots = self._channel_roots()
        return self._trust_roots

    def _channel_roots(self) -> dict[str, MSPTrust]:
        from ._channel import application_msp_roots

        try:
            config = self._client.evaluate_system("cscc", "GetChannelConfig", self.profile.channel.encode())
        except GatewayCallError as exc:
            raise self._fail(exc, "reading the channel configuration") from exc
        return application_msp_roots(config)

    def build_tree(self, blocks_per_transaction: int = _BUILD_STEP_BLOCKS) -> tuple[int, int]:
        """Build the log tree of a ledger begun by an older chaincode, a few hundred blocks per
        transaction, until it reaches the head (from then on every append extends it).
        Returns (blocks, records) the tree covers; a ledger that has its tree returns (0, 0).
        Appends may go on meanwhile: a step they overtake is invalidated and made again."""
        conflicts = 0
        while True:
            try:
                prepared = self._client.endorse("lineage:BuildTree", self._ledger,
                                                str(blocks_per_transaction).encode())
                blocks, records, state = response_of(prepared.envelope).decode().split("\t")
                self._client.commit(prepared)
            except GatewayCallError as exc:
                raise self._fail(exc, "BuildTree") from exc
            except TransactionInvalid as exc:
                conflicts += 1
                if exc.code_name not in _MVCC_CODES or conflicts > 20:
                    raise self._fail(exc, "BuildTree") from exc
                continue  # an append committed meanwhile: build that step again
            if state == "done":
                return int(blocks), int(records)


def _pinned_roots(profile) -> dict[str, MSPTrust]:
    roots: dict[str, MSPTrust] = {}
    for msp_id, paths in profile.endorsers:
        certificates: list[x509.Certificate] = []
        for path in paths:
            try:
                certificates.extend(x509.load_pem_x509_certificates(profile.read(path)))
            except ValueError as exc:
                raise ConfigError(f"fabric profile: endorsers[{msp_id!r}]: {path} holds no PEM certificate") from exc
        roots[msp_id] = MSPTrust(tuple(certificates))
    return roots


def check_endorsed_head(ledger: Ledger) -> tuple[EndorsedTreeHead, str]:
    """Compare the consortium's endorsed tree head with the one the core verified.

    The endorsed head is read first; the verified head, brought up to date after it, covers
    at least as many records (a ledger only grows), and the core's tree gives its root at
    the endorsed size from O(log n) nodes. Returns (endorsed head, verified root at that
    size); raises :class:`EndorsedHeadMismatch` when they differ.
    """
    backend = ledger.backend
    if not isinstance(backend, TreeHeadsMixin):
        raise ConfigError(f"{backend.display_url}: only a fabric:// ledger has an endorsed tree head")
    endorsed = backend.endorsed_tree_head()
    # The core's own comparison (every refresh makes it) would raise HistoryRewritten first:
    # this check names the endorsers and raises its own error.
    verified = ledger.verifier.refresh(endorsed=False)
    deadline = time.monotonic() + _CATCH_UP_SECONDS
    while verified.size < endorsed.size and time.monotonic() < deadline:
        time.sleep(0.05)  # our gateway's peer may not have committed the endorsers' last block yet
        verified = ledger.verifier.refresh(endorsed=False)
    if verified.size < endorsed.size:
        raise EndorsedHeadMismatch(
            f"{backend.identity}: the consortium endorsed a tree of {endorsed.size} records, but the view "
            f"verified here holds {verified.size}: records are withheld from this client")
    root = ledger.verifier.store.root_at(endorsed.size)
    if root != endorsed.root:
        signers = ", ".join(e.msp_id for e in endorsed.endorsers)
        raise EndorsedHeadMismatch(
            f"{backend.identity}: the tree head endorsed by {signers} (size {endorsed.size}, root {endorsed.root}) "
            f"is not the tree verified from the records read here (root {root} at that size): the records this "
            "client read, or its remembered tree, differ from the ledger the peers hold")
    return endorsed, root
