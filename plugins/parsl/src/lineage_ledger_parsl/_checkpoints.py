"""Parsl's checkpoints are pickles: load only those no one else can write, and keep ours so.

``BasicMemoizer.start`` unpickles every ``runinfo/NNN/checkpoint/tasks.pkl`` (all of them by
default, with a checkpoint mode), and unpickling runs code. In a directory a research group
shares, a checkpoint that another member can write (group-writable under a group ``umask
002``, or owned by someone else) ran that member's code in the next run of the workflow
(tests/test_parsl_deployed_checkpoints.py). The memoizer loads only the checkpoints that no
one else can have written (see :func:`_open_private`), says which it left out and why, and
at the end of a run makes what Parsl wrote in it not writable by others, so that a group
umask does not cost the cache.

It loads them itself, through the descriptors it checked. Checking a path and then handing
Parsl the path were two looks at it: in a ``runinfo`` the group may write, another member
swapped their run directory for ours in between, and Parsl unpickled theirs (the same test
file, with a real second account). Each entry's bytes are kept as a digest (see _values),
so that a value reused from a checkpoint can be compared with what the ledger recorded.
"""

from __future__ import annotations

import io
import logging
import os
import pickle  # noqa: S403 - only files this user alone can write, see _open_private
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from blake3 import blake3
from parsl.dataflow.errors import BadCheckpoint
from parsl.utils import get_all_checkpoints

__all__ = ["RUN_FILE", "Loaded", "RunSaid", "keep_private", "load_private", "planned", "start_loading_private", "write_run_id"]

log = logging.getLogger("lineage_ledger.parsl")

_CHECKPOINT = "tasks.pkl"
#: Beside ``tasks.pkl``: the id of the run (DataFlowKernel) that wrote it, so that the records
#: of that run can vouch for its values (see _values). Text, never unpickled.
RUN_FILE = "lineage-ledger-run"
_RUN_ID_LIMIT = 200


@dataclass
class Loaded:
    """A value loaded from a checkpoint: the future Parsl's table holds for its memo key, and
    every (run id or None, entry digest) the loaded checkpoints hold for that key, in load
    order (the last one is the value's)."""

    future: Future
    folder: str
    versions: list[tuple[str | None, str]] = field(default_factory=list)


def start_loading_private(inner: Any, *, run_dir: str, config_run_dir: str) -> dict[str, Loaded]:
    """``inner.start(...)`` (a ``BasicMemoizer``) with the checkpoints it would load that no
    one else can write, loaded here through the descriptors checked; returns what was loaded,
    by memo key."""
    table, loaded = load_private(planned(inner, config_run_dir))
    given = inner.checkpoint_files
    inner.checkpoint_files = []  # Parsl loads none by path: see above
    try:
        inner.start(run_dir=run_dir, config_run_dir=config_run_dir)
    finally:
        inner.checkpoint_files = given  # the next DataFlowKernel of this config picks again
    if inner.memoize:
        inner.memo_lookup_table = table
        return loaded
    return {}


def planned(inner: Any, config_run_dir: str) -> list[str]:
    """The checkpoint directories ``inner`` (a ``BasicMemoizer``) would load, as it picks them."""
    if inner.checkpoint_files is not None:
        return list(inner.checkpoint_files)
    if inner.checkpoint_mode is not None:
        return list(get_all_checkpoints(config_run_dir))
    return []


def load_private(dirs: Sequence[str]) -> tuple[dict[str, Future], dict[str, Loaded]]:
    """Parsl's lookup table from the checkpoints in ``dirs`` that no one else can have
    written (each left out is said), as ``BasicMemoizer`` builds it (a later entry of a key
    wins), and what was loaded for each key. A checkpoint that cannot be read or unpickled
    raises ``BadCheckpoint``, as Parsl's own load does."""
    table: dict[str, Future] = {}
    loaded: dict[str, Loaded] = {}
    for folder in dirs:
        opened = _open_private(folder)
        if isinstance(opened, str):
            log.error("lineage-ledger: not loading the Parsl checkpoint %s: %s (a checkpoint is a pickle, and loading "
                      "one runs the code in it). Its tasks run again. If it is yours, make it so (chown) and not "
                      "writable by others (chmod go-w), or remove it", folder, opened)
            continue
        data, run_id = opened
        for key, result, digest in _entries(folder, data):
            future: Future = Future()
            future.set_result(result)
            table[key] = future
            entry = loaded.setdefault(key, Loaded(future, folder))
            entry.future, entry.folder = future, folder
            entry.versions.append((run_id, digest))
    return table, loaded


def _entries(folder: str, data: bytes) -> list[tuple[str, Any, str]]:
    """(memo key, value, BLAKE3 of the entry's pickled bytes) of each entry, in order."""
    found: list[tuple[str, Any, str]] = []
    view = memoryview(data)
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            begin = stream.tell()
            entry = pickle.load(stream)  # noqa: S301 - this user's own file, see _open_private
            if not isinstance(entry, dict) or entry.get("exception") is not None or "hash" not in entry:
                raise ValueError("not an entry of a Parsl checkpoint")
            found.append((entry["hash"], entry.get("result"), blake3(view[begin:stream.tell()]).hexdigest()))
    except Exception as err:  # noqa: BLE001 - what Parsl's load says of a checkpoint it cannot read
        log.error("lineage-ledger: failed to load the Parsl checkpoint %s: %s: %s", folder, type(err).__name__, err)
        raise BadCheckpoint(f"Failed to load checkpoint: {os.path.join(folder, _CHECKPOINT)}") from err
    return found


