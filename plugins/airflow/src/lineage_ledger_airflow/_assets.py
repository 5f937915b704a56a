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
from lineage_ledger._environment import not_utf8 as not_utf8  # the core's test, for callers of this module

log = logging.getLogger("lineage_ledger.airflow")
_said: set[str] = set()
# A forked task process says it again, in its own log (the scheduler may have said it first).
os.register_at_fork(after_in_child=_said.clear)


def local_path(uri: str) -> str | None:
    """The absolute path a ``file://`` URI names, or None for any other URI; its name may be
    one no record can hold (a byte that is not UTF-8, percent-encoded: ``%FF``).

    ``file:///data/x`` and ``file://localhost/data/x`` name ``/data/x``; a URI naming another
    host is not a local file and is left alone. ``file:data/x`` names ``/data/x``, as Airflow's
    Asset reads it, never a path under some process's working directory.
    """
    if not isinstance(uri, str):
        return None
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        return None
    # Bytes that are not UTF-8 stay the bytes they were (U+DC80..U+DCFF, as os.fsdecode gives
    # them), never U+FFFD, which named another file: a byte of the name was lost.
    path = unquote(parts.path, errors="surrogateescape")
    if not path or "\x00" in path:
        return None
    return os.path.abspath(path if path.startswith("/") else "/" + path)



def shown(path: str) -> str:
    """``path`` with each byte that is not UTF-8 written ``\\xNN``, as records write them."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def path_of(uri: str) -> str | None:
    """The path a ``file://`` URI names as a record holds it (:func:`local_path`), or None for
    any other URI and for a name that is not UTF-8 (:func:`not_utf8_paths` lists those)."""
    path = local_path(uri)
    return None if path is None or not_utf8(path) else normalize_path(path)


def _not_recorded_because(uri: str) -> str | None:
    """Why a ``file`` URI names no file here, or None for one that does (or another scheme)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        return (f"Airflow reads {parts.netloc!r} as the name of a host (file://HOST/PATH), so it names "
                f"{unquote(parts.path) or '/'} on that machine, not a file here; a relative path has no file:// "
                "URI: give the absolute one, file:///...")
    path = local_path(uri)
    if path is None:
        return "it names no path"
    if not_utf8(path):
        return (f"it names {shown(path)}, whose name is not valid UTF-8 text, and a record names files by their "
                "paths, as text: rename it to record it")
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


def file_uri(path: str | bytes | os.PathLike[Any]) -> str:
    """The ``file://`` URI of a path, made absolute (Assets compare by URI); :func:`local_path`
    gives the path back. A byte of the name that is not UTF-8 is percent-encoded (``%FF``):
    an Asset's URI is text that Airflow keeps in its database."""
    text = os.path.abspath(os.fsdecode(path)).translate(_ESCAPED)
    if not_utf8(text):
        text = "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
    return "file://" + text


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


def not_utf8_paths(assets: Iterable[Any] | None) -> list[str]:
    """Local paths of the ``file://`` Assets among ``assets`` whose names are not UTF-8, which
    no record can name (:func:`file_paths` leaves them out, and says so once)."""
    paths: dict[str, None] = {}
    for asset in assets or ():
        uri = getattr(asset, "uri", None)
        path = local_path(uri) if isinstance(uri, str) else None
        if path is not None and not_utf8(path):
            paths[path] = None
    return list(paths)
