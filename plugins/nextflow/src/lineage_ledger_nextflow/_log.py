"""Nextflow's log file, followed while the pipeline runs: every event the wrapper records from.

Nextflow writes ``.nextflow.log`` (or the ``-log`` file) at DEBUG level by default, and these
lines of it say what the wrapper needs, as they happen:

    ... DEBUG nextflow.Session - Session UUID: 2f3de1ba-...
    ... DEBUG n.processor.TaskPollingMonitor - Task completed > TaskHandler[id: 3; name: COUNT (alpha);
        status: COMPLETED; exit: 0; error: -; workDir: /launch/work/51/8f8024f5...]
    ... INFO  nextflow.processor.TaskProcessor - [df/1c15d7] NOTE: Process `FLAKY` terminated with an
        error exit status (3) -- Execution is retried (1)
    ... INFO  nextflow.Session - [79/5caccd] Cached process > SPLIT (beta)
    ... INFO  nextflow.Session - [28/5cd1b1] Re-submitted process > FLAKY (beta)   (Submitted: a first try)
    ... TRACE nextflow.processor.PublishDir - publishing file: SRC -[COPY]-> DST

The last kind is logged at TRACE level only: the wrapper turns that level on for that one
logger with Nextflow's own ``-trace nextflow.processor.PublishDir`` option.

Why not the trace file (``-with-trace``): turning it on makes every task's wrapper script
sample its process's resource use, which costs about 60 ms of CPU per task (the 50-task
benchmark went from 5.0 to 8.1 s of CPU). Why not ``-with-weblog``: in 25.04 it is the
``nf-weblog`` plugin, which Nextflow downloads at start; offline it refuses to start, and
Maven Central does not serve it.

Nextflow renames the previous log to ``.nextflow.log.1`` when it starts: the follower skips
the file it found before starting Nextflow and reads the new one from its first line.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._args import PUBLISH_LOGGER

__all__ = ["PUBLISH_LOGGER", "Completed", "Handlers", "LogFollower", "Note", "Published", "cache_dir", "last_session",
           "log_inode", "parse_line"]
log = logging.getLogger("lineage_ledger.nextflow")

POLL_SECONDS = 0.2
_SESSION = re.compile(r"nextflow\.Session - Session UUID: (?P<id>[0-9a-fA-F-]{36})")
_COMPLETED = re.compile(r"Task completed > TaskHandler\[id: (?P<id>[^;]*); name: (?P<name>.*); status: "
                        r"(?P<status>\w+); exit: (?P<exit>[^;]*); error: (?P<error>.*); workDir: (?P<workdir>.*)\]$")
_NOTE = re.compile(r"\[(?P<hash>[0-9a-f]{2}/[0-9a-f]{6})\] NOTE: Process `(?P<process>[^`]*)` .*?-- "
                   r"(?P<action>Error is ignored|Execution is retried \((?P<retry>\d+)\))")
_CACHED = re.compile(r"\[(?P<hash>[0-9a-f]{2}/[0-9a-f]{6})\] Cached process > (?P<name>.*)$")
_SUBMITTED = re.compile(r"\[(?P<hash>[0-9a-f]{2}/[0-9a-f]{6})\] (?P<how>Submitted|Re-submitted) process > ")
_PUBLISHED = re.compile(r"PublishDir - publishing file: (?P<src>.+?) -\[(?P<mode>[A-Za-z_]+)\]-> (?P<dst>.+)$")


@dataclass(frozen=True)
class Completed:
    """One task try that ended, as the task monitor logged it."""

    nextflow_id: str
    name: str  # PROCESS, or PROCESS (tag)
    status: str  # the handler's state: COMPLETED even for a non-zero exit
    exit: int | None
    error: str | None
    workdir: str


@dataclass(frozen=True)
class Note:
    """What Nextflow does about a failed try: ``IGNORE`` or ``RETRY`` (with the retry number)."""

    short_hash: str  # ab/cdef01, as the console shows it
    process: str
    action: str
    retry: int | None


@dataclass(frozen=True)
class Published:
    source: str  # the file in the task's work directory
    mode: str  # COPY, SYMLINK, LINK, RELLINK, MOVE, COPY_NO_FOLLOW
    target: str


class Handlers:
    """What the follower calls, on its thread, for each event (all optional)."""

    def session(self, session: str) -> None: ...
    def completed(self, event: Completed) -> None: ...
    def note(self, event: Note) -> None: ...
    def cached(self, short_hash: str, name: str) -> None: ...
    def submitted(self, short_hash: str, retry: bool) -> None: ...
    def published(self, event: Published) -> None: ...


def parse_line(line: str, handlers: Handlers) -> None:
    """Hand one log line's event, if it has one, to ``handlers``."""
    if "Task completed > " in line:
        m = _COMPLETED.search(line)
        if m:
            code = m.group("exit").strip()
            error = m.group("error").strip()
            handlers.completed(Completed(
                m.group("id").strip(), m.group("name").strip(), m.group("status"),
                int(code) if code.lstrip("-").isdigit() else None, None if error in ("", "-") else error,
                os.path.normpath(m.group("workdir").strip())))
    elif "publishing file: " in line:
        m = _PUBLISHED.search(line)
        if m:
            handlers.published(Published(m.group("src"), m.group("mode").upper(), os.path.normpath(m.group("dst"))))
    elif "] NOTE: Process `" in line:
        m = _NOTE.search(line)
        if m:
            retry = m.group("retry")
            handlers.note(Note(m.group("hash"), m.group("process"), "RETRY" if retry else "IGNORE",
                               int(retry) if retry else None))
    elif "ubmitted process > " in line:
        m = _SUBMITTED.search(line)
        if m:
            handlers.submitted(m.group("hash"), m.group("how") == "Re-submitted")
    elif "] Cached process > " in line:
        m = _CACHED.search(line)
        if m:
            handlers.cached(m.group("hash"), m.group("name").strip())
    elif "Session UUID: " in line:
        m = _SESSION.search(line)
        if m:
            handlers.session(m.group("id"))


