"""One artifact against the ledger: the check every verification and pre-run check makes.

:func:`check_artifact` compares a file or a directory on disk with the last record that
read or wrote it (or, for a file no record names, with the manifest of the recorded
directory it lies in) and says OK, MODIFIED, MISSING, UNRECORDED or UNREADABLE, with the
files inside a directory that differ. :mod:`._verify` builds the reports on it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import ArtifactError
from .._files.hash_ahead import HashAhead
from .._files.hashing import Hasher, hash_file
from .._files.manifest import Changes
from .._ledger.ledger import Ledger
from .._model import Artifact

__all__ = ["ArtifactCheck", "ArtifactStatus", "check_artifact"]


# The reason of a file found MODIFIED against a record still waiting in the spool (no
# record in the ledger names it yet): see prerun._against_spool.
WAITING = "its record waits in the spool"


class ArtifactStatus(str, enum.Enum):
    OK = "OK"
    MODIFIED = "MODIFIED"
    MISSING = "MISSING"
    UNRECORDED = "UNRECORDED"
    UNREADABLE = "UNREADABLE"  # there, but it cannot be hashed (permission denied, vanished...)


@dataclass(frozen=True)
class ArtifactCheck:
    path: str
    status: ArtifactStatus
    expected: str | None = None  # digest the ledger last saw
    actual: str | None = None  # digest on disk now
    record_id: str | None = None  # the record that last saw it
    role: str | None = None  # whether that record read ("in") or wrote ("out") it
    changes: Changes | None = None  # a directory: the files inside that differ
    within: tuple[str, str] | None = None  # a file no record names, inside a recorded directory: (dir, digest)
    reason: str | None = None  # UNREADABLE: why it could not be hashed; MODIFIED: a change of type

    def to_json(self) -> dict:
        data: dict[str, Any] = {
            "path": self.path, "status": self.status.value, "expected": self.expected,
            "actual": self.actual, "record": self.record_id, "role": self.role,
        }
        if self.changes is not None:
            data["changes"] = self.changes.to_json()
        if self.within is not None:
            data["within"] = self.within[0]
        if self.reason is not None:
            data["reason"] = self.reason
        return data


def check_artifact(ledger: Ledger, path: str, *, against: Literal["any", "producer"] = "any",
                   hasher: Hasher | None = None, containers: dict | None = None,
                   hashed: HashAhead | None = None) -> ArtifactCheck:
    """Compare a file or directory on disk with the last record that read or wrote it
    (always rehashes, unless a ``hasher`` with a stat cache is given for directories).

    ``against="producer"`` compares a produced file with its last producer only: a task
    that merely read an edited file (under ``warn``, or an unguarded operator) must not
    make the edit look recorded. Sources, which nobody produced, still compare with the
    last read. A directory that differs names the files inside that changed, appeared or
    disappeared; a file no record names but that lies in a recorded directory is compared
    with that directory's manifest (``containers``: what :meth:`Ledger.container_of` found
    for each directory so far, shared by the files of one tree). ``hashed``: files a child
    process hashed meanwhile (:mod:`.hash_ahead`), taken where it has the file's digest.
    """
    path = ledger.query_path(path)
    seen = ledger.last_seen(path, ("out",)) if against == "producer" else None
    if seen is None and against == "producer" and os.path.lexists(path):
        # A file a task wrote inside its directory output (a checkpoint's chunk) was produced
        # by that task, whoever read it since: a reader that recorded an edit of it (a run
        # without the check) must not make the edit look produced. Compared with the
        # directory's manifest where it lists the file; else with its last read, as a source.
        inside = _check_inside(ledger, path, True, containers)
        if inside is not None and inside.role == "out" and inside.status is not ArtifactStatus.UNRECORDED:
            return inside
    seen = seen or ledger.last_seen(path)
    if seen is None:
        exists = os.path.lexists(path)
        inside = _check_inside(ledger, path, exists, containers)
        if inside is not None:
            return inside
        if not exists:  # most likely a typo: say so as bad input, not as a failed check
            raise ArtifactError(path, "no such file, and no record in the ledger mentions it")
        return ArtifactCheck(path, ArtifactStatus.UNRECORDED, None, _hash(path, hasher, hashed).blake3)
    entry, role, recorded = seen
    try:
        actual = _hash(path, hasher, hashed)
    except ArtifactError:
        if os.path.lexists(path):
            raise  # there but unreadable (a dangling link, no permission): the caller says so
        # Asked only when hashing failed (an lstat a file saved for the files that are there).
        return ArtifactCheck(path, ArtifactStatus.MISSING, recorded["blake3"], None, entry.id, role)
    was_dir = recorded.get("type") == "dir"
    if actual.blake3 == recorded["blake3"] and actual.is_dir == was_dir:
        return _ok(path, recorded["blake3"], actual.blake3, entry.id, role)
    reason = None
    if was_dir != actual.is_dir:
        reason = ("it was recorded as a directory; a file is there now" if was_dir
                  else "it was recorded as a file; a directory is there now")
    return ArtifactCheck(path, ArtifactStatus.MODIFIED, recorded["blake3"], actual.blake3, entry.id, role,
                         changes=_changes(ledger, recorded, actual), reason=reason)


def _ok(path: str, expected: str, actual: str, record_id: str, role: str) -> ArtifactCheck:
    """``ArtifactCheck(path, ArtifactStatus.OK, expected, actual, record_id, role)``, the same
    object (every field, the others at their defaults), made without the frozen dataclass's
    ``__init__``, which sets each of its ten fields through ``object.__setattr__``: 3-4 us,
    a twentieth of checking a file of a directory of 10,000."""
    check = _new(ArtifactCheck)
    vars(check).update(path=path, status=ArtifactStatus.OK, expected=expected, actual=actual, record_id=record_id,
                       role=role, changes=None, within=None, reason=None)
    return check


_new = object.__new__


def _hash(path: str, hasher: Hasher | None, hashed: HashAhead | None = None) -> Artifact:
    if hashed is not None:
        artifact = hashed.take(path)
        if artifact is not None:
            return artifact
    return hasher.hash(path) if hasher is not None and os.path.isdir(path) else hash_file(path)


def _changes(ledger: Ledger, recorded, actual: Artifact) -> Changes | None:
    """What differs inside a directory (None where there is no manifest to compare)."""
    was_dir = recorded.get("type") == "dir"
    if not (was_dir and actual.is_dir):
        return None  # a file became a directory or the other way: _explain says so
    before = ledger.manifest(recorded["blake3"])
    return before.diff(actual.manifest) if before is not None else None  # type: ignore[attr-defined]


def _check_inside(ledger: Ledger, path: str, exists: bool, containers: dict | None) -> ArtifactCheck | None:
    """A file no record names, checked against the manifest of the recorded directory it
    lies in (None where it lies in none, or the manifest is not in the ledger)."""
    found = ledger.container_of(path, containers)
    if found is None:
        return None
    directory, entry, role, recorded = found
    manifest = ledger.manifest(recorded["blake3"])
    if manifest is None:
        return None
    within = (directory, recorded["blake3"])
    relative = os.path.relpath(path, directory).replace(os.sep, "/")
    listed = manifest.lookup(relative)
    # A subdirectory of the recorded one is compared as the part of its manifest below it.
    part = manifest.below(relative) if listed is not None and listed[1] == "dir" else None
    expected = part.digest if part is not None else listed[2] if listed is not None and listed[1] == "file" else None
    if not exists:
        if listed is None:
            raise ArtifactError(path, f"no such file, and the recorded directory {directory} held none")
        return ArtifactCheck(path, ArtifactStatus.MISSING, expected, None, entry.id, role, within=within)
    if listed is not None and listed[1] == "link":
        # The manifest keeps a link as its target text, not followed (the directory's own
        # check compares it so): the same here, not the hash of the file it leads to.
        try:
            target: str | None = os.readlink(path)
        except OSError:
            target = None  # not a link any more
        if target == listed[2]:
            return ArtifactCheck(path, ArtifactStatus.OK, None, None, entry.id, role, within=within)
        now = "not a link" if target is None else f"a link to {target!r}"
        return ArtifactCheck(path, ArtifactStatus.MODIFIED, None, None if target is not None else _digest_or_none(path),
                             entry.id, role, within=within,
                             reason=f"it was recorded as a link to {listed[2]!r}; it is {now} now")
    actual = hash_file(path)
    if listed is None:
        return ArtifactCheck(path, ArtifactStatus.UNRECORDED, None, actual.blake3, within=within)
    if expected == actual.blake3 and actual.is_dir == (part is not None):
        return ArtifactCheck(path, ArtifactStatus.OK, expected, actual.blake3, entry.id, role, within=within)
    changes = part.diff(actual.manifest) if part is not None and actual.is_dir else None  # type: ignore[attr-defined]
    return ArtifactCheck(path, ArtifactStatus.MODIFIED, expected, actual.blake3, entry.id, role,
                         changes=changes, within=within)


def _digest_or_none(path: str) -> str | None:
    try:
        return hash_file(path).blake3
    except ArtifactError:
        return None


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def _explain(check: ArtifactCheck) -> str:
    inside = f" (in the recorded directory {check.within[0]})" if check.within else ""
    if check.status is ArtifactStatus.MODIFIED and check.reason == WAITING:
        return (f"{check.path}: MODIFIED since a task wrote it, whose record waits in the spool, not shipped "
                f"yet (spool {_short(check.expected)}, disk {_short(check.actual)})")
    if check.status is ArtifactStatus.MODIFIED:
        verb = "written by" if check.role == "out" else "read by"
        text = (f"{check.path}: MODIFIED since it was last {verb} record {_short(check.record_id)}{inside} "
                f"(ledger {_short(check.expected)}, disk {_short(check.actual)})")
        if check.changes:
            text += f"; inside it, {check.changes.describe()}"
        if check.reason:
            text += f"; {check.reason}"
        return text
    if check.status is ArtifactStatus.MISSING:
        return f"{check.path}: MISSING{inside} (the ledger last saw {_short(check.expected)})"
    if check.status is ArtifactStatus.UNREADABLE:
        return f"{check.path}: UNREADABLE ({check.reason}); it cannot be checked"
    return f"{check.path}: UNRECORDED{inside} (no record in the ledger read or wrote it)"



def _unreadable(path: str, err: ArtifactError) -> ArtifactCheck:
    return ArtifactCheck(path, ArtifactStatus.UNREADABLE, reason=err.reason)
