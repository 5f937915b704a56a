"""``fabric:///path/profile.json``: the ledger kept by a provenance chaincode on Fabric.

Each :meth:`FabricBackend.append` is one Fabric transaction carrying every block of the
call (so a recorder's batch of 1,000 records is one endorsement, one ordering, one
commit). The chaincode recomputes record ids, block ids and Merkle roots, refuses
duplicates, and keeps the chain head as state: two writers that build on the same head
both get endorsed, the orderer sequences them, and the peers' MVCC validation marks the
second invalid, which arrives here as :class:`~lineage_ledger.AppendConflict` so that the
core rebuilds its block on the new head, as with every other back-end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc

from lineage_ledger._errors import AppendConflict, BackendError, BackendUnavailable, ConfigError
from lineage_ledger._model import StoredBlock, StoredRecord
from lineage_ledger.backends._base import Backend, ChainHead, Located, Role

from ._gateway import GatewayCallError, GatewayClient, Signer, TransactionInvalid
from ._profile import ConnectionProfile, parse_fabric_url, read_private_key
from ._tree_head import EndorsedTreeHead, TreeHeadsMixin

__all__ = ["AccessDenied", "EndorsedTreeHead", "FabricBackend", "InvalidBlock"]

_MAGIC = b"LLB1"
_READ_CHUNK_BYTES = 8 * 1024 * 1024
_KNOWN_CHUNK = 1000
_QUERY_THREADS = 4
_LAGGING_PEER_WAIT = 2.0  # seconds an append waits for another org's peer to catch up
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
_UNREACHABLE_MESSAGES = ("connection refused", "failed to connect", "no combination of peers")
_CONFLICT_CODES = {"MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT", "DUPLICATE_TXID"}


class AccessDenied(BackendError):
    """The identity in the connection profile may not do this (its role, or not a member)."""


class InvalidBlock(BackendError):
    """The chaincode refused a block whose ids, root or encoding do not check out."""


def encode_blocks(blocks: Sequence[StoredBlock]) -> bytes:
    """The chaincode's wire format (see chaincode/codec.go): canonical JSON holds no newline."""
    parts = [_MAGIC]
    for block in blocks:
        parts.append(b"B\t%d\t%s\t%d" % (block.height, block.id.encode(), len(block.records)))
        parts.append(block.header)
        parts.extend(record.id.encode() + b"\t" + record.body for record in block.records)
    parts.append(b"")
    return b"\n".join(parts)


def decode_blocks(payload: bytes) -> list[StoredBlock]:
    lines = payload.split(b"\n")
    if lines[0] != _MAGIC:
        raise BackendError("the chaincode answered blocks in an unknown format")
    blocks, index = [], 1
    while index < len(lines) and lines[index]:
        _, height, block_id, count = lines[index].split(b"\t")
        n = int(count)
        records = []
        for line in lines[index + 2 : index + 2 + n]:
            record_id, _, body = line.partition(b"\t")
            records.append(StoredRecord(record_id.decode(), body))
        blocks.append(StoredBlock(int(height), block_id.decode(), lines[index + 1], tuple(records)))
        index += 2 + n
    return blocks


def decode_located(payload: bytes) -> list[Located]:
    found = []
    for line in payload.split(b"\n"):
        if line:
            height, position, record_id, body = line.split(b"\t", 3)
            found.append(Located(int(height), int(position), StoredRecord(record_id.decode(), body)))
    return found


