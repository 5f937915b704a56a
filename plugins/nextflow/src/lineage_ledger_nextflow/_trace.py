"""Nextflow's trace file, followed while the pipeline runs.

The trace file is written by Nextflow itself (no plugin), one tab-separated row per task as
the task ends, so following it gives each task's end within a fraction of a second. The
wrapper asks for its own trace file through a configuration file of its own (``-c``), with
the fields it needs; the row is the task's report: process, name, tag, status, exit status,
attempt, work directory, container and times.

Nextflow's ``-with-weblog`` would push the same rows over HTTP, but in 25.04 it is the
``nf-weblog`` plugin, which Nextflow downloads from its plugin registry at start: offline
(``NXF_OFFLINE=true``) it refuses to start, and Maven Central does not serve it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone

log = logging.getLogger("lineage_ledger.nextflow")

FIELDS = ("task_id", "hash", "native_id", "process", "tag", "name", "status", "exit", "attempt",
          "workdir", "container", "submit", "start", "complete", "error_action")
#: Statuses of a task that ended: COMPLETED and FAILED are recorded; CACHED is reused work.
ENDED = frozenset({"COMPLETED", "FAILED", "ABORTED", "CACHED"})
POLL_SECONDS = 0.2


def config_text(trace_file: str) -> str:
    """The ``-c`` file: the wrapper's own trace file, with the fields it reads."""
    quoted = trace_file.replace("\\", "\\\\").replace("'", "\\'")
    return ("// written by nextflow-ledger: the trace rows it records tasks from\n"
            "trace {\n"
            "  enabled = true\n"
            "  overwrite = true\n"
            f"  file = '{quoted}'\n"
            f"  fields = '{','.join(FIELDS)}'\n"
            "}\n")


def parse_time(text: str | None) -> datetime | None:
    """A trace time (``2026-12-04 09:30:07.974``, the machine's local time) in UTC."""
    if not text or text == "-":
        return None
    for layout in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text, layout).astimezone(timezone.utc)
        except ValueError:
            continue
    return None


class TraceFollower:
    """Reads rows from a trace file as Nextflow appends them, on a thread of its own.

    ``on_row`` gets each row of an ended task as a dict of field -> text ("-" is Nextflow's
    "no value"). :meth:`stop` reads what is left after Nextflow exited.
    """

    def __init__(self, path: str, on_row: Callable[[dict[str, str]], None]) -> None:
        self.path = path
        self.on_row = on_row
        self.rows = 0
        self._header: list[str] | None = None
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="nextflow-trace", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._read()  # the rows written between the last poll and Nextflow's exit

    def _follow(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._read()
            except Exception:  # noqa: BLE001 - never stop following over one bad row
                log.exception("lineage-ledger: cannot read the trace file %s", self.path)

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < self._offset:
                    self._offset, self._header, self._partial = 0, None, b""  # rewritten
                handle.seek(self._offset)
                data = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return  # Nextflow creates it when the first task is submitted
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unfinished line waits for the rest of it
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line:
                continue
            cells = line.split("\t")
            if self._header is None:
                self._header = cells
                continue
            row = dict(zip(self._header, cells, strict=False))  # a short row keeps what it has
            if row.get("status") in ENDED:
                self.rows += 1
                self.on_row(row)
