"""What the wrapper remembers of each Nextflow session, for the check before ``-resume``.

Nextflow keeps its task cache in a LevelDB database under ``.nextflow/cache``: an internal
format. The wrapper keeps its own list instead, one JSON file per session in the launch
directory (``.lineage/nextflow/sessions/<session id>.json``, private to the user), updated
at the end of every run of that session: each task's key (its hash), process, work
directory, status, the real input files, the outputs and the published files. ``-resume``
keeps the session id, so the file covers every task the resumed run may take from the cache.

It holds paths and names only: the digests that vouch for them are in the ledger.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

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


def session_file(launch_dir: str, session: str) -> str:
    return os.path.join(launch_dir, STATE_DIR, "sessions", f"{session}.json")


def load(launch_dir: str, session: str) -> dict[str, dict[str, Any]]:
    """``{task key: task}`` of ``session``; empty when no run of it was recorded here."""
    try:
        with open(session_file(launch_dir, session), encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {session_file(launch_dir, session)}: {err}") from err
    tasks = data.get("tasks") if isinstance(data, dict) else None
    return {str(k): v for k, v in tasks.items() if isinstance(v, dict)} if isinstance(tasks, dict) else {}


def save(launch_dir: str, session: str, tasks: dict[str, dict[str, Any]]) -> None:
    """Merge ``tasks`` into the session's file (a rerun task replaces its entry), atomically."""
    path = session_file(launch_dir, session)
    private_dirs(os.path.dirname(path))
    try:
        merged = load(launch_dir, session)
    except ValueError:
        merged = {}  # unreadable: this run's tasks are what we know
    merged.update(tasks)
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".session.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"session": session, "tasks": merged}, handle, indent=1, sort_keys=True)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