class FabricBackend(TreeHeadsMixin, Backend):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.profile: ConnectionProfile = parse_fabric_url(url)
        profile = self.profile
        try:
            signer = Signer(profile.msp_id, profile.read(profile.certificate), read_private_key(profile.private_key))
        except ValueError as exc:
            raise ConfigError(f"fabric profile: {exc}") from exc
        self._client = GatewayClient(profile.endpoint, profile.read(profile.tls_ca), signer, profile.channel,
                                     profile.chaincode, server_name=profile.server_name, timeout=profile.timeout)
        self._ledger = profile.ledger.encode()
        self._queries: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def identity(self) -> str:
        # The store is the ledger on the channel, whichever profile file or identity reaches it.
        p = self.profile
        return f"fabric://{p.endpoint}/{p.channel}/{p.chaincode}/{p.ledger}"

    # -- calls and their errors -------------------------------------------------------------
    def _fail(self, exc: Exception, action: str) -> BackendError:
        where = f"fabric ledger {self.profile.ledger!r} via {self.profile.endpoint}"
        if isinstance(exc, TransactionInvalid):
            if exc.code_name in _CONFLICT_CODES:
                return AppendConflict(f"{where}: another writer appended first ({exc.code_name})")
            return BackendError(f"{where}: {action} was invalidated by the peers: {exc.code_name}")
        assert isinstance(exc, GatewayCallError)
        text = exc.text
        if "ACCESS DENIED" in text or "access denied" in text or exc.code == grpc.StatusCode.PERMISSION_DENIED:
            reason = _chaincode_message(exc, "ACCESS DENIED") if "ACCESS DENIED" in text else str(exc)
            return AccessDenied(f"{where}: {action} refused: {reason}")
        if "CONFLICT:" in text:
            return AppendConflict(f"{where}: {_chaincode_message(exc, 'CONFLICT:')}")
        if "INVALID:" in text:
            return InvalidBlock(f"{where}: {action} refused: {_chaincode_message(exc, 'INVALID:')}")
        # "no combination of peers": the gateway cannot reach enough endorsers right now.
        if exc.code in _UNREACHABLE or any(m in text for m in _UNREACHABLE_MESSAGES):
            return BackendUnavailable(f"{where} is unreachable ({exc.code.name}): {exc}")
        return BackendError(f"{where}: {action} failed: {exc}")

    def _evaluate(self, function: str, *args: bytes | str | int) -> bytes:
        encoded = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        try:
            return self._client.evaluate(f"lineage:{function}", self._ledger, *encoded)
        except GatewayCallError as exc:
            raise self._fail(exc, function) from exc

    # -- the Backend contract ---------------------------------------------------------------
    def append(self, blocks: Sequence[StoredBlock]) -> None:
        if not blocks:
            return
        self._await_other_endorsers(blocks[0].height - 1)
        try:
            self._client.submit("lineage:Append", self._ledger, encode_blocks(blocks))
        except (GatewayCallError, TransactionInvalid) as exc:
            raise self._fail(exc, "append") from exc

    def _await_other_endorsers(self, head_height: int) -> None:
        """Wait (briefly) until the other orgs' endorsing peers hold the head we build on.

        Our gateway's peer has committed our last append when ``append`` returned, the other
        orgs' peers a moment later. Endorsed at once on a peer still behind, the block would
        be refused there ("does not follow the head") after the up-to-date peer had done the
        whole work; asking that peer for its head costs a few milliseconds instead.
        """
        others = [org for org in self._client.endorsing_organizations if org != self.profile.msp_id]
        deadline = time.monotonic() + _LAGGING_PEER_WAIT
        for org in others:
            while True:
                try:
                    raw = self._client.evaluate("lineage:Head", self._ledger, organization=org)
                except GatewayCallError:
                    return  # the endorsement will say what is wrong
                height = int(raw.split(b"\t", 1)[0]) if raw else -1
                if height >= head_height or time.monotonic() > deadline:
                    break
                time.sleep(0.005)

    def _head_fields(self) -> list[bytes] | None:
        raw = self._evaluate("Head")
        return raw.split(b"\t") if raw else None

    def head(self) -> ChainHead | None:
        fields = self._head_fields()
        return None if fields is None else ChainHead(int(fields[0]), fields[1].decode())

    def record_count(self) -> int:
        fields = self._head_fields()
        return 0 if fields is None else int(fields[2])

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        if stop is None:
            head = self.head()
            stop = 0 if head is None else head.height + 1
        position = max(start, 0)
        while position < stop:
            chunk = decode_blocks(self._evaluate("Blocks", position, stop, _READ_CHUNK_BYTES))
            if not chunk:
                return
            yield from chunk
            position = chunk[-1].height + 1

    def block_by_id(self, block_id: str) -> StoredBlock | None:
        found = decode_blocks(self._evaluate("BlockByID", block_id))
        return found[0] if found else None

    def known(self, record_ids: Iterable[str]) -> set[str]:
        # The chaincode's id filter answers most ids without a state read; a long list still
        # goes in chunks, as concurrent queries on the gateway's peer (only that peer: it
        # has committed our last transaction, the other orgs' peers may lag a moment).
        ids = list(record_ids)
        chunks = [",".join(ids[start : start + _KNOWN_CHUNK]) for start in range(0, len(ids), _KNOWN_CHUNK)]
        if len(chunks) > 1:
            answers = list(self._pool().map(lambda chunk: self._evaluate("Known", chunk), chunks))
        else:
            answers = [self._evaluate("Known", chunk) for chunk in chunks]
        found: set[str] = set()
        for answer in answers:
            found.update(answer.decode().split(",") if answer else ())
        return found

    def _pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._queries is None:
                self._queries = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix="fabric-query")
            return self._queries

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        return decode_located(self._evaluate("Find", role, path or "", digest or ""))

    def by_run(self, run_id: str) -> list[Located]:
        return decode_located(self._evaluate("ByRun", run_id))

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        return decode_located(self._evaluate("ByIDPrefix", prefix.lower(), limit))

    def whoami(self) -> tuple[str, str, str]:
        """(MSP id, client id, role) as the chaincode sees this profile's identity."""
        try:
            raw = self._client.evaluate("lineage:WhoAmI")
        except GatewayCallError as exc:
            raise self._fail(exc, "WhoAmI") from exc
        msp, client_id, role = raw.decode().split("\t")
        return msp, client_id, role

    def register_client(self, client_id: str, role: str) -> None:
        """As an admin: give a client of this MSP the role ``provider`` or ``user``."""
        try:
            self._client.submit("lineage:RegisterClient", client_id.encode(), role.encode())
        except (GatewayCallError, TransactionInvalid) as exc:
            raise self._fail(exc, "register") from exc

    def close(self) -> None:
        if self._queries is not None:
            self._queries.shutdown(wait=True)
        self._client.close()


def _chaincode_message(exc: GatewayCallError, marker: str) -> str:
    """The chaincode's own error text (from the first peer that reported it)."""
    for text in [*exc.messages, str(exc)]:
        if marker in text:
            return text[text.index(marker):]
    return str(exc)
