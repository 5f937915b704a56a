"""Checkpoints: a ledger's tree head as a signed note that anyone can keep and check later.

A checkpoint is the C2SP ``tlog-checkpoint`` body (origin, tree size, base64 root) with
one optional extension line ``time <RFC 3339 UTC>``, wrapped in a C2SP ``signed-note``
exactly as Go's ``golang.org/x/mod/sumdb/note`` writes it::

    <origin>
    <size>
    <base64 root>
    time 2025-01-02T03:04:05Z

    — <key name> <base64(4-byte key id || 64-byte ed25519 signature)>

The key id is ``SHA-256(name || "\\n" || 0x01 || public key)[:4]``; keys are stored in the
note package's text forms (``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`` and
``<name>+<hex id>+<base64(0x01 || public key)>``), so Go tools read ours and we read theirs.

Parsing is strict and fails with :class:`CheckpointInvalid` only: a checkpoint is what a
user keeps to prove the ledger never rewrote its history, so anything ambiguous is
refused rather than guessed. ``cryptography`` is imported only when a key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .._errors import CheckpointInvalid, ConfigError

__all__ = [
    "Checkpoint",
    "Signer",
    "Verifier",
    "generate_key",
    "load_signer",
    "load_verifier",
    "open_note",
    "parse",
    "parse_signer",
    "parse_verifier",
    "sign",
    "sign_note",
    "write_keypair",
]

#: Largest note accepted, in bytes of UTF-8 (a checkpoint with a few signatures is ~300).
MAX_NOTE_BYTES = 64 * 1024
#: Go's note.Open refuses more signature lines than this.
MAX_SIGNATURES = 100
_ALG_ED25519 = 1
_SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_KEY_FILE = 4096

_SIZE = re.compile(r"(?:0|[1-9][0-9]{0,19})\Z")
_TIME = re.compile(r"time (\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{6}))?Z\Z")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}\Z")


def _b64decode(text: str) -> bytes | None:
    """Standard padded base64 in its one canonical spelling, else None."""
    if not _B64.match(text):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _valid_name(name: str) -> bool:
    """The note package's rule for key names: non-empty, no Unicode space, no '+'."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and not _CONTROL.search(name)


def _key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([_ALG_ED25519]) + public_key).digest()[:4]


def _format_time(moment: datetime) -> str:
    text = moment.replace(tzinfo=None, microsecond=0).isoformat()
    return f"{text}.{moment.microsecond:06d}Z" if moment.microsecond else text + "Z"


# --- the checkpoint -------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: ``size`` leaves with root hash ``root`` in the log named ``origin``."""

    origin: str
    size: int
    root: bytes
    time: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or _CONTROL.search(self.origin) or "\n" in self.origin:
            raise ValueError("a checkpoint's origin must be non-empty text without control characters")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size < 1 << 64:
            raise ValueError(f"a checkpoint's size must be an integer in [0, 2**64), not {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise ValueError("a checkpoint's root must be 32 bytes")
        if self.time is not None:
            if not isinstance(self.time, datetime) or self.time.tzinfo is None:
                raise ValueError("a checkpoint's time must be a timezone-aware datetime")
            if self.time.tzinfo is not timezone.utc:
                object.__setattr__(self, "time", self.time.astimezone(timezone.utc))

    def body(self) -> str:
        """The note text: what is signed, ending in a newline."""
        text = f"{self.origin}\n{self.size}\n{_b64(self.root)}\n"
        if self.time is not None:
            text += f"time {_format_time(self.time)}\n"
        return text

    @classmethod
    def from_text(cls, text: str | bytes, verifiers: Any = ()) -> Checkpoint:
        """Same as :func:`parse`."""
        return parse(text, verifiers)


def _parse_body(body: str) -> Checkpoint:
    lines = body.split("\n")[:-1]  # the body ends with "\n"
    if len(lines) < 3:
        raise CheckpointInvalid("a checkpoint needs an origin, a size and a root hash line")
    if any(not line for line in lines):
        raise CheckpointInvalid("a checkpoint has an empty line in its text")
    origin, size_text, root_text, *extensions = lines
    if not _SIZE.match(size_text) or int(size_text) >= 1 << 64:
        raise CheckpointInvalid("the checkpoint's size line is not a decimal number without leading zeros")
    root = _b64decode(root_text)
    if root is None or len(root) != 32:
        raise CheckpointInvalid("the checkpoint's root line is not the base64 of 32 bytes")
    time = None
    if len(extensions) > 1:
        raise CheckpointInvalid("a checkpoint has at most one extension line, 'time ...'")
    if extensions:
        match = _TIME.match(extensions[0])
        if not match or match.group(7) == "000000":
            raise CheckpointInvalid("the checkpoint's extension line is not 'time YYYY-MM-DDTHH:MM:SS[.ffffff]Z'")
        year, month, day, hour, minute, second, micro = (int(g) for g in match.groups(default="0"))
        try:
            time = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone.utc)
        except ValueError as exc:
            raise CheckpointInvalid(f"the checkpoint's time is not a real date: {exc}") from None
    try:
        return Checkpoint(origin, int(size_text), root, time)
    except ValueError as exc:
        raise CheckpointInvalid(f"not a checkpoint: {exc}") from None


