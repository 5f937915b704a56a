"""An independent verifier of lineage-ledger records, proofs and checkpoints.

Written in a clean room from docs/verification.md, the vectors in tests/vectors and the
CLI's output alone, to show that the page is precise enough: it imports nothing from
lineage_ledger. Every check raises `Invalid` on failure. Hashes are bytes; `hash_fn`
arguments default to BLAKE3 so that the RFC 9162 SHA-256 vectors can run through the
same code.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import math
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HashFn = Callable[[bytes], bytes]


class Invalid(Exception):
    """The input does not verify."""


def blake3_hash(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def sha256_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- 1. records -----------------------------------------------------------------------
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")  # ASCII: \d takes any digit
_ENTRY_KEYS = {"blake3", "size", "type", "alias_of"}
_TASK_TYPES = {"engine": str, "run_id": str, "task_id": str, "task_name": str,
               "parameters": dict, "environment": dict, "extra": dict, "inputs": dict,
               "outputs": dict}
_TASK_KEYS = {"v", "engine", "run_id", "task_id", "task_name", "status", "attempt", "started",
              "ended", "code_digest", "parameters", "environment", "extra", "inputs", "outputs"}


def _encode_string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        elif "\ud800" <= char <= "\udfff":
            raise Invalid("a lone surrogate in a string")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def canonical(value: Any) -> bytes:
    """The canonical bytes of a decoded JSON value (section 1's rules)."""
    return _encode(value).encode("utf-8")


def _encode(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid("NaN or an infinity")
        return repr(value)
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, list):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if isinstance(value, dict):
        members = (_encode_string(key) + ":" + _encode(value[key]) for key in sorted(value))
        return "{" + ",".join(members) + "}"
    raise Invalid(f"not a JSON value: {type(value).__name__}")


def _check_time(text: str) -> None:
    try:
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise Invalid(f"not a time: {text!r}") from None


def _check_entry(entry: Any, entries: dict[str, Any]) -> None:
    """`{"blake3": hex, "size": n}`, perhaps `"type": "dir"` or `"alias_of"` a path beside it."""
    if not isinstance(entry, dict) or not {"blake3", "size"} <= set(entry) <= _ENTRY_KEYS:
        raise Invalid("a file entry is not {blake3, size[, type, alias_of]}")
    if not re.fullmatch("[0-9a-f]{64}", str(entry["blake3"])) or type(entry["size"]) is not int:
        raise Invalid("a file entry's digest or size")
    if entry["size"] < 0 or entry.get("type", "dir") != "dir":
        raise Invalid("a file entry's size or type")
    if "alias_of" in entry:
        named = entries.get(entry["alias_of"]) if isinstance(entry["alias_of"], str) else None
        if not isinstance(named, dict) or named.get("blake3") != entry["blake3"]:
            raise Invalid("an alias names no entry with its digest")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise Invalid("a key appears twice in an object")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise Invalid(f"{name} is not JSON")


def check_record(data: bytes, record_id: str | None = None) -> dict[str, Any]:
    """Check that `data` is a canonical record (hashing to `record_id` if given); return it."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys,
                           parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as error:
        raise Invalid(f"not JSON in UTF-8: {error}") from None
    if canonical(value) != data:
        raise Invalid("the bytes are not canonical")
    if record_id is not None and blake3.blake3(data).hexdigest() != record_id:
        raise Invalid("the bytes do not hash to the record id")
    if not isinstance(value, dict) or set(value) != _TASK_KEYS or repr(value["v"]) != "1":
        raise Invalid("not a version 1 task record")
    if value["status"] not in ("succeeded", "failed", "cached"):
        raise Invalid("bad status")
    if type(value["attempt"]) is not int or value["attempt"] < 1:
        raise Invalid("bad attempt")
    for key, kind in _TASK_TYPES.items():
        if not isinstance(value[key], kind):
            raise Invalid(f"{key} is not a {kind.__name__}")
    if value["code_digest"] is not None and not isinstance(value["code_digest"], str):
        raise Invalid("code_digest is neither a string nor null")
    for entries in (value["inputs"], value["outputs"]):
        for path, entry in entries.items():
            parts = path.split("/")[1:] if path.startswith("/") else path.split("/")
            if {"", ".", ".."} & set(parts) and not (path.startswith("/") and posixpath.normpath(path) == path):
                raise Invalid(f"the path {path!r} is not normal")
            _check_entry(entry, entries)
    for key in ("started", "ended"):
        if not isinstance(value[key], str) or not _TIME.fullmatch(value[key]):
            raise Invalid(f"{key} is not a time")
        _check_time(value[key][:19])
    manifest = value["extra"].get("manifest")
    if value["engine"] == "lineage-ledger" and manifest is not None:
        if blake3.blake3(canonical(manifest)).hexdigest() != value["task_id"]:
            raise Invalid("the manifest does not hash to its directory digest")
    return value


# -- 2-4. the tree and its proofs -----------------------------------------------------
def leaf_hash(data: bytes, hash_fn: HashFn = blake3_hash) -> bytes:
    """The leaf hash of leaf data (for a ledger: the 32 raw bytes of a record id)."""
    return hash_fn(b"\x00" + data)


def _node(left: bytes, right: bytes, hash_fn: HashFn) -> bytes:
    return hash_fn(b"\x01" + left + right)


def tree_root(leaves: list[bytes], hash_fn: HashFn = blake3_hash) -> bytes:
    """MTH of a list of leaf data, RFC 9162 2.1.1."""
    if not leaves:
        return hash_fn(b"")
    if len(leaves) == 1:
        return leaf_hash(leaves[0], hash_fn)
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return _node(tree_root(leaves[:split], hash_fn), tree_root(leaves[split:], hash_fn), hash_fn)


def _check_hashes(proof: list[bytes]) -> None:
    if any(len(item) != 32 for item in proof):
        raise Invalid("a proof hash is not 32 bytes")


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes,
                     hash_fn: HashFn = blake3_hash) -> None:
    """RFC 9162 2.1.3.2: `leaf` (a leaf hash) is leaf `index` of the tree (size, root)."""
    _check_hashes(proof)
    if not 0 <= index < size:
        raise Invalid("index out of range")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise Invalid("proof too long")
        if fn % 2 == 1 or fn == sn:
            r = _node(p, r, hash_fn)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p, hash_fn)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise Invalid("inclusion proof does not verify")


def verify_consistency(old_size: int, old_root: bytes, new_size: int, new_root: bytes,
                       proof: list[bytes], hash_fn: HashFn = blake3_hash) -> None:
    """RFC 9162 2.1.4.2, with section 4's rule for the empty old tree."""
    _check_hashes(proof)
    if old_size > new_size or old_size < 0:
        raise Invalid("old size larger than new size")
    if old_size == 0 or old_size == new_size:
        expected = hash_fn(b"") if old_size == 0 else new_root
        if proof or old_root != expected:
            raise Invalid("consistency proof does not verify")
        return
    if old_size & (old_size - 1) == 0:
        proof = [old_root, *proof]
    if not proof:
        raise Invalid("empty consistency proof")
    fn, sn = old_size - 1, new_size - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise Invalid("proof too long")
        if fn % 2 == 1 or fn == sn:
            fr, sr = _node(c, fr, hash_fn), _node(c, sr, hash_fn)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c, hash_fn)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise Invalid("consistency proof does not verify")


