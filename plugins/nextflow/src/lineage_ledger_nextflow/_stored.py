"""The outputs a task stored outside its work directory: ``storeDir``.

A process with ``storeDir`` has its declared outputs moved (``stageOutMode``: copied,
rsynced) out of the work directory into the store when its script ends, by the
``nxf_unstage_outputs`` function of ``.command.run``::

    nxf_unstage_outputs() {
        true
        IFS=$'\\n'
        for name in $(eval "ls -1d made.txt 'a b.txt' *.idx" | sort | uniq); do
            nxf_fs_move "$name" /launch/store
        done
        unset IFS
    }

On every later run, with ``-resume`` or without, Nextflow skips the task while those files
are in the store ("[skipping] Stored process"), and its readers read them there. They are
the task's outputs: recorded in its record (so that ``verify-lineage`` of what is made from
them goes back through the task, and the check before ``-resume`` compares them with it), and
moved aside with its work directory under ``--ledger-policy rerun`` (else Nextflow skips the
task and its readers run again on the changed file). The work directory alone held none of
them: the record listed nothing, and a result's lineage ended at the store as a "source".

The same function moves a ``scratch`` task's outputs from its scratch directory into its
work directory: that target is the work directory itself, read as usual, and not a store.

What the store holds is matched with the declared patterns, as the shell matched them in the
work directory, and only what changed since the task began counts (a file that the store
held before, from another task or an earlier run, is not this task's): its modification time
is no older than ``.command.begin``'s (a move keeps the time the task wrote the file; a copy
takes a new one). A directory output is recorded whole with its files, as one in the work
directory is; a link in the store that does not lead to a file is not followed.

Since Nextflow skips such a task on a run without ``-resume`` too, what the store holds is
checked before every run (``cli._check_stored``) against the records of the tasks that
stored it, which the wrapper lists for the launch directory (``_state.load_stores``).
:func:`stores_listed` looks whether there is such a list before Nextflow starts without
importing the core (a run of a pipeline that stores nothing pays a ``stat``).
"""

from __future__ import annotations

import os
import re

#: The stage-out commands of each ``stageOutMode`` (``nxf_fs_move "$name" TARGET``).
_MOVERS = ("nxf_fs_move", "nxf_fs_copy", "nxf_fs_rsync", "nxf_fs_rclone", "nxf_fs_fcp")
_START = re.compile(r"^\s*nxf_unstage_outputs\(\)\s*\{\s*$")
_PATTERNS = re.compile(r'eval "ls -1d (?P<patterns>.*)" \|')
#: Seconds of a file system's time stamps coarser than the task's own start time.
SLACK = 1.0


def store_of(wrapper: str) -> tuple[list[str], str | None]:
    """(the declared output patterns, the directory they go to) from a ``.command.run``;
    ([], None) where it stores nothing."""
    import shlex

    patterns: list[str] = []
    target: str | None = None
    inside = False
    for line in wrapper.splitlines():
        if not inside:
            inside = bool(_START.match(line))
            continue
        if line.strip() == "}":
            break
        found = _PATTERNS.search(line)
        try:
            if found:
                patterns = shlex.split(found.group("patterns"))
                continue
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) >= 3 and words[0] in _MOVERS:
            target = words[-1]
    return patterns, target


def stored_outputs(workdir: str, wrapper: str, started: float | None) -> list[str]:
    """The paths the task stored outside ``workdir``: each directory (recorded whole) before
    its files, then the files; [] where it stores nothing (or into ``workdir``: ``scratch``)."""
    import glob

    patterns, target = store_of(wrapper)
    if not patterns or target is None or not os.path.isabs(target):
        return []
    if os.path.realpath(target) == os.path.realpath(workdir):
        return []
    since = None if started is None else started - SLACK
    directories: dict[str, None] = {}
    files: dict[str, None] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(glob.escape(target), pattern))):
            path = os.path.normpath(path)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if since is not None and info.st_mtime < since:
                continue  # held before the task began: not its output
            if os.path.isdir(path) and not os.path.islink(path):
                directories[path] = None
                files.update(dict.fromkeys(_files_in(path)))
            elif os.path.isfile(path):
                files[path] = None  # a link to a file: recorded with the file it leads to
    return [*directories, *files]


def _files_in(directory: str) -> list[str]:
    """Regular files, and links to them, below ``directory``; no link to a directory walked."""
    found: list[str] = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(names) if os.path.isfile(os.path.join(root, name)))
    return found


def stores_listed(launch_dir: str) -> bool:
    """Whether this user's state may hold a list of the tasks launched from ``launch_dir``
    that stored files (``_state.stores_file``), worked out as the core's ``state_root`` does,
    without importing it: this runs before Nextflow starts. A setting the core refuses (a
    relative ``$LINEAGE_STATE_DIR``) answers True: the check then says why."""
    import hashlib

    root = os.environ.get("LINEAGE_STATE_DIR")
    if root and not os.path.isabs(root):
        return True
    if not root:
        base = os.environ.get("XDG_STATE_HOME")
        if not base or not os.path.isabs(base):
            base = os.path.join(os.path.expanduser("~"), ".local", "state")
        root = os.path.join(base, "lineage-ledger")
    launch = hashlib.sha256(os.fsencode(os.path.realpath(launch_dir))).hexdigest()[:32]
    return os.path.lexists(os.path.join(root, "nextflow", launch, "stores.json"))