# --- keys -----------------------------------------------------------------------------


class Verifier:
    """A public key that can check signature lines: name, 4-byte key id, ed25519 key."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        if not _valid_name(name):
            raise ConfigError(f"invalid key name {name!r}: it must be non-empty, without spaces or '+'")
        if len(public_key) != 32:
            raise ConfigError("an ed25519 public key has 32 bytes")
        self.name = name
        self.public_key = bytes(public_key)
        self.key_id = _key_id(name, self.public_key)
        self._key: Any = None

    def text(self) -> str:
        """The note package's verifier key text ``name+hex id+base64(0x01 || key)``."""
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([_ALG_ED25519]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if self._key is None:
            try:
                self._key = Ed25519PublicKey.from_public_bytes(self.public_key)
            except ValueError:
                return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"Verifier({self.name}+{self.key_id.hex()})"


class Signer:
    """A private key that signs notes. Its repr and errors never show the key."""

    __slots__ = ("_key", "verifier")

    def __init__(self, name: str, seed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        if len(seed) != 32:
            raise ConfigError("an ed25519 private key seed has 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(bytes(seed))
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def text(self) -> str:
        """The note package's signer key text. Secret: write it only to a 0600 file."""
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{_b64(bytes([_ALG_ED25519]) + seed)}"

    def __repr__(self) -> str:
        return f"Signer({self.name}+{self.key_id.hex()})"


def _split_key(text: str, fields: int) -> list[str] | None:
    parts = text.split("+", fields - 1)
    return parts if len(parts) == fields else None


def parse_verifier(text: str) -> Verifier:
    """A verifier from its key text ``name+hex id+base64(0x01 || public key)``."""
    parts = _split_key(text.strip(), 3)
    if parts is None or parts[0] == "PRIVATE":
        raise ConfigError("not a public key (expected <name>+<8 hex digits>+<base64 key>)")
    name, hex_id, key64 = parts
    raw = _b64decode(key64)
    if not _valid_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hex_id) or not raw:
        raise ConfigError("not a public key (expected <name>+<8 hex digits>+<base64 key>)")
    if raw[0] != _ALG_ED25519 or len(raw) != 33:
        raise ConfigError("the public key is not an ed25519 key (algorithm 1, 32 bytes)")
    verifier = Verifier(name, raw[1:])
    if verifier.key_id.hex() != hex_id:
        raise ConfigError(f"the public key's id {hex_id} does not match its name and key")
    return verifier


def parse_signer(text: str) -> Signer:
    """A signer from its key text ``PRIVATE+KEY+name+hex id+base64(0x01 || seed)``."""
    parts = _split_key(text.strip(), 5)
    malformed = "not a private key (expected PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>)"
    if parts is None or parts[:2] != ["PRIVATE", "KEY"]:
        raise ConfigError(malformed)
    name, hex_id, key64 = parts[2:]
    raw = _b64decode(key64)
    if not _valid_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hex_id) or not raw:
        raise ConfigError(malformed)
    if raw[0] != _ALG_ED25519 or len(raw) != 33:
        raise ConfigError("the private key is not an ed25519 key (algorithm 1, 32-byte seed)")
    signer = Signer(name, raw[1:])
    if signer.key_id.hex() != hex_id:
        raise ConfigError(f"the private key's id {hex_id} does not match its name and key")
    return signer


def generate_key(name: str, seed: bytes | None = None) -> tuple[str, str]:
    """A new ed25519 key pair as (private key text, public key text).

    ``seed`` makes the pair reproducible; it is meant for test vectors only.
    """
    signer = Signer(name, os.urandom(32) if seed is None else seed)
    return signer.text(), signer.verifier.text()


def _create(path: str, data: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; make it exactly this
        os.write(fd, data.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_keypair(path: str | os.PathLike[str], name: str) -> tuple[str, str]:
    """Write a new key pair: ``path`` (private, 0600) and ``path + '.pub'`` (0644).

    Neither file may exist. Returns the two paths.
    """
    private_path = os.fspath(path)
    public_path = private_path + ".pub"
    if os.path.lexists(public_path):
        raise ConfigError(f"{public_path} exists; refusing to overwrite a key file")
    private, public = generate_key(name)
    _create(private_path, private + "\n", 0o600)
    try:
        _create(public_path, public + "\n", 0o644)
    except ConfigError:
        os.unlink(private_path)  # ours, just created: leave no half pair
        raise
    return private_path, public_path


def _read_key_file(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read key file {os.fspath(path)}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ConfigError(f"{os.fspath(path)} is too large to be a key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{os.fspath(path)} is not a key file (not UTF-8 text)") from None


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """The private key in ``path``; ``ConfigError`` if it is unreadable or malformed."""
    try:
        return parse_signer(_read_key_file(path))
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None


def load_verifier(path: str | os.PathLike[str]) -> Verifier:
    """The public key in ``path`` (the ``.pub`` file); ``ConfigError`` if unreadable or malformed."""
    text = _read_key_file(path)
    if text.startswith("PRIVATE+KEY+"):
        raise ConfigError(f"{os.fspath(path)} holds a private key; give the public key (.pub) file")
    try:
        return parse_verifier(text)
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None


def load_verifiers(path: str | os.PathLike[str]) -> list[Verifier]:
    """Every public key in ``path``: one a line (a ``.pub`` file holds one; a list such as
    BAASH's ``ranks.pub`` holds several). ``ConfigError`` if unreadable or malformed."""
    text = _read_key_file(path)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{os.fspath(path)} holds no public key")
    if any(line.startswith("PRIVATE+KEY+") for line in lines):
        raise ConfigError(f"{os.fspath(path)} holds a private key; give the public key (.pub) file")
    try:
        return [parse_verifier(line) for line in lines]
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None


def signed_by(note: str | bytes, verifiers: list[Verifier]) -> list[Verifier]:
    """The distinct keys among ``verifiers`` whose signature on ``note`` verifies (after
    :func:`parse` with them has refused any failing one)."""
    text, signatures = _split_note(note)
    message = text.encode("utf-8")
    known = {(v.name, v.key_id): v for v in verifiers}
    found: dict[tuple[str, bytes], Verifier] = {}
    for name, key_id, signature in signatures:
        verifier = known.get((name, key_id))
        if verifier is not None and verifier.verify(message, signature):
            found[(name, key_id)] = verifier
    return list(found.values())


# --- signed notes ---------------------------------------------------------------------


def sign_note(text: str, signer: Signer) -> str:
    """``text`` (ending in a newline) followed by a blank line and ``signer``'s signature line."""
    if not text.endswith("\n") or _CONTROL.search(text):
        raise ValueError("a note's text must end with a newline and hold no control characters")
    signature = signer.sign(text.encode("utf-8"))
    return f"{text}\n{_SIG_PREFIX}{signer.name} {_b64(signer.key_id + signature)}\n"


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """(text, [(key name, key id, signature)]) of a note; an unsigned note has no lines."""
    if isinstance(note, str):
        if len(note) > MAX_NOTE_BYTES:
            raise CheckpointInvalid(f"a note is at most {MAX_NOTE_BYTES} bytes")
        try:
            note = note.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointInvalid("a note must be valid UTF-8") from None
    if not isinstance(note, bytes):
        raise CheckpointInvalid(f"a note is text, not {type(note).__name__}")
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointInvalid(f"a note is at most {MAX_NOTE_BYTES} bytes")
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointInvalid("a note must be valid UTF-8") from None
    if _CONTROL.search(text):
        raise CheckpointInvalid("a note may hold no control characters other than newlines")
    if not text.endswith("\n"):
        raise CheckpointInvalid("a note must end with a newline")
    split = text.rfind("\n\n")
    if split < 0:
        return text, []
    body, block = text[: split + 1], text[split + 2 :]
    if not block:
        raise CheckpointInvalid("a note's blank line must be followed by signature lines")
    lines = block.split("\n")[:-1]
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointInvalid(f"a note has at most {MAX_SIGNATURES} signatures")
    signatures = []
    for number, line in enumerate(lines, 1):
        name, sep, sig64 = line[len(_SIG_PREFIX) :].partition(" ")
        raw = _b64decode(sig64) if sep else None
        if not line.startswith(_SIG_PREFIX) or not _valid_name(name) or raw is None or len(raw) < 5:
            raise CheckpointInvalid(f"signature line {number} is not '\u2014 <key name> <base64 signature>'")
        signatures.append((name, raw[:4], raw[4:]))
    return body, signatures


def open_note(note: str | bytes, verifiers: Any) -> str:
    """The text of a signed note, once a known key's signature on it verifies.

    As the signed-note spec says: lines by unknown keys (name and key id) are ignored, a
    failing signature by a known key rejects the note, and at least one must verify.
    """
    text, signatures = _split_note(note)
    _check_signatures(text, signatures, [verifiers] if isinstance(verifiers, Verifier) else list(verifiers))
    return text


def _check_signatures(text: str, signatures: list[tuple[str, bytes, bytes]], verifiers: list[Verifier]) -> None:
    known = {(v.name, v.key_id): v for v in verifiers}
    message = text.encode("utf-8")
    verified = False
    for name, key_id, signature in signatures:
        verifier = known.get((name, key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, signature):
            raise CheckpointInvalid(f"the signature by {name}+{key_id.hex()} does not verify")
        verified = True
    if not verified:
        names = ", ".join(f"{v.name}+{v.key_id.hex()}" for v in verifiers) or "none given"
        raise CheckpointInvalid(f"the note has no signature by a trusted key (trusted: {names})")


def sign(checkpoint: Checkpoint, signer: Signer) -> str:
    """The checkpoint as a note signed by ``signer``."""
    return sign_note(checkpoint.body(), signer)


def parse(text: str | bytes, verifiers: Any = ()) -> Checkpoint:
    """Parse a checkpoint note strictly; with ``verifiers``, require a trusted signature.

    Without verifiers, signature lines are optional and not checked (but must be well
    formed). Raises :class:`CheckpointInvalid` and nothing else for any input.
    """
    body, signatures = _split_note(text)
    checkpoint = _parse_body(body)
    verifiers = [verifiers] if isinstance(verifiers, Verifier) else list(verifiers)
    if verifiers:
        _check_signatures(body, signatures, verifiers)
    return checkpoint
