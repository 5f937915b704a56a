"""Where an export is written: a new private file beside ``-o PATH``, renamed onto it when whole
(``-o -``: standard output).

An export carries what the ledger holds (command lines, parameters, users, hosts), and the
ledger is 0600 whatever the umask, so its exports are too: the owner widens one to share it.
A path under ``/dev`` or ``/proc`` (``-o /dev/stdout``) in a directory only root or this user
may write, or a FIFO, is written into instead.
``-o`` may name a path in a directory others can write (a group's project directory), where
a planted symbolic link would send a plain ``open(path, "w")`` to overwrite its target. The
file is therefore made with ``O_EXCL`` under a fresh name (``mkstemp``: 0600, never a link)
and renamed onto PATH, which replaces a link instead of following it. A failed export (a
ledger found broken on a later page, a full disk) leaves PATH as it was and no part file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

from .._closed_output import names_closed_stdout
from .._errors import ConfigError

__all__ = ["new_private_dir", "open_output", "remove_unfinished"]


@contextlib.contextmanager
def open_output(path: str, *, binary: bool = False, buffering: int = -1, parents: bool = False) -> Iterator[IO]:
    """A writable handle whose bytes land at ``path`` only when the block ends without an
    error; the file is 0600 and ``path`` (a link, a file) is replaced, never followed.
    ``parents``: make missing directories above it (the graph does; exports refuse)."""
    if path == "-":  # standard output, as for most tools: never a file named '-'
        sys.stdout.flush()  # what click printed there first comes first
        stream = sys.stdout.buffer if binary else sys.stdout
        yield stream
        stream.flush()
        return
    if _is_stream(path):  # ``-o /dev/stdout``, a named pipe: written into, never replaced
        if names_closed_stdout(path):  # else /dev/null, which holds descriptor 1 then, took it all
            raise ConfigError(f"-o {path}: standard output is closed (>&-): nothing was written to it")
        with (open(path, "wb", buffering=buffering) if binary else
              open(path, "w", encoding="utf-8", buffering=buffering)) as stream:
            yield stream
        return
    directory = os.path.dirname(os.path.abspath(path))
    if parents:
        os.makedirs(directory, exist_ok=True)
    if not path:  # abspath("") is the working directory: its parent would take the part file
        raise FileNotFoundError(errno.ENOENT, "an empty path names no file", path)
    if os.path.isdir(path):  # else said of the part file, a name the user never gave
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file to write", path)
    try:
        fd, part = tempfile.mkstemp(prefix=".lineage-export-", suffix=".part", dir=directory)
    except OSError as err:
        raise type(err)(err.errno, f"cannot make a file in its directory {directory}: {err.strerror}", path) from err
    try:
        with (os.fdopen(fd, "wb", buffering=buffering) if binary else
              os.fdopen(fd, "w", encoding="utf-8", buffering=buffering)) as handle:
            yield handle
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def _is_stream(path: str) -> bool:
    """Whether ``path`` is to be written into, not replaced: a name under ``/dev`` or
    ``/proc`` (``/dev/stdout``, ``/dev/fd/3``, ``/dev/null``, whatever they lead to: a
    terminal, a pipe, a file the shell redirected to; renaming a file onto one would, as
    root, replace it for the whole machine) in a directory no one but root and this user may
    write, or a FIFO anywhere (links followed: writing into a pipe overwrites no file). A
    character device reached through a link elsewhere (one planted to ``/dev/mem``) is
    replaced like any link, and so is a name in ``/dev/shm`` (anyone may plant a link there):
    a file there is made private beside it and renamed on, as anywhere else."""
    absolute = os.path.abspath(path)
    # The directory as the kernel finds it: abspath keeps two leading slashes (//dev/stdout)
    # and no link (LINK/stdout, LINK -> /dev), and either was taken for a plain file's name,
    # which, renamed onto, replaced /dev/stdout for the whole machine (as root).
    directory = os.path.realpath(os.path.dirname(absolute))
    if (directory + "/").startswith(("/dev/", "/proc/")) and os.path.lexists(absolute) \
            and _written_only_by_us(directory):
        return True  # a new name there (/proc/self/cwd/NEW) is made private, as anywhere
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _written_only_by_us(directory: str) -> bool:
    """Whether only root or this user may make or replace names in ``directory`` (links
    followed: /dev/fd is this process's /proc/self/fd)."""
    try:
        info = os.stat(directory)
    except OSError:
        return False
    return info.st_uid in (0, os.geteuid()) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def new_private_dir(path: str) -> str | None:
    """``path`` as a directory for a crate: made 0700 when new; an existing one must be an
    empty real directory (a link to one, wherever it points, is refused: the crate would be
    written where ``-o`` does not say). Returns the first directory it made (``path``, or a
    missing one above it), None where ``path`` was there: what :func:`remove_unfinished`
    takes away when the crate cannot be finished."""
    parent = os.path.dirname(os.path.abspath(path))
    first = parent
    while not os.path.lexists(os.path.dirname(first)) and os.path.dirname(first) != first:
        first = os.path.dirname(first)
    made = None if os.path.lexists(first) else first
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700, follow_symlinks=False)  # a umask may take bits away, never add any
        return made or path
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{path}: is a symbolic link; the crate needs a new directory (or an empty one), "
                          "not a link to one")
    if not stat.S_ISDIR(info.st_mode) or os.listdir(path):
        raise ConfigError(f"{path}: exists and is not an empty directory; the crate needs a new one")
    return made


def remove_unfinished(path: str, made: str | None) -> None:
    """Take away a crate that failed half-way: the directories :func:`new_private_dir` made
    (``made``), or else what was written into ``path``, which was empty: a second try needs no
    clean-up, and no half crate reads as one. Best effort: the error that stopped it is what
    the user is told."""
    import shutil

    if made is not None:
        shutil.rmtree(made, ignore_errors=True)  # never follows a link (fd-based on Linux)
        return
    with contextlib.suppress(OSError):
        for name in os.listdir(path):
            entry = os.path.join(path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry)
