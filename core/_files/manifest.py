"""Directories as artifacts: a manifest of their entries, and one digest over it.

A directory's digest is the BLAKE3 of its **manifest**, the canonical JSON (the record
encoding, ``_canonical``) of ``{"directory": 1, "entries": [...]}``, one entry per thing
below the directory, sorted by relative path (``/``-separated, compared by code point):

* ``[path, "file", blake3, size]`` a regular file and the digest of its bytes;
* ``[path, "link", target]`` a symbolic link, not followed: its target text;
* ``[path, "dir"]`` a subdirectory (so that an empty one counts as well).

Any change of a byte, a name, a link target or an entry's type changes the manifest and
so the digest, and two manifests name the files that differ (:meth:`Manifest.diff`).
``docs/directories.md`` says why this shape (DVC's ``.dir`` files, git trees, Nix's NAR).

A ledger keeps each distinct manifest once, in a **manifest record** (:func:`manifest_record`):
a record of engine ``lineage-ledger`` whose ``run_id`` is ``manifest:<digest>`` and whose
``extra["manifest"]`` is the manifest. Its bytes depend on the manifest alone, so the same
directory gives the same record id, and the ledger keeps it once however many tasks name
the directory. It travels through the spool with the task record that needs it (one
journal write), and every back-end stores it unchanged.
"""

from __future__ import annotations

import errno
import os
import stat as stat_module
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from blake3 import blake3

from .._canonical import canonical_bytes
from .._errors import ArtifactError, describe_os_error

if TYPE_CHECKING:
    from .._model import Record
    from .hashing import Hasher

__all__ = [
    "MANIFEST_ENGINE",
    "MANIFEST_RUN_PREFIX",
    "Changes",
    "Manifest",
    "is_manifest_record",
    "manifest_record",
    "scan_directory",
]

MANIFEST_VERSION = 1
MANIFEST_ENGINE = "lineage-ledger"
MANIFEST_RUN_PREFIX = "manifest:"
# Every manifest record carries this time, so its bytes depend on the manifest alone.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SKIPPED = ".lineage"  # the ledger's own state: changes while being walked, not workflow data
_NAMES_SHOWN = 10  # per kind of change, in messages (JSON has them all)


class Changes(NamedTuple):
    """What differs between two manifests, by relative path."""

    changed: list[str]  # a file's bytes, a link's target, or an entry's type
    appeared: list[str]
    disappeared: list[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.appeared or self.disappeared)

    def describe(self, shown: int = _NAMES_SHOWN) -> str:
        parts = []
        for label, names in (("changed", self.changed), ("appeared", self.appeared),
                             ("disappeared", self.disappeared)):
            if names:
                more = f" and {len(names) - shown} more" if len(names) > shown else ""
                parts.append(f"{label}: {', '.join(names[:shown])}{more}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, list[str]]:
        return {"changed": self.changed, "appeared": self.appeared, "disappeared": self.disappeared}


@dataclass(frozen=True, slots=True)
class Manifest:
    """A directory's entries, sorted by relative path (see the module's docstring)."""

    entries: tuple[tuple[Any, ...], ...]
    digest: str = field(default="", compare=False)  # computed from the entries when not given

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", blake3(self.encode()).hexdigest())

    def encode(self) -> bytes:
        return canonical_bytes({"directory": MANIFEST_VERSION, "entries": self.entries}, check_keys=False)

    @property
    def size(self) -> int:
        """Bytes in the directory's files (what a record's ``size`` says of a directory)."""
        return sum(e[3] for e in self.entries if e[1] == "file")

    def to_json(self) -> dict[str, Any]:
        return {"directory": MANIFEST_VERSION, "entries": [list(e) for e in self.entries]}

    @classmethod
    def from_json(cls, value: Any) -> Manifest:
        """The manifest a record carries; ``ValueError`` if it is not one."""
        if not isinstance(value, Mapping) or set(value) != {"directory", "entries"} \
                or value["directory"] != MANIFEST_VERSION or not isinstance(value["entries"], list):
            raise ValueError("not a version-1 directory manifest")
        entries = []
        for raw in value["entries"]:
            if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[0], str):
                raise ValueError(f"not a manifest entry: {raw!r}")
            kind = raw[1]
            ok = ((kind == "file" and len(raw) == 4 and isinstance(raw[2], str) and type(raw[3]) is int)
                  or (kind == "link" and len(raw) == 3 and isinstance(raw[2], str))
                  or (kind == "dir" and len(raw) == 2))
            if not ok:
                raise ValueError(f"not a manifest entry: {raw!r}")
            entries.append(tuple(raw))
        paths = [e[0] for e in entries]
        if paths != sorted(set(paths)):
            raise ValueError("manifest entries are not sorted by path, or repeat one")
        return cls(tuple(entries))

    def lookup(self, relative: str) -> tuple[Any, ...] | None:
        """The entry at ``relative`` (a ``/``-separated path below the directory)."""
        import bisect

        index = bisect.bisect_left(self.entries, (relative,))
        if index < len(self.entries) and self.entries[index][0] == relative:
            return self.entries[index]
        return None

    def below(self, directory: str) -> Manifest:
        """The manifest of the subdirectory ``directory`` (a relative path), from this one."""
        prefix = directory + "/"
        return Manifest(tuple((e[0][len(prefix):], *e[1:]) for e in self.entries if e[0].startswith(prefix)))

    def diff(self, now: Manifest) -> Changes:
        """How ``now`` differs from this (the recorded) manifest."""
        old = {e[0]: e for e in self.entries}
        new = {e[0]: e for e in now.entries}
        changed = [p for p, e in new.items() if p in old and old[p][1:3] != e[1:3]]
        appeared = [p for p in new if p not in old]
        disappeared = [p for p in old if p not in new]
        return Changes(sorted(changed), sorted(appeared), sorted(disappeared))