def _open_private(folder: str) -> tuple[bytes, str | None] | str:
    """The bytes of ``folder``'s checkpoint and the id of the run that wrote it (None where
    it was not said), or why another user could have written them. The directory is opened
    once (a symbolic link is judged by what it points to), then the file through it: what
    is judged is what is read. Both must be this user's (or root's) and writable by no one
    else, so that nothing in the directory can have been put or swapped there by others
    (the run's directory and ``runinfo`` above may be a group's: once opened, renaming them
    changes nothing). A missing checkpoint raises ``BadCheckpoint``, as for Parsl."""
    try:
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise BadCheckpoint(f"Checkpoint file was not found: {os.path.join(folder, _CHECKPOINT)}") from err
    except OSError as err:
        return f"{folder} is not to be examined ({err.strerror})"
    try:
        why = _who_else(os.fstat(directory), is_file=False)
        if why is not None:
            return f"{folder} is {why}"
        path = os.path.join(folder, _CHECKPOINT)
        try:  # not blocking on a FIFO planted in its place
            handle = os.open(_CHECKPOINT, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        except FileNotFoundError as err:
            raise BadCheckpoint(f"Checkpoint file was not found: {path}") from err
        except OSError as err:
            return f"{path} is not to be examined ({err.strerror})"
        with os.fdopen(handle, "rb") as checkpoint:
            why = _who_else(os.fstat(checkpoint.fileno()), is_file=True)
            if why is not None:
                return f"{path} is {why}"
            return checkpoint.read(), _run_id(directory)
    finally:
        os.close(directory)


def _run_id(directory: int) -> str | None:
    try:
        handle = os.open(RUN_FILE, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None  # written by plain Parsl, or by an older plugin: no run of the ledger said it
    with os.fdopen(handle, "rb") as said:
        if not stat.S_ISREG(os.fstat(said.fileno()).st_mode):
            return None
        text = said.read(_RUN_ID_LIMIT + 1).decode("ascii", "replace").strip()
    return text if text and len(text) <= _RUN_ID_LIMIT and text.isprintable() else None


def _who_else(status: os.stat_result, *, is_file: bool) -> str | None:
    if status.st_uid not in (os.geteuid(), 0):
        return f"owned by another user (uid {status.st_uid})"
    if is_file and not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    if status.st_mode & stat.S_IWOTH:
        return "writable by every user"
    if status.st_mode & stat.S_IWGRP:
        return "writable by its group"
    return None


class RunSaid:
    """Writes beside a run's checkpoint, once per run, which run wrote it (:data:`RUN_FILE`),
    once Parsl has written the checkpoint: a ``checkpoint/`` directory without ``tasks.pkl``
    fails the next ``parsl.load`` (``BadCheckpoint``, Parsl's and ours), and with
    ``dfk_exit`` (or ``periodic``, ``manual``) Parsl writes it late, never in a run killed
    before (tests/test_parsl_deployed_cached_values.py). A run killed between the two leaves
    values nothing vouches for: ``strict`` refuses them once."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self._lock = threading.Lock()

    def say(self, run_dir: str | None, run_id: str | None) -> None:
        if self.run_id == run_id or not run_dir or not run_id:
            return
        with self._lock:  # results end on several threads
            if self.run_id == run_id or not os.path.isfile(os.path.join(run_dir, "checkpoint", _CHECKPOINT)):
                return
            try:
                write_run_id(run_dir, run_id)
            except Exception as err:  # noqa: BLE001 - recording must never break the workflow
                log.error("lineage-ledger: could not say beside Parsl's checkpoint which run wrote it (%s): the "
                          "values it holds will not be vouched for", err)
            self.run_id = run_id


def write_run_id(run_dir: str, run_id: str) -> None:
    """Say beside the run's checkpoint which run wrote it (see :data:`RUN_FILE`)."""
    folder = os.path.join(run_dir, "checkpoint")
    handle = os.open(os.path.join(folder, RUN_FILE),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(handle, "w") as said:
        said.write(run_id + "\n")


def keep_private(run_dir: str | None) -> None:
    """Take write access from group and others on what Parsl wrote in this run: its
    checkpoint, and the checkpoint's and the run's directories (where this user owns them).
    Not ``runinfo``: other members of a group may make their runs in it."""
    if not run_dir:
        return
    checkpoint = os.path.join(run_dir, "checkpoint")
    for path in (os.path.join(checkpoint, _CHECKPOINT), checkpoint, run_dir):
        try:
            status = os.stat(path)
            if status.st_uid == os.geteuid() and status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                os.chmod(path, stat.S_IMODE(status.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
        except OSError as err:  # not there (no checkpoint this run), or not ours to change
            log.debug("lineage-ledger: could not make %s private: %s", path, err)
