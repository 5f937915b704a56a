"""``file://`` Assets and the local paths they name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from lineage_ledger import normalize_path


def path_of(uri: str) -> str | None:
    """The absolute path a ``file://`` URI names, or None for any other URI.

    ``file:///data/x`` and ``file://localhost/data/x`` name ``/data/x``; a URI naming another
    host is not a local file and is left alone.
    """
    if not isinstance(uri, str):
        return None
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        return None
    path = unquote(parts.path)
    if not path or "\x00" in path:
        return None
    return normalize_path(path)


def file_uri(path: str | os.PathLike[str]) -> str:
    """The ``file://`` URI of a path, made absolute (Assets compare by URI)."""
    return "file://" + normalize_path(os.fspath(path))


def file_paths(assets: Iterable[Any] | None) -> list[str]:
    """Local paths of the ``file://`` Assets among ``assets``; other kinds are skipped."""
    paths: dict[str, None] = {}
    for asset in assets or ():
        uri = getattr(asset, "uri", None)
        path = path_of(uri) if uri is not None else None
        if path is not None:
            paths[path] = None
    return list(paths)