def manifest_record(manifest: Manifest) -> Record:
    """The record that keeps ``manifest`` in the ledger (same manifest, same record id)."""
    from .._model import Record

    digest = manifest.digest
    return Record(
        engine=MANIFEST_ENGINE, run_id=MANIFEST_RUN_PREFIX + digest, task_id=digest,
        task_name="directory manifest", status="succeeded", started=_EPOCH, ended=_EPOCH,
        extra={"manifest": manifest.to_json()},
    )


def is_manifest_record(record: Record) -> bool:
    return record.engine == MANIFEST_ENGINE and record.run_id.startswith(MANIFEST_RUN_PREFIX)


def _text(path: str, value: str | bytes) -> str:
    text = os.fsdecode(value) if isinstance(value, bytes) else value
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ArtifactError(shown, "the name is not valid UTF-8; rename it to record it") from None
    return text


def scan_directory(root: str, hasher: Hasher) -> Manifest:
    """The manifest of the directory ``root`` (an absolute, normal path) as it is now.

    Links are recorded, never followed (so no loop can be entered). An entry that cannot
    be read, or a special file (socket, FIFO, device), raises :class:`ArtifactError`
    naming that entry: a digest that silently left it out would vouch for less than the
    directory.
    """
    entries: list[tuple[Any, ...]] = []
    files: list[tuple[str, str]] = []  # (relative, absolute)
    for relative, absolute, kind in _entries(root):
        if kind == "dir":
            entries.append((relative, "dir"))
        elif kind == "link":
            try:
                target = os.readlink(absolute)
            except OSError as err:
                raise ArtifactError(absolute, err.strerror or str(err)) from err
            entries.append((relative, "link", _text(absolute, target)))
        else:
            files.append((relative, absolute))
    artifacts = hasher.hash_many([absolute for _, absolute in files]) if files else []
    for (relative, _), artifact in zip(files, artifacts, strict=True):
        entries.append((relative, "file", artifact.blake3, artifact.size))
    entries.sort(key=_first)
    manifest = Manifest(tuple(entries))
    remember(manifest)
    return manifest


def _first(entry: tuple[Any, ...]) -> str:
    return entry[0]