# -- 5. checkpoints and keys ----------------------------------------------------------
_DASH = "\u2014 "
_NOTE_TIME = re.compile(r"time ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{6})?Z")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time: str | None
    body: bytes
    signatures: tuple[tuple[str, bytes, bytes], ...]  # (key name, key id, signature)


def _b64(text: str) -> bytes:
    """Decode the one canonical, padded standard base64 spelling of some bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"not base64: {text!r}") from None
    if base64.b64encode(raw).decode() != text:
        raise Invalid(f"not canonical base64: {text!r}")
    return raw


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4]


def parse_public_key(text: str) -> tuple[str, bytes, bytes]:
    """`<name>+<8 hex>+<base64(0x01 || key)>` as `keygen` writes KEYFILE.pub."""
    name, _, rest = text.strip().partition("+")
    hex_id, _, encoded = rest.partition("+")
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id) or not _valid_name(name):
        raise Invalid("not a public key")
    raw = _b64(encoded)
    if len(raw) != 33 or raw[0] != 1 or key_id(name, raw[1:]).hex() != hex_id:
        raise Invalid("not an Ed25519 public key, or its id does not match")
    return name, bytes.fromhex(hex_id), raw[1:]


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(char.isspace() for char in name)


def parse_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its body and its (key name, key id, signature) lines."""
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("not UTF-8") from None
    if len(note) > 65536 or not text.endswith("\n"):
        raise Invalid("too long, or no final newline")
    if any((char < " " and char != "\n") or char == "\x7f" for char in text):
        raise Invalid("a control character")
    body, signed, sig_text = text.rpartition("\n\n")
    body = (body + "\n") if signed else sig_text
    signatures = []
    for line in sig_text.splitlines() if signed else []:
        name, _, encoded = line.removeprefix(_DASH).partition(" ")
        raw = _b64(encoded) if line.startswith(_DASH) and _valid_name(name) else b""
        if len(raw) < 5:
            raise Invalid(f"bad signature line {line!r}")
        signatures.append((name, raw[:4], raw[4:]))
    if signed and not 1 <= len(signatures) <= 100:
        raise Invalid("a signed note holds 1 to 100 signatures")
    return body.encode(), signatures


