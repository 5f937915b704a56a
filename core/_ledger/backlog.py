"""What waits in the spool: per ledger, the records journaled and not yet shipped.

:func:`backlog` is what ``lineage-ledger spool status`` shows; :func:`waiting_for` and
:func:`waiting_digests` are what a verification and a pre-run check must not pass over in
silence. Split from :mod:`.deferred` (which re-exports them): these only read, files of
this user, and create nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from .._errors import SpoolError
from ._spool_files import _foreign

__all__ = ["SpoolBacklog", "Waiting", "backlog", "backlog_of", "kinds_text", "orphan_kinds", "waiting_digests", "waiting_for"]


def _default_spool(spool: str | None) -> str:
    from .ledger import DEFAULT_SPOOL

    return spool or os.environ.get("LINEAGE_SPOOL") or DEFAULT_SPOOL


@dataclass
class SpoolBacklog:
    """What waits in one ledger's spool directory."""

    directory: str
    url: str  # the ledger's identity, as the directory's URL file says
    records: int = 0  # complete record lines waiting
    live: int = 0  # of those, in segments a running process still holds (it ships them)
    # The oldest waiting task record's end time, or its segment's last write where that is earlier
    # (a record from a clock that was ahead ended "in the future")
    oldest: datetime | None = None
    quarantined: int = 0  # files of damaged lines set aside
    # Of ``records`` (and of ``live``), those that keep a directory's manifest: a task that reads
    # or writes a directory is kept with its manifest's record; users count tasks.
    manifests: int = 0
    live_manifests: int = 0
    refused: int = 0  # segment files replay leaves alone: another user's, a link, writable by others

    @property
    def tasks(self) -> int:
        """The waiting records that are not directory manifests: the tasks' own."""
        return self.records - self.manifests

    @property
    def live_tasks(self) -> int:
        return self.live - self.live_manifests

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {"url": self.url, "directory": self.directory, "records": self.records, "tasks": self.tasks,
                "manifests": self.manifests, "live": self.live,
                "oldest": self.oldest.isoformat() if self.oldest else None,
                "oldest_age_s": round((now - self.oldest).total_seconds(), 3) if self.oldest else None,
                "quarantined": self.quarantined, "refused": self.refused}


def _read_own(path: str) -> tuple[bytes, bool] | None:
    """(contents, held by a running process) of a regular file of this user with one link that
    no other user may write, opened without following a link; None for anything else, which
    replay refuses and leaves alone (the spool belongs to one user)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if _foreign(info) is not None:  # what replay would refuse, and leave alone
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
            # Let go before reading: a shipper that meets a shared lock waits for it to go.
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held = True
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), held
    except OSError:
        return None
    finally:
        os.close(fd)


def _scan(directory: str) -> SpoolBacklog:
    from .._canonical import parse_time

    marker = _read_own(os.path.join(directory, "URL"))
    found = SpoolBacklog(directory, marker[0].decode("utf-8", "replace").strip() if marker else "?")
    quarantine = os.path.join(directory, "quarantine")
    if os.path.isdir(quarantine) and not os.path.islink(quarantine):
        found.quarantined = len(os.listdir(quarantine))
    seen: set[bytes] = set()
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".log"):
            continue
        read = _read_own(os.path.join(directory, name))
        if read is None:
            found.refused += _left_alone(os.path.join(directory, name))
            continue
        data, held = read
        lines = _distinct(data, seen)
        if not lines:
            continue
        found.records += len(lines)
        if held:
            found.live += len(lines)
        oldest = None  # of this segment's tasks
        for line in lines:
            try:
                body = json.loads(line.partition(b" ")[2])
                if _is_manifest(body):
                    found.manifests += 1
                    found.live_manifests += held
                    continue  # its time is the epoch by design (manifest_record): no task's end
                ended = parse_time(body["ended"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if oldest is None or ended < oldest:
                oldest = ended
        if oldest is None:
            continue
        # Waiting since the segment was last written, at the latest: a record from a clock
        # that was ahead "ended" in the future, and its age stayed below zero however long
        # it waited, so an alert on stuck records never fired (tests/test_spool_counts.py).
        with contextlib.suppress(OSError):  # shipped and removed meanwhile: its ended stands
            oldest = min(oldest, datetime.fromtimestamp(os.stat(os.path.join(directory, name)).st_mtime, timezone.utc))
        if found.oldest is None or oldest < found.oldest:
            found.oldest = oldest
    return found


def _distinct(data: bytes, seen: set[bytes]) -> list[bytes]:
    """The complete lines of a segment (a torn last line is no record yet) whose record is
    not in ``seen`` (lines of this directory read before), which then holds them. A record
    can be journaled twice: a recording process and its engine's both keep one that was not
    acknowledged when the back-end went down (shipping keeps it once); users count records."""
    lines = []
    for line in data.split(b"\n")[:-1]:
        record_id = line.partition(b" ")[0]
        if record_id not in seen:
            seen.add(record_id)
            lines.append(line)
    return lines


def _left_alone(path: str) -> bool:
    """Whether replay leaves the segment file at ``path`` alone (and says why when it ships)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False  # shipped and removed meanwhile
    return _foreign(info) is not None  # (a link is not a regular file)


