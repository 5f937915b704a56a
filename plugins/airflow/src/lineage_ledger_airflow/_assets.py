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


#: The characters of a file name that a URI would read otherwise: '%' starts an escape (read
#: back unquoted, ``b%41.csv`` named ``bA.csv``), '#' a fragment and '?' a query, which
#: Airflow's Asset drops (``sample#1.csv`` named ``sample``: no record held the file, and a
#: strict check passed it). Only these are escaped: the URIs of other names stay as they were
#: (Assets compare by URI, and DAGs scheduled on them name them so).
_ESCAPED = str.maketrans({"%": "%25", "#": "%23", "?": "%3F"})


def file_uri(path: str | os.PathLike[str]) -> str:
    """The ``file://`` URI of a path, made absolute (Assets compare by URI); :func:`path_of`
    gives the path back."""
    return "file://" + normalize_path(os.fspath(path)).translate(_ESCAPED)


def file_paths(assets: Iterable[Any] | None) -> list[str]:
    """Local paths of the ``file://`` Assets among ``assets``; other kinds are skipped."""
    paths: dict[str, None] = {}
    for asset in assets or ():
        uri = getattr(asset, "uri", None)
        path = path_of(uri) if uri is not None else None
        if path is not None:
            paths[path] = None
    return list(paths)
