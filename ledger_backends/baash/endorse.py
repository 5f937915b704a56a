"""Tree heads endorsed by the quorum: every rank signs the ledger's tree head after a commit.

Each rank keeps the RFC 9162 tree over every record of its in-memory chain (the core's
tree: BLAKE3, a leaf is a record id's 32 bytes, records in ledger order), so after a round
commits it knows the tree size and root of what it holds itself. It signs the checkpoint
body (the core's :class:`~lineage_ledger._log.checkpoint.Checkpoint`: origin, size, root; no
time line, so every rank signs the same text) with its own ed25519 key, and the gateway
puts the signatures of every rank that holds the same head under one note, a C2SP signed
note with several signature lines. A client that knows the ranks' public keys accepts
that tree head once a quorum of them signed it (:func:`verify_endorsed`).

Keys live in shared storage: ``DIR/keys/rank-<slot>`` (0600) and ``rank-<slot>.pub``, one per
world-rank slot, made by the daemon at its first start; ``DIR/keys/ranks.pub`` lists the
public keys, one a line, for users to copy. The daemon keeps the last endorsed note in
``DIR/checkpoint``: it serves it after a restart, and a rank that restores its chain from
storage endorses nothing unless that chain verifies (the core's ``verify_chain``) and
extends that note's tree head. ``DIR/origin`` names the ledger
(``lineage-ledger:`` and 32 hex digits), the same whichever socket or address a client
uses, so endorsed checkpoints work with ``verify-lineage --against``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Sequence

from blake3 import blake3

from lineage_ledger import LedgerError, verify_chain
from lineage_ledger._errors import CheckpointInvalid, ConfigError
from lineage_ledger._log.checkpoint import (
    Checkpoint,
    Signer,
    Verifier,
    load_signer,
    load_verifier,
    open_note,
    parse,
    parse_verifier,
    sign_note,
    write_keypair,
)
from lineage_ledger._log.tree import BLAKE3
from lineage_ledger._model import StoredBlock

from .access import write_replace

__all__ = ["Endorser", "TreeTracker", "assemble", "ensure_keys", "ensure_origin", "load_verifiers", "quorum_of",
           "read_endorsed", "save_endorsed", "signs", "verify_endorsed"]

_ORIGIN = re.compile(r"lineage-ledger:[0-9a-f]{32}\Z")


def quorum_of(keys: int) -> int:
    """Signatures needed out of ``keys`` ranks: more than two thirds (2f+1 of 3f+1), so two
    endorsed heads that disagree would need more than f ranks to have signed both."""
    return keys - (keys - 1) // 3


class TreeTracker:
    """The tree head over records appended so far, in O(log n) memory (a compact range).

    The hashes are :data:`lineage_ledger._log.tree.BLAKE3`'s (leaf ``H(0x00 || id)``, node
    ``H(0x01 || left || right)``) from one reused hasher: building a hasher per hash cost
    half the time (2.3 against 1.15 µs a record), on every rank after every commit.
    """

    __slots__ = ("_hasher", "_stack", "size")

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (perfect subtree size, hash), sizes decreasing
        self._hasher = blake3()  # a tracker belongs to one rank's thread
        self.size = 0

    def extend(self, blocks: Iterable[StoredBlock]) -> None:
        reset, update, digest_of = self._hasher.reset, self._hasher.update, self._hasher.digest
        stack = self._stack
        for block in blocks:
            for record in block.records:
                reset()
                update(b"\x00" + bytes.fromhex(record.id))
                size, digest = 1, digest_of()
                while stack and stack[-1][0] == size:
                    left_size, left = stack.pop()
                    reset()
                    update(b"\x01" + left + digest)
                    size, digest = left_size + size, digest_of()
                stack.append((size, digest))
                self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return BLAKE3.empty_root()
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            digest = BLAKE3.node(left, digest)
        return digest


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if os.path.islink(path) or info.st_uid != os.getuid():
        raise ConfigError(f"{path} must be a directory owned by uid {os.getuid()}, not a link")
    if info.st_mode & 0o777 != 0o700:  # only a change: read-only storage is served as it is
        os.chmod(path, 0o700)


def ensure_origin(storage: str) -> str:
    """``DIR/origin``, made once: the ledger's name in its checkpoints."""
    path = os.path.join(storage, "origin")
    if not os.path.lexists(path):
        write_replace(path, f"lineage-ledger:{secrets.token_hex(16)}\n".encode(), 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        text = os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not _ORIGIN.match(text):
        raise ConfigError(f"{path} does not hold a ledger origin (lineage-ledger: and 32 hex digits)")
    return text


def save_endorsed(storage: str, note: str) -> None:
    """Keep the last endorsed note in ``DIR/checkpoint`` (replaced atomically; losing the
    newest in a crash leaves an older one, which the chain still extends), and beside it, in
    ``DIR/checkpoint.keys``, the ranks' keys it was endorsed under: a later start with more
    ranks rewrites ``ranks.pub``, and a note of the smaller job has no quorum of those keys.
    The note goes first: a crash between the two leaves a new note under the old keys, which
    their ranks signed too, rather than an old note under keys it was never signed by."""
    write_replace(os.path.join(storage, "checkpoint"), note.encode(), 0o600)
    with open(os.path.join(storage, "keys", "ranks.pub"), "rb") as handle:
        keys = handle.read(1 << 20)
    _write_if_changed(os.path.join(storage, "checkpoint.keys"), keys, 0o600)


def short_of_quorum(storage: str, note: str) -> str | None:
    """Why ``note`` is no endorsement under the ranks' keys (``DIR/keys/ranks.pub``), or None:
    a quorum of them signed it."""
    try:
        verify_endorsed(note, load_verifiers(os.path.join(storage, "keys", "ranks.pub")))
    except (CheckpointInvalid, ConfigError) as exc:
        return str(exc)
    return None


def endorsed_keys_path(storage: str) -> str:
    """The keys the kept note's quorum is counted over (``ranks.pub`` where none was kept)."""
    kept = os.path.join(storage, "checkpoint.keys")
    return kept if os.path.lexists(kept) else os.path.join(storage, "keys", "ranks.pub")


def _write_if_changed(path: str, data: bytes, mode: int) -> None:
    try:
        with open(path, "rb") as handle:
            if handle.read(len(data) + 1) == data:
                return
    except OSError:
        pass
    write_replace(path, data, mode)


def read_endorsed(storage: str) -> str | None:
    try:
        fd = os.open(os.path.join(storage, "checkpoint"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 64 << 10)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def key_path(storage: str, slot: int) -> str:
    return os.path.join(storage, "keys", f"rank-{slot}")  # and rank-<slot>.pub, as ssh names keys


def ensure_keys(storage: str, ranks: int) -> list[Verifier]:
    """A key pair per rank slot (made where missing) and ``DIR/keys/ranks.pub``; the public keys."""
    _private_dir(os.path.join(storage, "keys"))
    verifiers = []
    for slot in range(ranks):
        path = key_path(storage, slot)
        if not os.path.exists(path):
            write_keypair(path, f"baash-rank-{slot}")
            os.chmod(path + ".pub", 0o600)  # private as all of the storage (keygen's is 0644, to publish)
        verifiers.append(load_verifier(path + ".pub"))
        load_signer(path)  # ConfigError now, naming the key, rather than a rank that dies at each start
    listing = "".join(v.text() + "\n" for v in verifiers).encode()
    published = os.path.join(storage, "keys", "ranks.pub")
    if os.path.lexists(os.path.join(storage, "checkpoint")) and not os.path.lexists(
            os.path.join(storage, "checkpoint.keys")) and os.path.exists(published):
        # A note kept before checkpoint.keys existed was endorsed under the ranks.pub about to
        # be replaced: keep that for it, or a job grown since would find it has no quorum.
        with open(published, "rb") as handle:
            _write_if_changed(os.path.join(storage, "checkpoint.keys"), handle.read(1 << 20), 0o600)
    # Written only when it changes: a start on a full disk needs no room.
    _write_if_changed(published, listing, 0o600)
    return verifiers


def load_verifiers(path: str) -> list[Verifier]:
    """Public keys, one a line (``ranks.pub``); ``ConfigError`` if unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle.read(1 << 20).splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read public keys from {path}: {exc}") from None
    if not lines:
        raise ConfigError(f"{path} holds no public key")
    try:
        return [parse_verifier(line) for line in lines]
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class Endorser:
    """A rank's key: signs the checkpoint body of the tree head it holds."""

    def __init__(self, origin: str, signer: Signer) -> None:
        self.origin, self.signer = origin, signer

    @classmethod
    def load(cls, storage: str, slot: int) -> Endorser | None:
        """This slot's key, or None where the storage has none (a rank then does not sign)."""
        path = key_path(storage, slot)
        if not os.path.exists(path) or not os.path.exists(os.path.join(storage, "origin")):
            return None
        return cls(ensure_origin(storage), load_signer(path))

    def check_restored(self, storage: str, blocks: Sequence[StoredBlock], *, verified: bool = False,
                       chain_error: str | None = None) -> str | None:
        """Why this rank must not endorse the chain it restored from storage, or None: the
        chain must verify, and extend the last endorsed tree head (``DIR/checkpoint``).
        ``verified``: the rank verified it already, and found ``chain_error`` (None: none)."""
        if not verified:
            try:
                verify_chain(blocks)
            except LedgerError as exc:
                chain_error = str(exc)
        if chain_error is not None:
            return f"the chain in shared storage does not verify: {chain_error}"
        note = read_endorsed(storage)
        if note is None:
            return None
        try:
            endorsed = verify_endorsed(note, load_verifiers(endorsed_keys_path(storage)))
        except (CheckpointInvalid, ConfigError) as exc:
            return f"the last endorsed tree head in {storage}/checkpoint does not verify: {exc}"
        tracker = TreeTracker()
        for block in blocks:
            if tracker.size >= endorsed.size:
                break
            tracker.extend([block])
        if endorsed.origin != self.origin or tracker.size != endorsed.size or tracker.root() != endorsed.root:
            return (f"shared storage is not an extension of the tree head the ranks endorsed last "
                    f"({endorsed.size} records, root {endorsed.root.hex()}): its history was rewritten")
        return None

    def body(self, tracker: TreeTracker) -> str:
        return Checkpoint(self.origin, tracker.size, tracker.root()).body()

    def sign(self, tracker: TreeTracker, *, lie: bool = False) -> tuple[int, str, str]:
        """(size, root hex, signature line) of the tree head this rank holds; ``lie`` (fault
        injection, ``--lying-signer``): the line signs another root than the one reported."""
        body = self.body(tracker)
        signed = Checkpoint(self.origin, tracker.size, bytes(32)).body() if lie else body
        return tracker.size, tracker.root().hex(), sign_note(signed, self.signer)[len(signed) + 1:]


def signs(body: str, line: str, verifiers: Sequence[Verifier]) -> bool:
    """Whether the signature ``line`` is a good signature of ``body`` by one of ``verifiers``.
    The gateway asks before it puts a rank's line under the note: one failing line by a
    known key refuses the whole note (the signed-note rules), so one lying rank would
    otherwise stop the quorum of honest ones."""
    try:
        open_note(body + "\n" + line, verifiers)
    except CheckpointInvalid:
        return False
    return True


def assemble(body: str, lines: Sequence[str]) -> str:
    """One signed note: ``body``, a blank line, the signature lines (each once, sorted)."""
    return body + "\n" + "".join(sorted(set(lines)))


def verify_endorsed(note: str | bytes, verifiers: Sequence[Verifier], quorum: int | None = None) -> Checkpoint:
    """The checkpoint in ``note`` if at least ``quorum`` of ``verifiers`` (default: more than
    two thirds of them) signed it; :class:`CheckpointInvalid` otherwise, or if any of their
    signatures fails (a changed size or root), as the signed-note rules say."""
    # Keys are counted by the public key itself: one private key signs under any name it
    # likes, and a ranks.pub listing it twice under two names still holds one key.
    keys: dict[bytes, list[Verifier]] = {}
    for verifier in verifiers:
        keys.setdefault(verifier.public_key, []).append(verifier)
    if not keys:
        raise CheckpointInvalid("no public keys of the ranks were given")
    need = quorum_of(len(keys)) if quorum is None else quorum
    if not 1 <= need <= len(keys):
        raise CheckpointInvalid(f"a quorum of {need} out of {len(keys)} rank keys is impossible")
    checkpoint = parse(note)  # strict: the body and the signature lines' form
    open_note(note, list(verifiers))  # any failing signature by a known key rejects the note
    signed = []
    for names in keys.values():
        try:
            open_note(note, names)
        except CheckpointInvalid:  # no signature by this key (a bad one was refused above)
            continue
        signed.append(names[0].name)
    if len(signed) < need:
        raise CheckpointInvalid(
            f"the tree head of {checkpoint.size} records is signed by {len(signed)} of the {len(keys)} ranks' keys "
            f"({', '.join(sorted(signed)) or 'none'}); a quorum is {need}")
    return checkpoint