def _is_manifest(body: dict) -> bool:
    """Whether a spooled record body keeps a directory's manifest (as ``is_manifest_record``
    says of a decoded record), read from the JSON without decoding the record."""
    from .._files.manifest import MANIFEST_ENGINE, MANIFEST_RUN_PREFIX

    run_id = body.get("run_id")
    return body.get("engine") == MANIFEST_ENGINE and isinstance(run_id, str) and run_id.startswith(MANIFEST_RUN_PREFIX)


def orphan_kinds(directory: str) -> dict[str, bool]:
    """{record id: whether it keeps a directory's manifest} of the records in ``directory``'s
    segments that no running process holds: what a replay would ship now. Reads only files of
    this user; creates nothing."""
    kinds: dict[str, bool] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return kinds
    for name in names:
        read = _read_own(os.path.join(directory, name)) if name.endswith(".log") else None
        if read is None or read[1]:
            continue
        for line in read[0].split(b"\n")[:-1]:
            record_id, _, body = line.partition(b" ")
            try:
                kinds[record_id.decode("ascii")] = _is_manifest_line(body)
            except ValueError:
                continue  # a damaged line: replay sets it aside
    return kinds


_MANIFEST_RUN = b'"run_id":"manifest:'  # as a manifest's canonical body spells it


def backlog_of(spool: str | None, identity: str) -> SpoolBacklog:
    """What waits in the spool of the ledger named ``identity``. Creates nothing."""
    from .spool import spool_path

    directory = spool_path(os.path.abspath(_default_spool(spool)), identity)
    if not os.path.isdir(directory) or os.path.islink(directory):
        return SpoolBacklog(directory, identity)
    return _scan(directory)


class Waiting(NamedTuple):
    """How many records of a ledger wait in the spool, as users count them: ``records`` in
    all, ``manifests`` of which keep a directory's manifest (a task that reads or writes a
    directory is kept with one), the rest the tasks' own."""

    records: int = 0
    manifests: int = 0

    @property
    def tasks(self) -> int:
        return self.records - self.manifests

    def __bool__(self) -> bool:  # "nothing waits", not "a pair": a tuple of two is always true
        return self.records > 0

    @property
    def kinds(self) -> str:
        """`` (9 tasks, 3 directory manifests)``, as every count of records is told."""
        return kinds_text(self.tasks, self.manifests)


def kinds_text(tasks: int, manifests: int) -> str:
    """What a count of records is made of, as users count: `` (9 tasks, 3 directory manifests)``.
    A task that reads or writes a directory is kept with the directory's manifest record."""
    if not tasks and not manifests:
        return ""
    parts = [f"{tasks} task{'s' if tasks != 1 else ''}"] if tasks or not manifests else []
    if manifests:
        parts.append(f"{manifests} directory manifest{'s' if manifests != 1 else ''}")
    return f" ({', '.join(parts)})"


