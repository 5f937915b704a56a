"""Parsl's checkpoints are pickles: load only those no one else can write, and keep ours so.

``BasicMemoizer.start`` unpickles every ``runinfo/NNN/checkpoint/tasks.pkl`` (all of them by
default, with a checkpoint mode), and unpickling runs code. In a directory a research group
shares, a checkpoint that another member can write (group-writable under a group ``umask
002``, or owned by someone else) ran that member's code in the next run of the workflow
(tests/test_parsl_deployed_checkpoints.py). The memoizer hands Parsl only the checkpoints
that no one else can have written (see :func:`_writable_by_others`), says which it left out
and why, and at the end of a run makes what Parsl wrote in it not writable by others, so
that a group umask does not cost the cache.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from typing import Any

from parsl.utils import get_all_checkpoints

__all__ = ["keep_private", "loadable", "planned", "start_loading_private"]

log = logging.getLogger("lineage_ledger.parsl")

_CHECKPOINT = "tasks.pkl"


def start_loading_private(inner: Any, *, run_dir: str, config_run_dir: str) -> None:
    """``inner.start(...)`` (a ``BasicMemoizer``), loading only the checkpoints it would load
    that no one else can write."""
    planned_dirs = planned(inner, config_run_dir)
    kept = loadable(planned_dirs)
    given = inner.checkpoint_files
    if kept != planned_dirs:
        inner.checkpoint_files = kept
    try:
        inner.start(run_dir=run_dir, config_run_dir=config_run_dir)
    finally:
        inner.checkpoint_files = given  # the next DataFlowKernel of this config picks again


def planned(inner: Any, config_run_dir: str) -> list[str]:
    """The checkpoint directories ``inner`` (a ``BasicMemoizer``) would load, as it picks them."""
    if inner.checkpoint_files is not None:
        return list(inner.checkpoint_files)
    if inner.checkpoint_mode is not None:
        return list(get_all_checkpoints(config_run_dir))
    return []


def loadable(dirs: Sequence[str]) -> list[str]:
    """``dirs`` less the checkpoints another user could have written; each left out is said."""
    kept: list[str] = []
    for folder in dirs:
        why = _writable_by_others(folder)
        if why is None:
            kept.append(folder)
            continue
        log.error("lineage-ledger: not loading the Parsl checkpoint %s: %s (a checkpoint is a pickle, and loading "
                  "one runs the code in it). Its tasks run again. If it is yours, make it so (chown) and not "
                  "writable by others (chmod go-w), or remove it",
                  folder, why)
    return kept


def _writable_by_others(folder: str) -> str | None:
    """Why another user could have written the checkpoint in ``folder``: the file is not
    this user's (or root's), or others may write it; or its directory or the run's is not
    this user's. A directory of ours that others may write is not enough: what they put or
    swap in there is theirs, which the owner check sees (``runinfo`` itself may be a
    group's shared directory)."""
    real = os.path.realpath(folder)
    for path, is_file in ((os.path.join(real, _CHECKPOINT), True), (real, False), (os.path.dirname(real), False)):
        why = _who_else(path, is_file)
        if why is not None:
            return f"{path} is {why}"
    return None


def _who_else(path: str, is_file: bool) -> str | None:
    try:
        status = os.stat(path)  # a symbolic link is judged by what it points to
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"not to be examined ({err.strerror})"
    if status.st_uid not in (os.geteuid(), 0):
        return f"owned by another user (uid {status.st_uid})"
    if is_file and status.st_mode & stat.S_IWOTH:
        return "writable by every user"
    if is_file and status.st_mode & stat.S_IWGRP:
        return "writable by its group"
    return None


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
