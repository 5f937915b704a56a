"""Files hashed ahead in a child process while the caller reads and proves records.

Verifying a results directory (``verify-lineage DIR``, an audit's outputs on disk) reads and
hashes every file, and proves and decodes the records that name them. Both are CPU work in
one interpreter, and threads do not overlap them: a hashing thread hands the interpreter
lock over at every system call, and 10,000 small files then took three times as long (see
:data:`.hashing._SLOW_FILE`). A second *process* does overlap them: :class:`HashAhead`
starts one (:mod:`._digest` run as a script, which imports nothing of the package, so it
starts in about 30 ms) on a window of paths, and answers :meth:`HashAhead.take` from the
lines it writes back, in the window's order.

Only what the child is sure of is taken from it: a regular file whose stat signature was
the same before and after it was read. For anything else (not there, a directory, a link
to one, unreadable, changed meanwhile, or a child that failed to start or died), ``take``
answers None and the caller hashes the file itself, as it would have without the child,
for the same answer or the same error. A digest from the child is as fresh as one taken in
the loop: both are taken during the command, before the file's check.

Used only where it pays: a window of at least :data:`_AT_LEAST` files, on a machine where
this process may run on two processors or more.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import weakref
from typing import IO

from .._model import Artifact

__all__ = ["HashAhead", "hash_ahead", "stop_child"]

# Fewer files than this are hashed in the loop: starting the child costs about 30 ms of CPU
# (an interpreter and BLAKE3), what hashing 3,000 small files costs.
_AT_LEAST = 1_000
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_digest.py")
_set_path, _set_digest, _set_size = (vars(Artifact)[name].__set__ for name in ("path", "blake3", "size"))


class HashAhead:
    """A child hashing ``paths`` (normal absolute paths) in their order; see the module's
    docstring. A context manager: leaving it stops the child."""

    def __init__(self, paths: list[str]) -> None:
        self._index = {path: i for i, path in enumerate(paths)}
        self._read = 0  # lines read from the child so far
        self._lines: dict[int, str] = {}  # read, not yet taken: a path asked out of order
        self._out: IO[bytes] | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stop: weakref.finalize | None = None
        try:
            # The paths through a private, unnamed file: a pipe would make this process wait
            # until the child has started and read them (a pipe holds 64 KiB).
            with tempfile.TemporaryFile() as listing:
                listing.write(b"".join(os.fsencode(p) + b"\0" for p in paths))
                listing.seek(0)
                # Run by its path: the first place the child imports from is this package's
                # own folder, never the working directory (another user's, perhaps). Not
                # isolated (-I): BLAKE3 may be found where this process found it, in the
                # user's site-packages or a PYTHONPATH a cluster's module system set.
                self._child = subprocess.Popen([sys.executable, _CHILD], stdin=listing,
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            # Stopped when this object goes, or at exit, if no one closed it: a caller whose
            # with-block was never entered (an interrupt or a store error just before it) left
            # the child hashing, then waiting on its full pipe for as long as this process lived.
            self._stop = weakref.finalize(self, stop_child, self._child)
            self._out = self._child.stdout
        except (OSError, ValueError, subprocess.SubprocessError):
            self.close()  # no child: every file is hashed by the caller

    def take(self, path: str) -> Artifact | None:
        """The file at ``path`` as the child hashed it; None where the caller must hash it
        (see the module's docstring)."""
        at = self._index.get(path)
        if at is None or at < self._read and at not in self._lines:
            return None  # not given, or taken already
        line = self._lines.pop(at, None)
        while line is None and self._out is not None:
            got = self._next()
            if got is None:
                return None
            if self._read - 1 == at:
                line = got
            else:
                self._lines[self._read - 1] = got  # a line for a path asked later
        if line is None or line == "-":
            return None
        digest, _, size = line.partition(" ")
        artifact = object.__new__(Artifact)
        _set_path(artifact, path)
        _set_digest(artifact, digest)
        _set_size(artifact, int(size))
        return artifact

    def _next(self) -> str | None:
        assert self._out is not None
        try:
            raw = self._out.readline()
        except (OSError, ValueError):
            raw = b""
        if not raw.endswith(b"\n"):  # the child ended or died: the rest is hashed in the loop
            self.close()
            return None
        self._read += 1
        line = raw[:-1].decode("ascii", "replace")
        digest, _, size = line.partition(" ")
        if line != "-" and not (len(digest) == 64 and size.isdigit()):
            self.close()  # not what the child writes: trust none of it
            return None
        return line

    def close(self) -> None:
        self._out = None
        self._child = None
        if self._stop is not None:
            self._stop()  # once: a finalizer that has run does nothing

    def __enter__(self) -> HashAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Stop a child process of ours (the hashing child, verify_ahead's) (killed if it still runs) and let go of its pipe."""
    if child.poll() is None:
        child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def hash_ahead(paths: list[str]) -> HashAhead | None:
    """A :class:`HashAhead` for ``paths`` where it pays (see :data:`_AT_LEAST`), else None."""
    if len(paths) < _AT_LEAST:
        return None
    try:
        processors = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        processors = os.cpu_count() or 1
    return HashAhead(paths) if processors > 1 else None
