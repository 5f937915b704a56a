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

The parts live beside this module: the keys in :mod:`._note_keys`, their files in
:mod:`._key_files`, the signed-note format in :mod:`._signed_note`. Every name of theirs
that callers use is re-exported here, where they have always imported it from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .._errors import CheckpointInvalid
from ._key_files import load_signer, load_verifier, load_verifiers, write_keypair
from ._note_keys import (
    _CONTROL,
    Signer,
    Verifier,
    _b64,
    _b64decode,
    generate_key,
    parse_signer,
    parse_verifier,
)
from ._signed_note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    _check_signatures,
    _split_note,
    open_note,
    sign_note,
    signed_by,
)

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "Signer",
    "Verifier",
    "checkpoint_text",
    "generate_key",
    "load_signer",
    "load_verifier",
    "load_verifiers",
    "open_note",
    "parse",
    "parse_signer",
    "parse_verifier",
    "sign",
    "sign_note",
    "signed_by",
    "write_keypair",
]

_SIZE = re.compile(r"(?:0|[1-9][0-9]{0,19})\Z")
# ASCII digits: ``\d`` takes any Unicode digit, and ``int`` reads them (a time line in
# Arabic-Indic digits passed; tests/test_trust_attacks_notes.py).
_TIME = re.compile(r"time ([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{6}))?Z\Z")


def _format_time(moment: datetime) -> str:
    text = moment.replace(tzinfo=None, microsecond=0).isoformat()
    return f"{text}.{moment.microsecond:06d}Z" if moment.microsecond else text + "Z"


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


def sign(checkpoint: Checkpoint, signer: Signer) -> str:
    """The checkpoint as a note signed by ``signer``."""
    return sign_note(checkpoint.body(), signer)


def checkpoint_text(origin: str, size: int, root: bytes, time: datetime, signer: Signer | None) -> str:
    """The checkpoint note of a tree head (signed by ``signer`` where given), read back first as
    every reader will read it: a proof none accepts is none. An origin of 70,000 characters
    (``ll_meta``, set by whoever may write the ledger) made a note over 64 KiB, written with
    exit 0 by ``checkpoint`` and into an RO-Crate by ``export --key``
    (tests/test_trust_attacks_checkpoint_output.py). Raises ``ConfigError``, nothing written."""
    from .._errors import CheckpointInvalid, ConfigError
    from .._terminal import printable

    note = Checkpoint(origin, size, root, time)
    text = sign(note, signer) if signer else note.body()
    try:
        parse(text, [signer.verifier] if signer else [])
    except CheckpointInvalid as err:
        shown = printable(origin[:80]) + ("..." if len(origin) > 80 else "")
        raise ConfigError(f"the checkpoint of {size} records of the ledger {shown} would not be read back "
                          f"({err}); nothing was written") from None
    return text


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