def open_note(note: bytes, trusted_keys: list[str]) -> bytes:
    """The body of `note` if a key of `trusted_keys` (key file texts) signed it."""
    body, signatures = parse_note(note)
    keys = {(name, kid): key for name, kid, key in map(parse_public_key, trusted_keys)}
    verified = 0
    for name, kid, signature in signatures:
        if (name, kid) not in keys:
            continue  # a cosignature by a key we do not know
        try:
            Ed25519PublicKey.from_public_bytes(keys[name, kid]).verify(signature, body)
        except InvalidSignature:
            raise Invalid(f"the signature by {name} does not verify") from None
        verified += 1
    if not verified:
        raise Invalid("no signature by a trusted key")
    return body


def parse_checkpoint(note: bytes) -> Checkpoint:
    """Parse a (signed or unsigned) checkpoint note; signatures are not checked here."""
    body_bytes, signatures = parse_note(note)
    body = body_bytes.decode()
    lines = body.split("\n")[:-1]
    if len(lines) not in (3, 4) or "" in lines:
        raise Invalid("a checkpoint body is origin, size, root and at most a time line")
    origin, size_text, root_text = lines[:3]
    if not re.fullmatch(r"0|[1-9][0-9]*", size_text) or int(size_text) >= 1 << 64:
        raise Invalid("bad size line")
    root = _b64(root_text)
    if len(root) != 32:
        raise Invalid("the root is not 32 bytes")
    time = None
    if len(lines) == 4:
        match = _NOTE_TIME.fullmatch(lines[3])
        if not match or match.group(2) == ".000000":
            raise Invalid("bad time line")
        _check_time(match.group(1))
        time = lines[3][5:]
    return Checkpoint(origin, int(size_text), root, time, body_bytes, tuple(signatures))


def verify_checkpoint(note: bytes, trusted_keys: list[str]) -> Checkpoint:
    """Parse `note` and require a valid signature by one of `trusted_keys`."""
    open_note(note, trusted_keys)
    return parse_checkpoint(note)


# -- 6. a record against a checkpoint -------------------------------------------------
def verify_record(record: bytes, record_id: str, index: int, proof: list[bytes],
                  checkpoint: Checkpoint) -> dict[str, Any]:
    """Section 6: a canonical record, included at `index` in the checkpoint's tree."""
    value = check_record(record, record_id)
    leaf = leaf_hash(bytes.fromhex(record_id))
    verify_inclusion(index, checkpoint.size, leaf, proof, checkpoint.root)
    return value
