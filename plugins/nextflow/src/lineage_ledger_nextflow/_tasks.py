"""Nextflow's log events turned into :class:`lineage_ledger.TaskRun` records.

One record per task try that ran. A try that exited 0 is recorded when the task monitor logs
it. A failed try waits for Nextflow's ``NOTE`` line about it (``Error is ignored``,
``Execution is retried (N)``), which gives its error action; tries still waiting at the end
(``terminate``, ``finish``) are recorded then, without one. A retried task's tries each have a
work directory and a record; its attempt number comes from the log's submission and retry
lines (:mod:`._attempts`). Tasks taken from the cache ran in an earlier run, which recorded them.

A record's times are the head node's, where the wrapper runs, as every other record of the
run (the publications) and every other recorder there: a try ended when the wrapper read its
end in the log, and started its run time before that, as the work directory's
``.command.begin`` and ``.exitcode`` give it. Those two files' own times are the file server's
clock (it sets their modification times), kept in ``extra.file_server_times``. Taken as the
record's times they made a run keep two clocks: with the file server an hour ahead, a task
that read a file counted as having seen it an hour after a colleague's later rewrite on the
head node, so ``verify-lineage`` failed the new file and passed the old one put back
(tests/test_nextflow_clock.py). The log is read every 0.2 s, so a try's head time is a
little late; its files are read and hashed only then too, so the record says what they held
at that time.

The files a task's ``publishDir`` published get a second record once Nextflow has exited
(publishing runs after the task ends, on a thread pool): ``PROCESS:publish``, reading the
files in the work directory and writing the published copies or links. ``verify-lineage``
on a published file therefore walks back through the task that made it to the sources. What a
``-resume`` publishes for its cached tasks is recorded too where it is theirs (:mod:`._republished`).

Records go through :class:`lineage_ledger.TaskCapture`: ``post`` returns at once, the
capture's worker hashes and writes each record to the durable spool first, then the ledger.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from ._as_read import inputs_as_read
from ._attempts import Attempts
from ._log import Completed, Handlers, Note, Published
from ._not_followed import WARNINGS_SHOWN, more_tries_line, recorded_warning
from ._republished import cached_owner, said_more, say_kept, worth_recording
from ._unrecordable import shown
from ._unverified import Unverified
from ._workdir import a_link_to_no_file, read_workdir, task_key

log = logging.getLogger("lineage_ledger.nextflow")

SCRIPT_KEPT = 8 << 10  # bytes of a task's script kept in the record (its digest covers all of it)
TAIL = 2 << 10  # bytes of a failed task's .command.err kept


class TaskRecorder(Handlers):
    """Receives the log's events on the follower's thread; ``finish`` after Nextflow exited."""

    def __init__(self, capture: Any, params: Mapping[str, Any], unverified: Unverified | None = None) -> None:
        self.capture = capture
        self.params = dict(params)
        #: Under warn, the files a tampered ledger could not vouch for (see ``_unverified``).
        self.unverified = unverified
        self.session_id: str | None = None
        self.tasks: dict[str, dict[str, Any]] = {}  # key -> what the session file keeps
        self.cached_count = 0
        self._cached: dict[str, str] = {}  # short hash -> name of the tasks taken from the cache
        #: The session's list before the run (key -> task), whose published targets were checked
        #: then; None: no check (``off``), and a cached task's publications are not recorded.
        self.listed: Mapping[str, Any] | None = None
        #: key -> [source, target] pairs recorded for cached tasks, for the session's list.
        self.republished: dict[str, list[list[str]]] = {}
        self.recorded = 0
        self.publications = 0
        self._published: list[Published] = []
        self._failed: dict[str, tuple[Completed, int, datetime]] = {}  # short hash -> try waiting for its NOTE
        self._notes: dict[str, Note] = {}  # a NOTE that came first
        self._attempts = Attempts()  # which attempt of its task each try is
        self._guessed: set[str] = set()  # short hashes of tries whose attempt number is a guess
        self._lock = threading.Lock()
        self._not_followed_tries = 0  # task tries recorded with links not followed (the first few warned of)
        self._not_utf8_tries = 0  # task tries recorded with files whose path is not UTF-8 (the first few said)
        self._changed_tries = 0  # task tries with inputs changed after they began (the first few said)

    # -- the log's events ---------------------------------------------------------------
    def session(self, session: str) -> None:
        self.session_id = session

    def cached(self, short_hash: str, name: str) -> None:
        self.cached_count += 1
        self._cached[short_hash] = name

    def published(self, event: Published) -> None:
        self._published.append(event)

    def submitted(self, short_hash: str, retry: bool) -> None:
        self._attempts.submitted(short_hash, retry)

    def completed(self, event: Completed) -> None:
        seen = datetime.now(timezone.utc)  # when the try ended, by the head node's clock (the module's docstring)
        short = _short_hash(event.workdir)
        attempt, guessed = self._attempts.of(short, event.name, event.workdir)
        if guessed:
            self._guessed.add(short)
        if event.exit == 0 and event.status == "COMPLETED" and event.error is None:
            self._record(event, attempt, None, seen)
            return
        note = self._notes.pop(short, None)
        if note is None:
            self._failed[short] = (event, attempt, seen)
        else:
            self._failed_with(event, attempt, note, seen)

    def note(self, event: Note) -> None:
        waiting = self._failed.pop(event.short_hash, None)
        if waiting is None:
            self._notes[event.short_hash] = event
        else:
            self._failed_with(*waiting[:2], event, waiting[2])

    def _failed_with(self, event: Completed, attempt: int, note: Note, seen: datetime) -> None:
        if note.retry is not None:  # N failed tries of this task so far: this one was attempt N
            self._attempts.retried(event.name, note.retry, event.workdir)
            attempt = note.retry
            self._guessed.discard(note.short_hash)
        self._record(event, attempt, note.action, seen)

    # -- at the end ---------------------------------------------------------------------
    def finish(self) -> None:
        """Failed tries Nextflow said nothing more about, how many tries with links not followed were
        not warned of, then one publish record per task."""
        for event, attempt, seen in list(self._failed.values()):
            self._record(event, attempt, None, seen)
        self._failed.clear()
        if self._not_followed_tries > WARNINGS_SHOWN:  # every try is recorded by now; said before a publication fails
            log.warning("%s", more_tries_line(self._not_followed_tries - WARNINGS_SHOWN))
        if self._not_utf8_tries > WARNINGS_SHOWN:
            log.warning("lineage-ledger: ... and %d more task try(s) wrote or read files whose path is not valid UTF-8 "
                        "text, in no record either (extra.not_utf8 of each record names them)",
                        self._not_utf8_tries - WARNINGS_SHOWN)
        if self._changed_tries > WARNINGS_SHOWN:
            log.warning("lineage-ledger: ... and %d more task try(s) whose inputs changed while they ran, in no "
                        "record as read either (extra.changed_while_running of each record names them)",
                        self._changed_tries - WARNINGS_SHOWN)
        self._publish()

    # -- records ------------------------------------------------------------------------
    def _record(self, event: Completed, attempt: int, error_action: str | None, seen: datetime) -> None:
        try:
            self._record_try(event, attempt, error_action, seen)
        except Exception:  # noqa: BLE001 - one task's record, never the pipeline
            log.exception("lineage-ledger: could not record task %s (%s)", event.name, event.workdir)

    def _record_try(self, event: Completed, attempt: int, error_action: str | None, seen: datetime) -> None:
        from lineage_ledger import TaskRun, code_digest

        work = read_workdir(event.workdir)
        key = task_key(event.workdir)
        process, tag = _split_name(event.name)
        exit_status = event.exit if event.exit is not None else work.exit_code
        succeeded = event.exit == 0 and event.status == "COMPLETED" and event.error is None
        extra: dict[str, Any] = {
            "workdir": event.workdir, "hash": key, "nextflow_task_id": event.nextflow_id, "name": event.name,
            "tag": tag, "nextflow_status": event.status, "exit_status": exit_status,
            "error_action": error_action, "staged": work.staged, "container": work.container,
            "conda_env": work.conda,
        }
        if event.error is not None:
            extra["error"] = event.error
        if _short_hash(event.workdir) in self._guessed:  # tries of one name whose numbers differ: see _attempts
            extra["attempt_guessed"] = True
        server_times = {name: _utc(stamp).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for name, stamp in
                        (("command_begin", work.started), ("exitcode", work.ended)) if stamp is not None}
        if server_times:
            extra["file_server_times"] = server_times
        if work.script is not None:
            extra["script"] = work.script[:SCRIPT_KEPT].decode("utf-8", "replace")
        if not succeeded:
            extra["stderr_tail"] = _tail(os.path.join(event.workdir, ".command.err"))
        if work.problems:
            extra["workdir_problems"] = work.problems
        if work.links:
            extra["links"] = work.links
        if work.stored:  # moved aside with the work directory under rerun (_preflight.quarantine)
            extra["stored"] = work.stored
        if work.not_utf8:  # in no input or output list: named here, escaped by the core (\xNN)
            extra["not_utf8"] = work.not_utf8
        if work.not_followed:
            extra["links_not_followed"] = work.not_followed
            if work.not_followed_more:
                extra["links_not_followed_more"] = work.not_followed_more
        environment = {"container": work.container, "conda_env": work.conda}
        read, known, changed = inputs_as_read(work)  # never what was there after the task began (_as_read)
        inputs, outputs = self._vouched(read, work.outputs, extra)
        if changed:
            extra["not_verified"] = sorted({*extra.get("not_verified", ()), *changed})
            extra["changed_while_running"] = changed
        run = TaskRun(
            task_id=key, task_name=process, status="succeeded" if succeeded else "failed",
            started=seen - _ran_for(work.started, work.ended), ended=seen,
            inputs=inputs, outputs=outputs,
            code_digest=code_digest(work.script) if work.script is not None else None,
            parameters={"params": self.params, "tag": tag},
            environment_extra={k: v for k, v in environment.items() if v is not None},
            attempt=attempt, extra=extra, known=known, known_outputs={},
        )
        self.capture.post(run)
        with self._lock:
            self.recorded += 1
            if work.not_utf8:  # in no record: said (the first few tries; the others counted by finish())
                self._not_utf8_tries += 1
                if self._not_utf8_tries <= WARNINGS_SHOWN:
                    log.warning("lineage-ledger: task %s (%s): %d file(s) whose path is not valid UTF-8 text are in "
                                "no record (a record names files by their paths, as text): %s; rename them to record "
                                "them", event.name, event.workdir, len(work.not_utf8),
                                ", ".join(shown(p) for p in work.not_utf8[:3]) + (", ..." if len(work.not_utf8) > 3
                                                                                  else ""))
            if changed:  # left out of the record: the user must know why
                self._changed_tries += 1
                if self._changed_tries <= WARNINGS_SHOWN:
                    log.warning("lineage-ledger: task %s (%s): %d input file(s) changed while it ran, or before it was "
                                "read (modified after its .command.begin): what it read is in no record: %s; a "
                                "publishDir that writes over a task's own input, or a task that writes to its input, "
                                "does this", event.name, event.workdir, len(changed),
                                ", ".join(shown(p) for p in changed[:3]) + (", ..." if len(changed) > 3 else ""))
            if work.not_followed:  # what they lead to is in no record: the user must know (_not_followed)
                self._not_followed_tries += 1
                if self._not_followed_tries <= WARNINGS_SHOWN:  # the others counted by finish()
                    log.warning("%s", recorded_warning(event.name, event.workdir, work.not_followed,
                                                       work.not_followed_more))
            self.tasks[key] = {
                "process": process, "name": event.name, "workdir": event.workdir, "status": run.status,
                "inputs": list(work.inputs), "outputs": list(work.outputs), "published": [],
                "links": dict(work.links), "stored": list(work.stored), "not_utf8": list(work.not_utf8),
            }
            if work.not_followed:  # said again by the check before -resume
                self.tasks[key].update(links_not_followed=dict(work.not_followed),
                                       links_not_followed_more=work.not_followed_more)

    def _publish(self) -> None:
        from lineage_ledger import TaskRun

        by_task: dict[str, dict[tuple[str, str], Published]] = {}
        by_workdir = {task["workdir"]: key for key, task in self.tasks.items()}
        again: dict[str, dict[tuple[str, str], Published]] = {}  # cached tasks' work directories -> publications
        for item in self._published:
            key = _owner(item.source, by_workdir)
            if key is not None:
                by_task.setdefault(key, {})[(item.source, item.target)] = item  # logged twice at times
            elif self.listed is not None and (workdir := cached_owner(item.source, self._cached)) is not None:
                again.setdefault(workdir, {})[(item.source, item.target)] = item
        now = datetime.now(timezone.utc)
        for key, found in by_task.items():
            items = list(found.values())
            task = self.tasks[key]
            task["published"] = [[i.source, i.target] for i in items]
            extra = {"workdir": task["workdir"], "hash": key, "published": {i.target: i.mode for i in items},
                     "nextflow_status": "PUBLISHED"}
            sources, targets = _published_files(task, items, extra)
            inputs, outputs = self._vouched(sources, targets, extra)
            self.capture.post(TaskRun(
                task_id=f"{key}/publish", task_name=f"{task['process']}:publish", status="succeeded",
                started=now, ended=now, inputs=inputs, outputs=outputs, extra=extra,
            ))
        self.publications = len(by_task) + self._publish_cached(again)

    def _publish_cached(self, again: Mapping[str, Mapping[tuple[str, str], Published]]) -> int:
        """A publication record for each cached task with targets to record (:mod:`._republished`)."""
        from lineage_ledger import TaskRun

        listed = self.listed or {}
        said = made = 0
        now = datetime.now(timezone.utc)
        for workdir, found in again.items():
            key = task_key(workdir)
            name = self._cached[_short_hash(workdir)]
            task = listed.get(key) or {}
            pairs, digests, kept = worth_recording(list(found), task.get("published") or [])
            said = say_kept(name, kept, said)
            if not pairs:
                continue
            items = [found[pair] for pair in pairs]
            process = task.get("process") or _split_name(name)[0]
            extra = {"workdir": workdir, "hash": key, "published": {i.target: i.mode for i in items},
                     "nextflow_status": "PUBLISHED", "cached": True}
            sources, targets = _published_files({"workdir": workdir}, items, extra)
            inputs, outputs = self._vouched(sources, targets, extra)
            self.capture.post(TaskRun(
                task_id=f"{key}/publish", task_name=f"{process}:publish", status="succeeded", started=now, ended=now,
                inputs=inputs, outputs=outputs, extra=extra, known=digests,
            ))
            self.republished[key] = [[i.source, i.target] for i in items]
            made += 1
        said_more(said)
        return made


    def _vouched(self, inputs: list[str], outputs: list[str], extra: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The files a record may list: all of them, unless the ledger failed its pre-run check
        under warn and the task read a file it could not vouch for (then ``extra`` names them)."""
        if self.unverified is None:
            return inputs, outputs
        return self.unverified.apply(inputs, outputs, extra)