def _is_manifest_line(body: bytes) -> bool:
    """Whether a spooled line's body keeps a directory's manifest. Only a body that names the
    manifests' run is decoded: parsing every line took a fifth of the time of shipping 100,000
    records. A damaged line is no manifest (replay sets it aside)."""
    try:
        return _MANIFEST_RUN in body and _is_manifest(json.loads(body))
    except (ValueError, AttributeError):
        return False


def waiting_for(spool: str | None, identity: str, paths: Sequence[str]) -> tuple[Waiting, list[str]]:
    """(records waiting in this ledger's spool, which of ``paths`` they read or write): what a
    verification must not pass over in silence. Reads only files of this user; creates nothing."""
    from .spool import spool_path

    directory = spool_path(os.path.abspath(_default_spool(spool)), identity)
    if not os.path.isdir(directory) or os.path.islink(directory):
        return Waiting(), []
    wanted, named, count, manifests = set(paths), set(), 0, 0
    seen: set[bytes] = set()
    for name in sorted(os.listdir(directory)):
        read = _read_own(os.path.join(directory, name)) if name.endswith(".log") else None
        for line in (_distinct(read[0], seen) if read else ()):
            count += 1
            try:
                body = json.loads(line.partition(b" ")[2])
                manifests += _is_manifest(body)
                named.update(wanted.intersection(body.get("inputs", {})).union(
                    wanted.intersection(body.get("outputs", {}))))
            except (ValueError, AttributeError, TypeError):
                continue
    return Waiting(count, manifests), sorted(named)


_FEW = 64  # files asked of, up to which lines that name none of them are not decoded


def waiting_digests(spool: str | None, identity: str, paths: Sequence[str]) -> tuple[Waiting, dict[str, set[str]]]:
    """(records waiting in this ledger's spool, {path: digests those records wrote to it})
    for the outputs among ``paths``. Reads only files of this user; creates nothing."""
    from .spool import spool_path

    directory = spool_path(os.path.abspath(_default_spool(spool)), identity)
    if not os.path.isdir(directory) or os.path.islink(directory):
        return Waiting(), {}
    wanted, count, manifests = set(paths), 0, 0
    seen: set[bytes] = set()
    written: dict[str, set[str]] = {}
    # A pre-run check asks of a few files, and may ask once per task: a line that names
    # none of them (as JSON writes a name, or escaped: then parsed) is not decoded.
    needles = [json.dumps(p, ensure_ascii=False).encode() for p in wanted] if len(wanted) <= _FEW else None
    for name in sorted(os.listdir(directory)):
        read = _read_own(os.path.join(directory, name)) if name.endswith(".log") else None
        for line in (_distinct(read[0], seen) if read else ()):
            count += 1
            manifests += _is_manifest_line(line.partition(b" ")[2])
            if needles is not None and b"\\" not in line and not any(n in line for n in needles):
                continue
            try:
                outputs = json.loads(line.partition(b" ")[2]).get("outputs", {})
                for path in wanted.intersection(outputs):
                    digest = outputs[path].get("blake3")
                    if isinstance(digest, str):
                        written.setdefault(path, set()).add(digest)
            except (ValueError, AttributeError, TypeError):
                continue
    return Waiting(count, manifests), written


def backlog(spool: str | None = None) -> list[SpoolBacklog]:
    """What waits in each ledger's directory under the spool root ``spool``."""
    root = os.path.abspath(_default_spool(spool))
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise SpoolError(f"cannot read the spool {root}: {err.strerror or err}") from None
    found = []
    for name in names:
        directory = os.path.join(root, name)
        if os.path.isdir(directory) and not os.path.islink(directory):
            found.append(_scan(directory))
    return found
