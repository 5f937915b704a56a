"""What the wrapper remembers of each Nextflow session, for the check before ``-resume``.

Nextflow keeps its task cache in a LevelDB database under ``.nextflow/cache``: an internal
format. The wrapper keeps its own list instead, one JSON file per session, updated at the end
of every run of that session: each task's key (its hash), process, work directory, status,
the real input files, the outputs and the published files. ``-resume`` keeps the session id,
so the file covers every task the resumed run may take from the cache.

It holds paths and names only: the digests that vouch for them are in the ledger.

The lists live in this user's private state (the core's state root, where the verified tree
heads are kept: ``$LINEAGE_STATE_DIR``, else ``$XDG_STATE_HOME/lineage-ledger``, else
``~/.local/state/lineage-ledger``), under ``nextflow/<launch directory's digest>/``, not in the
launch directory's ``.lineage``: that one may be writable by others (a group-shared SQLite
ledger needs its directory so), who could move a list aside, put one of theirs in its place,
or put back an older one of this user's. The state root is used only where no other user
controls the way to it (``others_control``, as for the tree heads); a list is read only if it
is a regular file of this user with one link, opened without following a link, naming the
session asked for. A list that is not there or not trusted is ``None``: the check is then
planned from the work directory and the ledger (``_recovered``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from typing import Any

log = logging.getLogger("lineage_ledger.nextflow")
STATE_DIR = os.path.join(".lineage", "nextflow")


def private_dirs(path: str) -> None:
    """Create ``path`` and its missing parents readable by the user only (paths of the
    user's data live there)."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.makedirs(directory, mode=0o700, exist_ok=True)


def lists_dir(launch_dir: str) -> str:
    """The directory of the lists of the sessions launched from ``launch_dir``."""
    import hashlib

    from lineage_ledger._environment import state_root

    launch = os.fsencode(os.path.realpath(launch_dir))
    return os.path.join(state_root(), "nextflow", hashlib.sha256(launch).hexdigest()[:32])


def session_file(launch_dir: str, session: str) -> str:
    return os.path.join(lists_dir(launch_dir), f"{session}.json")


#: The name of the list of the tasks that stored files (``storeDir``), of every session
#: launched from a directory: Nextflow skips them on any run while their files are there.
STORES = "stores"


def stores_file(launch_dir: str) -> str:
    return os.path.join(lists_dir(launch_dir), f"{STORES}.json")


def load(launch_dir: str, session: str) -> dict[str, dict[str, Any]] | None:
    """``{task key: task}`` of ``session``; None when no list of it is here that this user
    wrote (none, not a regular file of this user with one link, unreadable, or another
    session's): the reason is logged, but for a list that is simply not there."""
    return _read(session_file(launch_dir, session), session)


def load_stores(launch_dir: str) -> dict[str, dict[str, Any]]:
    """``{task key: task}`` of the tasks launched from ``launch_dir`` that stored files, read
    as a session's list is (``{}`` for none this user wrote)."""
    return _read(stores_file(launch_dir), STORES) or {}


def _read(path: str, session: str) -> dict[str, dict[str, Any]] | None:
    from lineage_ledger._environment import others_control

    try:
        unsafe = others_control(os.path.dirname(path))
    except FileNotFoundError:
        return None
    except OSError as err:
        unsafe = err.strerror or str(err)
    if unsafe is not None:
        log.warning("lineage-ledger: not reading %s: %s", path, unsafe)
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as err:  # a link in its place (ELOOP), or no access
        log.warning("lineage-ledger: not reading %s: %s", path, err.strerror or err)
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
            log.warning("lineage-ledger: not reading %s: not a regular file of this user with one link", path)
            return None
        try:
            data = json.loads(handle.read())
        except (OSError, ValueError) as err:
            log.warning("lineage-ledger: cannot read %s: %s", path, err)
            return None
    if not isinstance(data, dict) or data.get("session") != session:
        log.warning("lineage-ledger: not reading %s: it is not the list of session %s", path, session)
        return None
    tasks = data.get("tasks")
    return {str(k): v for k, v in tasks.items() if isinstance(v, dict)} if isinstance(tasks, dict) else {}


def save(launch_dir: str, session: str, tasks: dict[str, dict[str, Any]]) -> None:
    """Merge ``tasks`` into the session's file (a rerun task replaces its entry), atomically."""
    from lineage_ledger._environment import checked_makedirs

    path = session_file(launch_dir, session)
    unsafe = checked_makedirs(os.path.dirname(path))
    if unsafe is not None:
        raise OSError(f"not keeping the list of session {session} in {os.path.dirname(path)}: {unsafe}, so "
                      "another user could move it aside or replace it (set LINEAGE_STATE_DIR to a private directory)")
    merged = load(launch_dir, session) or {}  # none we trust: this run's tasks are what we know
    merged.update(tasks)
    _write(path, session, merged)
    stored = {key: task for key, task in tasks.items() if task.get("stored")}
    if stored:  # checked before every run (_check_stored), with -resume or without
        _write(stores_file(launch_dir), STORES, {**load_stores(launch_dir), **stored})


def _write(path: str, session: str, tasks: dict[str, dict[str, Any]]) -> None:
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".session.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"session": session, "tasks": tasks}, handle, indent=1, sort_keys=True)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
