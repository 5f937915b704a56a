"""What the wrapper reads from Nextflow's log file: the session id and the published files.

Nextflow logs each file ``publishDir`` (or a workflow output) publishes at the TRACE level of
``nextflow.processor.PublishDir``::

    ... TRACE nextflow.processor.PublishDir - publishing file: SRC -[COPY]-> DST

The wrapper turns that level on with Nextflow's own ``-trace nextflow.processor.PublishDir``
option; nothing else is logged at TRACE. Publishing runs on a thread pool after the task has
ended, so these lines are read once Nextflow has exited (it waits for the pool).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PUBLISH_LOGGER = "nextflow.processor.PublishDir"
_PUBLISHED = re.compile(r"PublishDir - publishing file: (?P<src>.+?) -\[(?P<mode>[A-Za-z_]+)\]-> (?P<dst>.+)$")
_SESSION = re.compile(r"nextflow\.Session - Session UUID: (?P<id>[0-9a-fA-F-]{36})")


@dataclass(frozen=True)
class Published:
    source: str  # the file in the task's work directory
    mode: str  # COPY, SYMLINK, LINK, RELLINK, MOVE, COPY_NO_FOLLOW
    target: str


@dataclass
class LogFacts:
    session: str | None
    published: list[Published]


def read_log(path: str) -> LogFacts:
    """The session id and every published file, in publishing order, each once."""
    session = None
    published: dict[tuple[str, str], Published] = {}
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return LogFacts(None, [])
    with handle:
        for line in handle:
            if session is None:
                found = _SESSION.search(line)
                if found:
                    session = found.group("id")
                    continue
            if "publishing file: " not in line:
                continue
            match = _PUBLISHED.search(line.rstrip("\n"))
            if match:
                item = Published(match.group("src"), match.group("mode").upper(), os.path.normpath(match.group("dst")))
                published.pop((item.source, item.target), None)  # keep the last: it is what is on disk
                published[(item.source, item.target)] = item
    return LogFacts(session, list(published.values()))


def last_session(launch_dir: str) -> str | None:
    """The session ``-resume`` without an id resumes: the last line of ``.nextflow/history``."""
    try:
        with open(os.path.join(launch_dir, ".nextflow", "history"), encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except OSError:
        return None
    if not lines:
        return None
    cells = lines[-1].split("\t")
    return cells[5] if len(cells) > 5 else None
