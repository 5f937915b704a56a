"""The ids of the PROV exports: qualified names that every PROV serialization accepts, from
which the ledger's own value (a record id, a file version, a user, host or engine name)
comes back by a simple rule (docs/exports.md, "Identifiers").

PROV-XML types ``prov:id`` and ``prov:ref`` as ``xsd:QName``: the local part is an NCName
(a letter or '_' first, then letters, digits, '.', '-', '_'; no ':' or '/'). PROV-N's and
Turtle's local names may not end with '.'. So:

* a task is ``task:r<record id>`` and a file version ``file:v<blake3>-<path digest>``: a
  letter in front of the hex, which may start with a digit;
* an agent is ``agent:user-NAME``, ``agent:host-NAME``, ``agent:engine-NAME``, where each
  UTF-8 byte of a character of NAME outside ``[A-Za-z0-9.-]`` (so '_' too) is written
  ``_HH`` (two upper-case hex digits), and so is a '.' that ends NAME. '_' is only ever an
  escape, so the name comes back exactly (:func:`agent_name`); only ASCII is left as it is,
  since the NCName rules for other letters differ between XML editions. The kind ends in
  '-', not '.', so that even an empty name (an engine may be "") ends in a character PROV-N
  accepts.
"""

from __future__ import annotations

import functools
import re

from ._names import file_key

__all__ = ["AGENT_KINDS", "PREFIXES", "agent_id", "agent_name", "file_id", "task_id"]

PREFIXES = {"task": "urn:lineage-ledger:record:", "file": "urn:lineage-ledger:file:",
            "agent": "urn:lineage-ledger:agent:", "tree": "urn:lineage-ledger:tree:"}
AGENT_KINDS = ("user", "host", "engine")

_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")
_LOCAL = re.compile(r"(?:[A-Za-z0-9.-]|_[0-9A-F]{2})*")


def task_id(record_id: str) -> str:
    """``task:r`` and the record's id."""
    return f"task:r{record_id}"


def file_id(path: str, digest: str) -> str:
    """``file:v``, the version's BLAKE3 and the digest of its path (:func:`._names.file_key`)."""
    return f"file:v{file_key(path, digest)}"


def _escaped(name: str) -> str:
    # surrogatepass: a name read from JSON may hold a lone surrogate; it escapes and comes back too.
    data = name.encode("utf-8", "surrogatepass")
    out = [chr(byte) if byte in _KEPT else f"_{byte:02X}" for byte in data]
    if out and out[-1] == ".":
        out[-1] = "_2E"
    return "".join(out)


@functools.lru_cache(maxsize=4096)  # a run has a few names, asked for by every task
def agent_id(kind: str, name: str) -> str:
    """``agent:KIND-NAME`` with NAME escaped (see the module's docstring)."""
    if kind not in AGENT_KINDS:
        raise ValueError(f"unknown agent kind {kind!r}")
    return f"agent:{kind}-{_escaped(name)}"


def agent_name(ident: str) -> tuple[str, str]:
    """(kind, name) of an agent id that :func:`agent_id` wrote; ValueError for anything else."""
    prefix, _, local = ident.partition(":")
    kind, dash, escaped = local.partition("-")
    if prefix != "agent" or not dash or kind not in AGENT_KINDS or not _LOCAL.fullmatch(escaped):
        raise ValueError(f"not an agent id of a lineage-ledger PROV export: {ident!r}")
    data = bytes.fromhex("".join(
        part.encode().hex() if index % 2 == 0 else part for index, part in enumerate(_ESCAPE.split(escaped))))
    name = data.decode("utf-8", "surrogatepass")
    if _escaped(name) != escaped:  # e.g. "_41" for "A": not how agent_id writes it, so not its id
        raise ValueError(f"not an agent id of a lineage-ledger PROV export: {ident!r}")
    return kind, name
