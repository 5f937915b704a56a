"""Stable names for the things every export describes, so the formats agree on them."""

from __future__ import annotations

import json
import os
from typing import Any

from blake3 import blake3

__all__ = ["PROV_NAMESPACE", "display_path", "file_key", "prov_attribute", "task_label"]

PROV_NAMESPACE = "https://lineage-ledger.invalid/ns#"  # the PROV exports' vocabulary name, never fetched
_SIMPLE = (str, int, float, bool)


def prov_attribute(value: Any) -> Any:
    """PROV attribute values are literals: nested values are kept as JSON text (in both
    PROV writers: the document built with ``prov``, and the streamed PROV-JSON)."""
    return value if isinstance(value, _SIMPLE) else json.dumps(value, sort_keys=True, ensure_ascii=False)


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
