"""Stable names for the things every export describes, so the formats agree on them."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from blake3 import blake3

__all__ = ["PROV_NAMESPACE", "display_path", "extra_text", "file_key", "prov_attribute", "task_label",
           "xml_text"]

PROV_NAMESPACE = "https://lineage-ledger.invalid/ns#"  # the PROV exports' vocabulary name, never fetched
_SIMPLE = (str, int, float, bool)


def prov_attribute(value: Any) -> Any:
    """PROV attribute values are literals: nested values are kept as JSON text (in both
    PROV writers: the document built with ``prov``, and the streamed PROV-JSON)."""
    return value if isinstance(value, _SIMPLE) else json.dumps(value, sort_keys=True, ensure_ascii=False)



def extra_text(extra: Any) -> str:
    """A record's ``extra`` map (what an engine or plugin recorded beside the task: a command
    line and its exit status, an error, files not verified) as every export carries it: JSON
    text, keys sorted, exactly the record's (PROV ``ll:extra``, the crate's ``ledgerExtra``,
    OpenLineage's ``lineageLedger_run`` facet ``extra``). Text, not an object: openlineage-python
    drops every null inside a facet, and a PROV value is a literal."""
    return json.dumps(extra, sort_keys=True, ensure_ascii=False)


# What XML 1.0 cannot carry at all, escaped or not: C0 controls but tab, newline and carriage
# return, lone surrogates (a name that is not UTF-8; the ledger refuses those today), U+FFFE, U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def xml_text(text: str) -> str:
    """``text`` with each character XML cannot carry written ``\\xNN`` (``\\uNNNN`` past
    U+00FF): a PROV value (a label, a task or user name, a path) that ``prov``'s PROV-XML
    writer, and any XML reader, takes; the SVG picture shows names so too. Text without such
    a character is returned as it is. A name that held the four characters ``\\x01`` reads
    the same: the ids (a user's, a file's) and the record keep the exact text."""
    if text.isprintable():  # most text: no control character, surrogate or noncharacter (C speed)
        return text
    return _NOT_XML.sub(_shown, text) if _NOT_XML.search(text) else text


def file_key(path: str, digest: str) -> str:
    """An id for one version of one file: its content digest and a digest of its path (the
    same bytes at two paths are two entities; two versions of a path are two entities)."""
    return f"{digest}-{blake3(path.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def display_path(path: str, base: str | None = None) -> str:
    """``path`` relative to ``base`` (default: the working directory) when inside it."""
    base = base or os.getcwd()
    relative = os.path.relpath(path, base)
    return path if relative.startswith("..") else relative


def task_label(engine: str, task_name: str) -> str:
    return f"{engine}:{task_name}"
