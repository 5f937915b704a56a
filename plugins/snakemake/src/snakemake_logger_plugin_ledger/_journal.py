"""A journal of finished jobs not yet recorded, so that ``kill -9`` of Snakemake loses none.

Between Snakemake reporting a job finished and the capture's pool journaling its record in
the core's durable spool, the job exists only in memory. Each finished job is therefore
written here first as one JSON line (a small ``write``, no hashing, no fsync: a killed
process leaves its written bytes to the kernel) and marked done once its record is in the
spool. The file is held under an exclusive ``flock`` while Snakemake runs; the lock dies
with the process, so the next run can tell a crashed journal from a live one and records
the jobs it names that were never marked done.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: Snakemake's process need not import lineage_ledger
    from lineage_ledger import TaskRun

log = logging.getLogger("lineage_ledger.snakemake")


def encode_run(run: TaskRun) -> dict[str, Any]:
    from lineage_ledger import format_time as fmt

    return {
        "task_id": run.task_id, "task_name": run.task_name, "status": run.status,
        "started": fmt(run.started), "ended": fmt(run.ended),
        "inputs": list(run.inputs), "outputs": list(run.outputs),
        "known": {path: _manifest_carried(entry) for path, entry in run.known.items()},
        "code_digest": run.code_digest, "parameters": dict(run.parameters),
        "environment_extra": dict(run.environment_extra), "attempt": run.attempt,
        "extra": dict(run.extra), "run_id": run.run_id,
    }


def _manifest_carried(entry: Any) -> Any:
    """A directory's digest entry with its manifest, where this process remembers it (decoded
    from a journal line by :func:`decode_run`): a job recovered from a killed run's journal is
    sent on to the recording process, which needs the manifest of a ``temp()`` directory
    Snakemake has deleted since, or it records the directory as missing."""
    if not isinstance(entry, dict) or entry.get("type") != "dir" or "manifest" in entry:
        return dict(entry) if isinstance(entry, dict) else entry
    from lineage_ledger._files.manifest import recall

    manifest = recall(str(entry.get("blake3")))
    return {**entry, "manifest": manifest.to_json()} if manifest is not None else dict(entry)


def decode_run(data: dict[str, Any]) -> TaskRun:
    from lineage_ledger import TaskRun, parse_time

    values = dict(data)
    for key in ("started", "ended"):
        values[key] = parse_time(values[key])
    values["known"] = {path: _manifest_remembered(entry) for path, entry in (values.get("known") or {}).items()}
    return TaskRun(**values)


def _manifest_remembered(entry: dict[str, Any]) -> dict[str, Any]:
    """A directory's digest entry hashed in Snakemake's process (a ``temp()`` directory, see
    _eager) carries its manifest: the capture here records a directory from its digest only
    where it has the manifest (else it hashes again, and a deleted one is missing). Taken
    only if it is the manifest of that very digest."""
    if not isinstance(entry, dict) or "manifest" not in entry:
        return entry
    entry = dict(entry)
    raw = entry.pop("manifest")
    from lineage_ledger._files.manifest import Manifest, remember

    try:
        manifest = Manifest.from_json(raw)
    except ValueError:
        return entry  # not one: the capture hashes the directory again, as before
    if manifest.digest == entry.get("blake3"):
        remember(manifest)
    return entry


class PendingJournal:
    """``<dir>/<run id>.jsonl``: ``{"job": key, "run": {...}}`` lines and ``{"done": key}`` lines.

    Job lines are written here, in Snakemake's process; done lines by whoever records the
    job (the recording process, through the descriptor it inherits, or this process).
    """

    def __init__(self, directory: str, run_id: str, opened: float) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)  # private, like the spool
        self.directory = directory
        self.run_id = run_id
        self.path = os.path.join(directory, f"{run_id}.jsonl")
        self._lock = threading.Lock()
        # Never through a link planted under a name a fixed --logger-ledger-run-id makes known.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # When the run began: after a crash, Snakemake's metadata newer than this names the
        # jobs it saw finish whose events never reached this handler.
        self._write(json.dumps({"opened": opened, "run_id": run_id}))

    def fileno(self) -> int:
        return self._file.fileno()

    def add(self, key: str, run: TaskRun) -> None:
        self.add_line(json.dumps({"job": key, "run": encode_run(run)}, separators=(",", ":"), default=str))

    def add_line(self, line: str) -> None:
        """A job line as :meth:`add` writes it, encoded by the caller (who sends it on too)."""
        self._write(line)

    def done(self, key: str) -> None:
        self._write(json.dumps({"done": key}))

    def _write(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self._file.closed:
                return
            # One write(2) on the O_APPEND descriptor, not through the text layer: in the
            # kernel when it returns (survives kill -9 of this process), and a whole line
            # even with the recording process appending done lines through the same file.
            written = os.write(self._file.fileno(), data)
            while written < len(data):
                written += os.write(self._file.fileno(), data[written:])

    def close(self, remove: bool) -> None:
        """Close; ``remove`` when every job in it was recorded."""
        with self._lock:
            if self._file.closed:
                return
            if remove:
                os.unlink(self.path)
            self._file.close()  # releases the lock (once the recording process is gone too)


def orphaned(directory: str, own_path: str) -> Iterator[tuple[str, IO[str]]]:
    """Journals whose writer is gone, each yielded locked; the caller closes the handle."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if not name.endswith(".jsonl") or path == own_path:
            continue
        handle = _own_journal(path)
        if handle is None:
            continue
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()  # a live Snakemake holds it
            continue
        yield path, handle


def _own_journal(path: str) -> IO[str] | None:
    """``path`` opened for reading and locking if it is a regular file of this user with one
    link, opened without following a link; else None, and it is left alone. Its jobs are
    recorded by this user's run, as this user's: a journal someone else could write (a
    group-writable ``.lineage``) would have the run vouch for whatever it names."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_nlink == 1:
            return os.fdopen(fd, "r+", encoding="utf-8")
    except OSError:
        pass
    os.close(fd)
    log.warning("lineage-ledger: left alone %s: not a pending-jobs journal of this user", path)
    return None


@dataclass
class Leftover:
    """What an interrupted run's journal says."""

    run_id: str
    opened: float | None = None
    pending: list[TaskRun] = field(default_factory=list)  # seen finished, never recorded
    outputs: set[str] = field(default_factory=set)  # every output the journal names


def read_journal(path: str, handle: IO[str]) -> Leftover:
    """Parse a journal; a torn last line (the kill) is skipped."""
    state = Leftover(run_id=os.path.basename(path)[: -len(".jsonl")])
    runs: dict[str, TaskRun] = {}
    done: set[str] = set()
    handle.seek(0)
    for line in handle:
        try:
            entry = json.loads(line)
            if "done" in entry:
                done.add(entry["done"])
            elif "opened" in entry:
                state.opened = state.opened or float(entry["opened"])
                state.run_id = str(entry.get("run_id") or state.run_id)
            else:
                run = decode_run(entry["run"])
                runs[entry["job"]] = run
                state.outputs.update(run.outputs)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("lineage-ledger: skipping a damaged line of %s: %s", path, err)
    state.pending = [run for key, run in runs.items() if key not in done]
    return state