class LogFollower:
    """Reads the lines Nextflow appends to its log, on a thread of its own."""

    def __init__(self, path: str, handlers: Handlers | None = None,
                 on_line: Callable[[str, Handlers], None] = parse_line, *, stale: int | None = -1) -> None:
        """``stale``: the inode of the previous run's log, which Nextflow is about to rename
        (:func:`log_inode`, taken before Nextflow started; None: there was none); by default
        it is taken now."""
        self.path = path
        self.handlers = handlers or Handlers()
        self.on_line = on_line
        self._stale: int | None = log_inode(path) if stale == -1 else stale
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="nextflow-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """After Nextflow exited: read what is left, the last line too."""
        self._stop.set()
        self._thread.join()
        self._read(final=True)

    def _follow(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._read()
            except Exception:  # noqa: BLE001 - never stop following over one bad line
                log.exception("lineage-ledger: cannot read Nextflow's log %s", self.path)

    def _read(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                if inode == self._stale:
                    return  # Nextflow has not started its own log yet
                if inode != self._inode:
                    self._inode, self._offset, self._partial = inode, 0, b""
                handle.seek(self._offset)
                data = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = b"" if final else lines.pop()  # an unfinished line waits for the rest
        for raw in lines:
            if raw:
                self.on_line(raw.decode("utf-8", "replace").rstrip("\r"), self.handlers)


def log_inode(path: str) -> int | None:
    """The inode of the log at ``path`` now (None: there is none)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def cache_dir(launch_dir: str) -> str:
    """Nextflow's own directory for runs launched from ``launch_dir`` (its history, its task
    cache): ``$NXF_CACHE_DIR`` (relative: to the launch directory), else ``.nextflow`` there.
    Read from ``.nextflow`` whatever that said, a ``-resume`` found no session and checked
    nothing, under ``strict`` too."""
    return os.path.join(launch_dir, os.environ.get("NXF_CACHE_DIR") or ".nextflow")


def last_session(launch_dir: str) -> str | None:
    """The session ``-resume`` without an id resumes: the last line of the history in
    :func:`cache_dir`."""
    try:
        with open(os.path.join(cache_dir(launch_dir), "history"), encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except OSError:
        return None
    if not lines:
        return None
    cells = lines[-1].split("\t")
    return cells[5] if len(cells) > 5 else None
