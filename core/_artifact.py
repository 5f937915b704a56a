"""Artifacts: a file or a directory as a record names it, and the entries of a record's
``inputs`` and ``outputs`` (``{path: {"blake3": hex, "size": n}}``, in-toto style).

Split out of :mod:`._model`, which re-exports every name here.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Artifact", "DirectoryArtifact", "artifact_map", "is_alias", "is_normal_path", "recorded_path",
           "recorded_paths"]

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX64_MATCH = _HEX64.match


def _check_hex(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex digits, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file as it was seen: its path and the BLAKE3 digest and size of its bytes."""

    path: str
    blake3: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or "\x00" in self.path:
            raise ValueError(f"artifact paths must be strings without NUL, got {self.path!r}")
        _check_hex(self.blake3, f"digest of {self.path}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"size of {self.path} must be a non-negative integer")

    def entry(self) -> dict[str, Any]:
        return {"blake3": self.blake3, "size": self.size}

    @property
    def is_dir(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class DirectoryArtifact(Artifact):
    """A directory as it was seen: ``blake3`` is the digest of its manifest (``_manifest``),
    ``size`` the bytes of its files. Its record entry says ``"type": "dir"``."""

    manifest: Any = field(default=None, compare=False, repr=False)  # a _manifest.Manifest

    def entry(self) -> dict[str, Any]:
        return {"blake3": self.blake3, "size": self.size, "type": "dir"}

    @property
    def is_dir(self) -> bool:
        return True


# -- paths ------------------------------------------------------------------------------------
# A record names each file by its normal absolute path, as `normalize_path` (the CLI, the
# plugins, the look-ups) makes it: a new Record normalises what it is given; a stored record
# with a path that is relative or has a "." or ".." component, an empty one or a trailing
# slash (from a writer that did not go through Record) is not read: each reader's decode
# refuses it, so it is reported as a failing record, never followed.
def recorded_path(path: Any) -> Any:
    """The path a new record names for ``path``: absolute against the working directory,
    ``.``, ``..``, repeated and trailing slashes removed without looking at the disk
    (``os.path.abspath``, as ``normalize_path``). Anything but a non-empty string without
    NUL is handed back for :func:`artifact_map` to refuse."""
    if type(path) is str and path[:1] == "/" and "//" not in path and "/." not in path and path[-1:] != "/":
        return path  # the common case: already normal
    if not isinstance(path, str) or "\x00" in path or not path:
        return path  # "" (a variable that was not set) is no path: not the working directory
    normal = os.path.abspath(path)
    # abspath keeps exactly two leading slashes (POSIX leaves them to the system); Linux reads
    # them as one, and every look-up asks for the real path: "//w/a" would be found by none.
    return normal[1:] if normal[:2] == "//" else normal


def is_normal_path(path: str) -> bool:
    """True for an absolute path without a ``.``, ``..`` or empty component (``/a//b``) or
    a trailing slash: what :func:`recorded_path` returns; and for a relative one without
    them, as an earlier release stored it. (``//a``, which POSIX lets mean
    something else than ``/a``, is still read: ``os.path.abspath`` keeps it, and a capture
    given ``//a`` stored it as the alias of its real path; a new Record makes it ``/a``.)"""
    if path[:1] != "/":
        # A relative name an earlier release's Record stored as it was given ("raw.csv"):
        # read as it stands, never resolved (no look-up asks for it), so that its ledgers
        # still read and verify. New records never hold one: Record makes paths absolute.
        return path != "" and path[-1:] != "/" and not {"", ".", ".."} & set(path.split("/"))
    return "/." not in path and "//" not in path and path[-1:] != "/" or posixpath.normpath(path) == path


def _not_normal(what: str, path: str) -> ValueError:
    return ValueError(f"{what}: the path {path!r} is not normal (relative, a '.', '..' or empty component, or a "
                      "trailing slash); records name files by their normal absolute path")


def recorded_paths(value: Mapping[str, Any] | Sequence[Artifact], what: str) -> Any:
    """``value`` (a record's inputs or outputs, as given to :class:`Record`) with every path
    and ``alias_of`` target made what :func:`recorded_path` makes it; ``value`` itself when
    nothing changes. Two spellings of one file (``b.txt`` and ``x/../b.txt``) in a mapping
    become one entry, or a ``ValueError`` where their entries differ; in a list of artifacts
    the later one is kept, as for one path given twice there."""
    if type(value) is not dict and not isinstance(value, Mapping):
        return {recorded_path(a.path): a.entry() for a in value}
    if all(recorded_path(path) == path for path in value) and \
            not any(isinstance(entry, Mapping) and "alias_of" in entry for entry in value.values()):
        return value
    result: dict[Any, Any] = {}
    for path, entry in value.items():
        normal = recorded_path(path)
        if isinstance(entry, Mapping) and "alias_of" in entry:
            entry = {**entry, "alias_of": recorded_path(entry["alias_of"])}
        if normal in result and _plain(result[normal]) != _plain(entry):
            raise ValueError(f"{what}: {path!r} is {normal!r}, named already with another digest or kind")
        result.setdefault(normal, entry)
    return result


def _all_normal(paths: Mapping[Any, Any]) -> bool:
    """True when every key is a string without NUL and a normal absolute path; False when
    one may not be (each is then checked on its own: a "/." may be a hidden file's name).
    A few scans of the paths joined by NUL: checking each path apart cost a quarter of
    :func:`artifact_map`."""
    try:
        joined = "\x00".join(paths)
    except TypeError:
        return False
    separators = len(paths) - 1
    return joined[:1] == "/" and "/." not in joined and "//" not in joined and "/\x00" not in joined \
        and joined[-1:] != "/" and joined.count("\x00") == separators and joined.count("\x00/") == separators


def _plain(entry: Any) -> Any:
    return entry.entry() if isinstance(entry, Artifact) else dict(entry) if isinstance(entry, Mapping) else entry


# An entry is {"blake3", "size"} (a file, as records always had it), with "type": "dir" for a
# directory, and "alias_of": PATH where the path is how a task named a file whose real path
# (every symbolic link resolved) is the entry PATH of the same map.
_ENTRY_KEYS = frozenset({"blake3", "size"})
_OPTIONAL_KEYS = frozenset({"type", "alias_of"})


def artifact_map(value: Mapping[str, Any] | Sequence[Artifact], what: str = "artifacts") -> dict[str, dict[str, Any]]:
    """Normalise inputs/outputs to ``{path: {"blake3": hex, "size": n}}`` (in-toto style);
    a directory's entry adds ``"type": "dir"``, a path as given that is the alias of a real
    path adds ``"alias_of": real path``."""
    if type(value) is not dict and not isinstance(value, Mapping):  # the ABC's check costs 0.5 us
        return {a.path: a.entry() for a in value}
    result: dict[str, dict[str, Any]] = {}
    aliases = False
    checked = _all_normal(value)  # the common case, for the whole map at once
    for path, entry in value.items():
        if not checked:
            if not isinstance(path, str) or "\x00" in path:
                raise ValueError(f"{what}: paths must be strings without NUL, got {path!r}")
            if not is_normal_path(path):
                raise _not_normal(what, path)
        if type(entry) is dict and entry.keys() == _ENTRY_KEYS:
            # A file's entry as records and JSON hold it: the checks below, without the rest.
            digest, size = entry["blake3"], entry["size"]
            if type(digest) is not str or not _HEX64_MATCH(digest):
                _check_hex(digest, f"digest of {path}")
            if type(size) is not int or size < 0:
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise ValueError(f"size of {path} must be a non-negative integer")
            result[path] = {"blake3": digest, "size": size}
            continue
        if isinstance(entry, Artifact):
            result[path] = entry.entry()
            continue
        if not isinstance(entry, Mapping) or not (
                entry.keys() == _ENTRY_KEYS or _ENTRY_KEYS <= set(entry) <= _ENTRY_KEYS | _OPTIONAL_KEYS):
            raise ValueError(f"{what}[{path!r}] must be {{'blake3': hex, 'size': n}}")
        digest, size = entry["blake3"], entry["size"]
        # Artifact's own checks, inline: building one per entry was most of reading a record.
        _check_hex(digest, f"digest of {path}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:  # not True (== 1)
            raise ValueError(f"size of {path} must be a non-negative integer")
        normal = {"blake3": digest, "size": size}
        if "type" in entry:
            if entry["type"] != "dir":
                raise ValueError(f"{what}[{path!r}]: type must be 'dir' (a file has none), got {entry['type']!r}")
            normal["type"] = "dir"
        if "alias_of" in entry:
            target = entry["alias_of"]
            if not isinstance(target, str) or target == path or "\x00" in target:
                raise ValueError(f"{what}[{path!r}]: alias_of must name another path")
            normal["alias_of"] = target
            aliases = True
        result[path] = normal
    for path, entry in result.items() if aliases else ():
        target = entry.get("alias_of")
        if target is not None and (target not in result or "alias_of" in result[target]):
            raise ValueError(f"{what}[{path!r}]: alias_of {target!r} is not a real path of the same record")
    return result


def is_alias(entry: Mapping[str, Any]) -> bool:
    """True for the entry of a path as given that repeats the entry of its real path."""
    return "alias_of" in entry