def _published_files(task: Mapping[str, Any], items: list[Published],
                     extra: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The sources and targets a publication record names. A link that does not lead to a
    file (a ``path 'idx'`` output that is a link to a directory, a link to nothing, and its
    published link) is not named: hashing it would walk whatever it leads to (``/``, say).
    The task's record keeps its source by its target text (``extra.links``); ``extra.not_recorded``
    names it here. A copy Nextflow made of what such a link leads to is a directory of its
    own, and named."""
    sources: dict[str, None] = {}
    targets: dict[str, None] = {}
    left: list[str] = []
    for item in items:
        if not a_link_to_no_file(item.source):
            sources[item.source] = None  # a file, a directory the task made: as ever
            targets[item.target] = None
            continue
        left.append(item.source)
        if os.path.islink(item.target):
            left.append(item.target)  # symlink modes: a link to the link
        else:
            targets[item.target] = None
    if left:
        extra["not_recorded"] = {path: "a symbolic link that does not lead to a file: not followed (the task's "
                                 "record keeps it by its target text, extra.links)" for path in left}
    return list(sources), list(targets)


def _owner(source: str, by_workdir: Mapping[str, str]) -> str | None:
    """The key of the task whose work directory holds the published ``source``: its parent
    folder, or one above it (an output ``path 'out/*.txt'`` is published from a folder of
    the work directory; taken for the work directory, it matched no task and its
    publication was not recorded)."""
    folder = os.path.dirname(os.path.normpath(source))
    while True:
        key = by_workdir.get(folder)
        if key is not None:
            return key
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _split_name(name: str) -> tuple[str, str | None]:
    """``COUNT (alpha)`` -> (``COUNT``, ``alpha``): process names have no spaces."""
    process, _, rest = name.partition(" (")
    return process, (rest[:-1] if rest.endswith(")") else rest or None)


def _short_hash(workdir: str) -> str:
    key = task_key(workdir)
    return f"{key[:2]}/{key[2:8]}"


def _utc(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, timezone.utc)


def _ran_for(began: float | None, ended: float | None) -> timedelta:
    """How long a try ran, by the file server's clock (a difference of two of its times is
    right whatever its offset); none where a file is missing or a clock stepped back."""
    if began is None or ended is None or ended < began:
        return timedelta(0)
    return timedelta(seconds=ended - began)


def _tail(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - TAIL))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None
