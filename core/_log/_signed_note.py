"""Signed notes, as C2SP ``signed-note`` and Go's ``golang.org/x/mod/sumdb/note`` write them.

A note is UTF-8 text ending in a newline, then a blank line and one signature line a key::

    — <key name> <base64(4-byte key id || 64-byte ed25519 signature)>

Splitting is strict and fails with :class:`CheckpointInvalid` only (the text a user keeps to
prove the ledger never rewrote its history is refused rather than guessed at). Checking follows
the spec: lines by unknown keys are ignored, a failing one by a known key rejects the note.
"""

from __future__ import annotations

from typing import Any

from .._errors import CheckpointInvalid
from ._note_keys import _CONTROL, Signer, Verifier, _b64, _b64decode, _valid_name

__all__ = ["MAX_NOTE_BYTES", "MAX_SIGNATURES", "open_note", "sign_note", "signed_by"]

#: Largest note accepted, in bytes of UTF-8 (a checkpoint with a few signatures is ~300).
MAX_NOTE_BYTES = 64 * 1024
#: Go's note.Open refuses more signature lines than this.
MAX_SIGNATURES = 100
_SIG_PREFIX = "\u2014 "  # em dash, space


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
    if "\r\n" in text:  # a git checkout with core.autocrlf (Windows): say so (tests/test_trust_attacks_notes.py)
        raise CheckpointInvalid("its lines end in CRLF, where a note's end in a line feed alone (a copy converted "
                                "for Windows: convert it back, e.g. with dos2unix, and verify again)")
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


def signed_by(note: str | bytes, verifiers: list[Verifier]) -> list[Verifier]:
    """The distinct keys among ``verifiers`` whose signature on ``note`` verifies (after
    :func:`parse` with them has refused any failing one). Distinct by the public key
    itself: one private key signs under any name it likes, and counts once (a quorum)."""
    text, signatures = _split_note(note)
    message = text.encode("utf-8")
    known = {(v.name, v.key_id): v for v in verifiers}
    found: dict[bytes, Verifier] = {}
    for name, key_id, signature in signatures:
        verifier = known.get((name, key_id))
        if verifier is not None and verifier.verify(message, signature):
            found.setdefault(verifier.public_key, verifier)
    return list(found.values())
