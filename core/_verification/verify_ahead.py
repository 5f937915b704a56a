"""The last part of a results directory verified in a second process, meanwhile.

``verify-lineage DIR`` of the outputs of 10,000 tasks proves and decodes 10,000 records,
walks as many lineages and hashes as many files: CPU work in one interpreter, which threads
do not overlap. The files alone were hashed in a child process (:mod:`.._files.hash_ahead`),
a fifth of the work; the rest kept one processor busy and the other mostly idle. Here a
second interpreter verifies the last part of the paths (:func:`split_at`) while this one
verifies the first, each with every check :func:`.verify._verify_window` makes: the records
proved against the verified tree head, the index rows against their records, the names kept
complete, the lineage back to the sources, each file hashed.

What this process takes from the child is one bit a path: it verified, with no problem met
(``+``), or anything else (``-``). A path the child did not verify (``-``, no answer, a
child that failed to start, died, or answered anything unexpected) is verified here, as it
would have been without the child: every failure is found, explained and reported by this
process. And only where the path is one the report counts and does not show (past
:data:`~.report.SHOWN` verified): a path kept with its tree is verified here. The child
answers only when it runs the parent's own package (the folder of ``lineage_ledger`` is the
same), on the same ledger, from the same verified tree head (size and root); else it
answers nothing and this process verifies every path.

Used only where it pays: :data:`AT_LEAST` paths or more, on a ledger a second process can
open (an SQLite file, a PostgreSQL server), where a processor is idle as it starts (the
runnable tasks of ``/proc/loadavg`` fewer than the processors this process may use: on a
busy machine a second process only adds its start, 0.25 s of CPU, and shares no work).
``LINEAGE_VERIFY_AHEAD=never`` turns it off, ``always`` on whatever the load (tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Collection
from typing import IO, TYPE_CHECKING

from .._files.hash_ahead import stop_child

if TYPE_CHECKING:
    from .._ledger.ledger import Ledger
    from .._log.tree_head import TreeHead

__all__ = ["AT_LEAST", "PACKAGE", "VerifyAhead", "split_at", "verify_ahead"]

# Paths from which a second process pays: it starts in about 0.2 s of CPU (an interpreter,
# the package, the ledger opened and its head read), what verifying 1,500 outputs of their
# own tasks costs; and the first SHOWN paths are verified here whatever (kept with their trees).
AT_LEAST = 4_000
# What the child's start costs, in paths this process verifies meanwhile (see AT_LEAST), and
# how much longer a path takes the child (it hashes its files itself: no third process).
_START_COST = 1_500
_SLOWER = 1.15
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_verify_part.py")
# The package this module belongs to (its folder, links resolved): the child answers only where
# it is the parent's. Worked out from this file, not by importing the package from inside it.
PACKAGE = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
_SCHEMES = ("sqlite", "postgresql")  # ledgers another process opens as this one does


def split_at(count: int, shown: int) -> int:
    """The index of the first path the child verifies, of ``count``: the two processes
    end together (the child starts :data:`_START_COST` paths late, and verifies a path in
    :data:`_SLOWER` times as long), this one keeping at least the first ``shown`` (kept
    with their trees, so verified here)."""
    return min(count, max(shown + _START_COST, round((_START_COST + _SLOWER * count) / (1 + _SLOWER))))


class VerifyAhead:
    """A child verifying ``paths[first:]`` (see the module's docstring). A context manager:
    leaving it stops the child."""

    def __init__(self, ledger: Ledger, paths: list[str], first: int, plain: Collection[str], head: TreeHead,
                 state_dir: str) -> None:
        self.first = first
        self._expected = len(paths) - first
        self._answered = 0
        self._out: IO[bytes] | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stop: weakref.finalize | None = None
        self._head_read = False
        theirs = paths[first:]
        task = {
            "sys_path": sys.path, "package": PACKAGE,
            "url": ledger.backend.url, "spool": ledger._spool_root, "state_dir": state_dir,
            "head": [head.size, head.root], "paths": theirs,
            "plain": [i for i, path in enumerate(theirs) if path in plain],
        }
        try:
            # Through a private, unnamed file (a PostgreSQL URL holds its password: never in
            # the command line), and no wait for the child to read it, as hash_ahead does.
            with tempfile.TemporaryFile() as listing:
                listing.write(json.dumps(task, ensure_ascii=True).encode("ascii"))
                listing.seek(0)
                self._child = subprocess.Popen([sys.executable, _CHILD], stdin=listing,
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self._stop = weakref.finalize(self, stop_child, self._child)
            self._out = self._child.stdout
        except (OSError, ValueError, subprocess.SubprocessError):
            self.close()  # no child: every path is verified here

    def verdicts(self, count: int) -> list[bool]:
        """For the child's next ``count`` paths (in their order), whether the child verified
        each with no problem met; False for every path it did not answer so."""
        found: list[bool] = []
        if not self._head_read:
            self._head_read = True
            if self._line() != b"head":
                self.close()
        while len(found) < count and self._out is not None:
            line = self._line()
            if line not in (b"+", b"-") or self._answered >= self._expected:
                self.close()  # not what the child writes, or more of it: trust none of what follows
                break
            self._answered += 1
            found.append(line == b"+")
        return found + [False] * (count - len(found))

    def _line(self) -> bytes | None:
        if self._out is None:
            return None
        try:
            raw = self._out.readline()
        except (OSError, ValueError):
            raw = b""
        if not raw.endswith(b"\n"):  # the child ended or died: the rest is verified here
            self.close()
            return None
        return raw[:-1]

    def close(self) -> None:
        self._out = None
        self._child = None
        if self._stop is not None:
            self._stop()

    def __enter__(self) -> VerifyAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_ahead(ledger: Ledger, paths: list[str], plain: Collection[str], head: TreeHead,
                 shown: int) -> VerifyAhead | None:
    """A :class:`VerifyAhead` for the last part of ``paths`` where it pays (see the module's
    docstring), else None."""
    if len(paths) < AT_LEAST or not isinstance(getattr(ledger.backend, "url", None), str):
        return None
    scheme = ledger.backend.url.partition(":")[0].lower().partition("+")[0]
    if scheme not in _SCHEMES:
        return None
    wanted = os.environ.get("LINEAGE_VERIFY_AHEAD", "")
    if wanted == "never" or wanted != "always" and not _idle_processor():
        return None
    from .._environment import state_root

    try:
        state_dir = ledger._state_dir or state_root()
    except Exception:  # a state folder this process cannot name: no second process
        return None
    return VerifyAhead(ledger, paths, split_at(len(paths), shown), plain, head, state_dir)


def _idle_processor() -> bool:
    """Whether a processor this process may use is idle now: fewer tasks runnable (this one
    included) than such processors. Without ``/proc/loadavg``, whether there are two."""
    try:
        processors = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        processors = os.cpu_count() or 1
    if processors < 2:
        return False
    try:
        with open("/proc/loadavg", "rb") as loadavg:
            runnable = int(loadavg.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return True
    return runnable < processors


Answer = Callable[[str, bool], None]
