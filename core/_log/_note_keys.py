"""Signed-note keys: ed25519 key pairs in the text forms of Go's ``golang.org/x/mod/sumdb/note``.

A key's id is ``SHA-256(name || "\\n" || 0x01 || public key)[:4]``; its texts are
``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`` (the signer) and
``<name>+<hex id>+<base64(0x01 || public key)>`` (the verifier), so Go tools read ours and we
read theirs. Malformed key text fails with :class:`ConfigError`, never showing a private key.

``cryptography`` is imported only when a key is used: parsing an unsigned checkpoint, or
one whose signatures are not checked, must not need it. The base64 and name rules here are
also the ones :mod:`._signed_note` and :mod:`.checkpoint` parse by.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from typing import Any

from .._canonical import CONTROL as _CONTROL
from .._errors import ConfigError

__all__ = ["Signer", "Verifier", "generate_key", "parse_signer", "parse_verifier"]

_ALG_ED25519 = 1
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


def _no_byte_order_mark(text: str) -> None:
    """A key file an editor saved as "UTF-8 with BOM" read as a key named with U+FEFF, whose id
    then "does not match its name and key": say what is wrong instead (still refused, as Go's
    note package refuses it)."""
    if text.startswith("\ufeff"):
        raise ConfigError("the key starts with a byte-order mark (U+FEFF: an editor saved it as UTF-8 "
                          "with BOM); save it without one")


def parse_verifier(text: str) -> Verifier:
    """A verifier from its key text ``name+hex id+base64(0x01 || public key)``."""
    _no_byte_order_mark(text)
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
    _no_byte_order_mark(text)
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