def _entries(root: str) -> Iterator[tuple[str, str, str]]:
    """(relative path, absolute path, "dir" | "link" | "file") below ``root``."""
    stack = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            with os.scandir(directory) as scan:
                found = list(scan)
        except OSError as err:
            raise ArtifactError(directory, _reason(err)) from err
        for entry in found:
            name = _text(entry.path, entry.name)
            relative = prefix + name
            if entry.is_symlink():
                yield relative, entry.path, "link"
            elif entry.is_dir(follow_symlinks=False):
                if name == _SKIPPED and not prefix:
                    continue
                yield relative, entry.path, "dir"
                stack.append((relative + "/", entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield relative, entry.path, "file"
            else:
                # Named with the directory it makes unrecordable (the error a check of that
                # directory reports), and never opened: a FIFO would block the reader.
                raise ArtifactError(root, f"{relative} inside it is {special_kind(entry.path)}: a directory "
                                    "holding a socket, FIFO or device cannot be recorded")


def _reason(err: OSError) -> str:
    return describe_os_error(err)


def special_kind(path: str, mode: int | None = None) -> str:
    """What a thing that is neither a regular file, a directory nor a link is, in words
    (``mode``: its ``st_mode``, from ``lstat`` when not given). Never opens it."""
    if mode is None:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return "not a regular file"
    for test, words in ((stat_module.S_ISFIFO, "a FIFO (named pipe)"), (stat_module.S_ISSOCK, "a socket"),
                        (stat_module.S_ISCHR, "a character device"), (stat_module.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "not a regular file"


# Manifests this process computed lately, by digest: a plugin that hashed a directory
# itself hands the capture only its digest, and the capture needs the manifest to record.
_RECENT: OrderedDict[str, Manifest] = OrderedDict()
_RECENT_LOCK = threading.Lock()
_RECENT_MAX = 64


def remember(manifest: Manifest) -> None:
    digest = manifest.digest
    with _RECENT_LOCK:
        _RECENT[digest] = manifest
        _RECENT.move_to_end(digest)
        while len(_RECENT) > _RECENT_MAX:
            _RECENT.popitem(last=False)


def recall(digest: str) -> Manifest | None:
    with _RECENT_LOCK:
        return _RECENT.get(digest)


def walk_tree(root: str, *, is_artifact: Callable[[str], bool] | None = None,
              on_skip: Callable[[str, str], None] | None = None, plain: set[str] | None = None,
              skip_dir: Callable[[str], str | None] | None = None) -> Iterator[str]:
    """Regular files below ``root``, sorted, for commands given a tree (``hash``,
    ``verify-lineage``): symlinks to files are followed; links to directories, dangling
    links and special files are passed over, except those ``is_artifact`` says a record
    names (a recorded output replaced by a dangling link or a FIFO is yielded, for its
    check to say so). A special file (FIFO, socket, device), or a link to one, that is
    passed over is reported to ``on_skip`` with what it is: a check of the tree must not
    pass it over in silence. None is ever opened. A subdirectory that ``is_artifact``
    says is a recorded directory is yielded itself, not descended into.

    An entry that cannot be read (a symbolic link loop, a directory without permission)
    is reported to ``on_skip(path, reason)`` and skipped; the walk goes on. The ledger's
    own ``.lineage`` directories are skipped. ``plain`` is given the files the directory's
    listing said are regular files, not symbolic links (no system call more: the listing's
    file types), which a look-up then need not ``lstat`` again (see ``resolving_keeps``).
    ``skip_dir``: a subdirectory for which it gives a reason is not walked; the reason goes
    to ``on_skip`` (an engine's own state folder, for ``verify-lineage``).
    """
    def skip(path: str, err: OSError) -> None:
        if on_skip is None:
            raise ArtifactError(path, _reason(err)) from err
        on_skip(path, _reason(err))

    def special(path: str, mode: int | None, link: bool) -> None:
        # Not a file, and no record names it (none can): said, not checked, never opened.
        if on_skip is not None:
            kind = special_kind(path, mode)
            specials.append((path, f"a symbolic link to {kind}, not a file" if link else f"{kind}, not a file"))

    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name, reverse=True)
        except OSError as err:
            skip(directory, err)
            continue
        files = []
        specials: list[tuple[str, str]] = []  # said in name order, as the files are yielded
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name == _SKIPPED:
                    continue
                reason = skip_dir(entry.path) if skip_dir is not None else None
                if reason is not None:
                    if on_skip is not None:
                        specials.append((entry.path, reason))  # said in name order, with the others
                    continue
                if is_artifact is not None and is_artifact(entry.path):
                    files.append(entry.path)
                else:
                    stack.append(entry.path)
                continue
            try:
                mode = os.stat(entry.path).st_mode if entry.is_symlink() else None
            except OSError as err:
                if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                    skip(entry.path, err)  # a loop, or a target it may not look at
                elif is_artifact is not None and is_artifact(entry.path):
                    files.append(entry.path)  # a recorded file, now a dangling link: checked
                continue  # a dangling link: not a file
            if mode is not None:
                if stat_module.S_ISREG(mode):
                    files.append(entry.path)
                elif is_artifact is not None and is_artifact(entry.path):
                    files.append(entry.path)  # a link a record names, to a directory or a FIFO
                elif not stat_module.S_ISDIR(mode):
                    special(entry.path, mode, link=True)  # (links to directories are not followed)
            elif entry.is_file(follow_symlinks=False):
                files.append(entry.path)
                if plain is not None:
                    plain.add(entry.path)
            elif is_artifact is not None and is_artifact(entry.path):
                files.append(entry.path)  # a recorded file, now a FIFO, a socket or a device
            else:
                special(entry.path, None, link=False)
        files.reverse()
        for path, reason in reversed(specials):  # (collected only where on_skip is given)
            assert on_skip is not None
            on_skip(path, reason)
        yield from files
