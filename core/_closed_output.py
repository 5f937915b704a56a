"""A standard output the command began without (``lineage-ledger checkpoint >&-``).

Python then sets ``sys.stdout`` to None, and ``click.echo`` writes nothing and says nothing:
``checkpoint >&-`` exited 0 with the checkpoint written nowhere, and ``-o /dev/stdout``
reopened whatever file the process had opened since at descriptor 1 (the lowest free one).
Here descriptor 1 is held by ``/dev/null`` opened for reading (a write to it fails, as to a
closed one, also in the command ``run`` starts), and ``sys.stdout`` is a stream whose first
write raises :class:`ConfigError`: exit 2, saying that nothing was written. A command that
writes only to standard error (``run``, ``keygen``, ``checkpoint -o FILE``) is not affected.
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import Any

from ._errors import ConfigError

__all__ = ["ClosedOutput", "hold_closed_standard_streams", "names_closed_stdout"]

_MESSAGE = ("standard output is closed (>&-): nothing was written to it; give -o FILE where the command "
            "takes one, or run it with a standard output")
# The names of descriptor 1, its directory resolved (``/proc/<pid>/fd/1`` is checked for
# this process's pid; a thread's ``/proc/<pid>/task/<tid>/fd`` is the process's table).
_FD_ONE = re.compile(r"/(?:dev|proc/(self|thread-self|\d+)(?:/task/\d+)?)/fd/1")


class _ClosedBinary(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(memoryview(data)):
            raise ConfigError(_MESSAGE)
        return 0


class ClosedOutput(io.TextIOBase):
    """``sys.stdout`` of a process started with it closed: writing anything raises."""

    closed_stream = True  # how names_closed_stdout knows it

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    @property
    def buffer(self) -> io.RawIOBase:
        return _ClosedBinary()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # click probes with b"" for a binary stream
            raise TypeError("write() argument must be str")
        if text:
            raise ConfigError(_MESSAGE)
        return 0


def hold_closed_standard_streams() -> None:
    """Hold descriptors 0, 1 and 2 where the process began without them, so that no file it
    opens (the ledger, a spool segment) becomes one of them; make a missing standard output
    refuse to be written. Called first thing by the console scripts."""
    began_closed = sys.stdout is None
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, flags)
            if held != fd:
                os.dup2(held, fd)
                os.close(held)
    if began_closed:
        sys.stdout = ClosedOutput()


def names_closed_stdout(path: str) -> bool:
    """Whether ``path`` (``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/1``, a link to one or
    to their directory) names this process's standard output while it is closed."""
    if not getattr(sys.stdout, "closed_stream", False):
        return False
    current = os.path.abspath(path)
    for _ in range(40):  # as many links as the kernel follows
        # Its directory as the kernel finds it: //dev/fd/1, LINK/1 (LINK -> /dev/fd) and
        # /proc/thread-self/fd/1 all name /proc/<pid>/.../fd/1.
        current = os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
        found = _FD_ONE.fullmatch(current)
        if found and found.group(1) in (None, "self", "thread-self", str(os.getpid())):
            return True
        try:
            target = os.readlink(current)
        except OSError:
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
    return False
