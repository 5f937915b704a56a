"""``file://`` Assets and the local paths they name.

Airflow 3 gives a ``file`` URI no relative meaning. Its Asset keeps ``file://data/x.csv`` as
it is: ``data`` is the host (RFC 8089; its OpenLineage conversion makes the namespace
``file://data``, and ``common.io``'s ``create_asset(path="data/x.csv")`` builds exactly that
URI). It turns ``file:data.csv`` into ``file:///data.csv``, the absolute ``/data.csv``
(``urlunsplit`` puts the path under the root). The plugin follows both rules, and says so in
the log, once per URI and process, where a user most likely meant a relative path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from lineage_ledger import normalize_path

log = logging.getLogger("lineage_ledger.airflow")
_said: set[str] = set()
# A forked task process says it again, in its own log (the scheduler may have said it first).
os.register_at_fork(after_in_child=_said.clear)


def path_of(uri: str) -> str | None:
    """The absolute path a ``file://`` URI names, or None for any other URI.

    ``file:///data/x`` and ``file://localhost/data/x`` name ``/data/x``; a URI naming another
    host is not a local file and is left alone. ``file:data/x`` names ``/data/x``, as Airflow's
    Asset reads it, never a path under some process's working directory.
    """
    if not isinstance(uri, str):
        return None
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        return None
    path = unquote(parts.path)
    if not path or "\x00" in path:
        return None
    return normalize_path(path if path.startswith("/") else "/" + path)


def _not_recorded_because(uri: str) -> str | None:
    """Why a ``file`` URI names no file here, or None for one that does (or another scheme)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        return (f"Airflow reads {parts.netloc!r} as the name of a host (file://HOST/PATH), so it names "
                f"{unquote(parts.path) or '/'} on that machine, not a file here; a relative path has no file:// "
                "URI: give the absolute one, file:///...")
    if path_of(uri) is None:
        return "it names no path"
    return None


def _say_once(uri: str, message: str) -> None:
    if uri not in _said:
        _said.add(uri)
        log.warning("lineage-ledger: %s", message)


def _relative_spelling(asset: Any, uri: str) -> None:
    """Say where the Asset's own spelling (kept as its default name) was a relative ``file:``
    URI that Airflow made absolute."""
    name = getattr(asset, "name", None)
    if not isinstance(name, str) or name == uri or not name.lower().startswith("file:"):
        return
    parts = urlsplit(name)
    if parts.scheme.lower() == "file" and not parts.netloc and parts.path and not parts.path.startswith("/"):
        _say_once(name, f"the file Asset {name!r} is recorded as {path_of(uri)}: Airflow reads a file: URI "
                        f"without '//' as a path under the root ({uri}), not one relative to any folder")


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
    """Local paths of the ``file://`` Assets among ``assets``; other kinds are skipped, and a
    ``file`` URI that names no file here is said once (a warning naming it and why)."""
    paths: dict[str, None] = {}
    for asset in assets or ():
        uri = getattr(asset, "uri", None)
        if not isinstance(uri, str):
            continue
        path = path_of(uri)
        if path is not None:
            paths[path] = None
            _relative_spelling(asset, uri)
        elif (why := _not_recorded_because(uri)) is not None:
            _say_once(uri, f"the file Asset {uri!r} is not recorded: {why}")
    return list(paths)
