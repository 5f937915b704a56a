"""``lineage-ledger run``: record one command, spool first.

In order: the configuration is checked (a bad ledger URL is refused), the inputs are
hashed, the spool is opened and a write to it is tried, and only then does the command
start. SIGINT, SIGTERM and SIGHUP received meanwhile are passed on to the command. When it
ends, its record is journaled and synced in the local spool; shipping it to the ledger
gets a short bounded wait, and a locked, busy or unreachable ledger only leaves it
waiting in the spool (``lineage-ledger spool ship``, or the next run, ships it). A ledger
that refuses it for good (permission denied, a read-only database or SQLite file, a schema
this version does not write: :func:`~.._ledger.deferred.permanent_refusal`) leaves it in
the spool too, but that is an error, said at once, not after the wait: ``run`` exits 1
where the command succeeded. So does a ledger whose history was rewritten since this
account verified it (it shrank or forked): nothing is appended to it. Otherwise the exit
status is the command's, or 128+N when a signal N ended or interrupted it, as a shell says.
A record that the spool cannot take when the command ends (its disk filled while the command
ran) is appended to the ledger itself, with a warning: the one place left to keep it. Where
the ledger does not take it either, it is journaled in the spool after all where the spool
has room again by then (for ``spool ship``); else ``run`` says that it was not recorded, and
exits 1 where the command succeeded.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import click

from lineage_ledger.backends._base import redact

from .._canonical import utcnow
from .._capture.files import entries_of, manifest_records_of
from .._capture.pending import keep_in_spool, write_in_thread
from .._environment import ESCAPED, current_environment, escape_fields, escaped_text, not_utf8
from .._errors import ArtifactError, ConfigError, LedgerError, SpoolError, VerificationError
from .._files.hashing import hash_for_record, normalize_path
from .._ledger.deferred import DeferredLedger, check_spool_writable, permanent_refusal, spool_first
from .._ledger.recorder import Recorder
from .._ledger.seen import reading_at_start, seen_values
from .._model import Record
from .._terminal import printable

__all__ = ["run_and_record"]

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stat_key(path: str) -> tuple[int, ...] | None:
    """What changes when a file is created, replaced or written (ctime moves on any write)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _sent_by_terminal() -> bool:
    """A Ctrl-C at a terminal reaches the whole foreground process group, the command too."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return True
        except OSError:
            continue
    return False


class _Forwarder:
    """Passes SIGINT, SIGTERM and SIGHUP on to the command; remembers the first one. Once the
    command is done (``finished``), one is for ``run`` itself: it is kept in ``late``, and
    ends the wait for the ledger (the record is in the spool by then)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.late: int | None = None
        self.finished = False
        self.process: subprocess.Popen[bytes] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in FORWARDED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.finished:
            if self.late is None:
                self.late = signum
            return
        if self.received is None:
            self.received = signum
        if self.process is not None:
            self.forward(signum)

    def forward(self, signum: int) -> None:
        assert self.process is not None
        if signum == signal.SIGINT and _sent_by_terminal():
            return  # the command got it from the terminal already
        try:
            self.process.send_signal(signum)
        except (ProcessLookupError, OSError):
            pass


def _run(command: list[str], forwarder: _Forwarder) -> int:
    try:
        process = subprocess.Popen(command)
    except FileNotFoundError:
        click.echo(f"error: command not found: {printable(command[0])}", err=True)
        return 127
    except PermissionError:
        click.echo(f"error: permission denied: {printable(command[0])}", err=True)
        return 126
    forwarder.process = process
    if forwarder.received is not None:  # arrived between the handlers and the start
        forwarder.forward(forwarder.received)
    return process.wait()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _same_ledger(url: str) -> str:
    """What to add to ``lineage-ledger spool ship`` for it to ship to ``url``: nothing for
    the ledger it ships to by default."""
    from .._ledger.ledger import DEFAULT_URL

    return "" if url in (DEFAULT_URL, os.environ.get("LINEAGE_LEDGER_URL")) else " (with the same --ledger)"


def _flush_unless_refused(recorder: Recorder, deadline: float, forwarder: _Forwarder) -> bool:
    """Wait until the ledger has the record (True), the deadline passes, the ledger refuses it
    for good or fails its consistency check, or a signal comes for ``run`` (False): a
    permission denied is not waited out for ``--ship-wait``, nor is Ctrl-C."""
    while True:
        remaining = deadline - time.monotonic()
        if recorder.flush(timeout=max(0.0, min(0.1, remaining))):
            return True
        error = recorder.last_error
        if remaining <= 0 or forwarder.late is not None or isinstance(error, VerificationError) \
                or permanent_refusal(error) is not None:
            return False


def _straight_into_the_ledger(deferred: DeferredLedger, records: list[Record], spool_error: SpoolError,
                              status: str, wait: float, ledger_url: str) -> tuple[bool, bool]:
    """Append ``records``, which the spool refused, to the ledger itself, waiting at most
    ``wait`` seconds (2 at least: the record has nowhere else to go); where the ledger does not
    take them, journal them in the spool after all if it has room by then, and say what became
    of them. (Not in the ledger nor the spool, whether this process may wait for its threads at exit.)"""
    write = write_in_thread(deferred, [record.stored() for record in records])  # the capture's straight write
    finished = write.wait(max(wait, 2.0))
    if finished:
        deferred.close()
    record_id = write.record_id
    spool = printable(redact(str(spool_error), deferred.url))
    ledger = printable(redact(deferred.url, deferred.url))
    if finished and write.error is None:
        click.echo(f"warning: {spool}; recorded {record_id[:12]} ({status}) straight into the ledger {ledger} "
                   "instead", err=True)
        return False, True
    why = (printable(redact(str(write.error), deferred.url)) if finished
           else f"it did not take it within {max(wait, 2.0):g}s (locked or slow?)")
    try:
        kept = keep_in_spool(write)  # the disk may have room again by now
    except SpoolError as err:
        why += f"; nor the spool at last: {printable(redact(str(err), deferred.url))}"
    else:
        click.echo(f"{'error' if finished else 'warning'}: {spool}, and the ledger {ledger} did not take the record "
                   f"either: {why}", err=True)
        click.echo(f"recorded {record_id[:12]} ({status}) after all: it waits in the spool {printable(kept)}, which "
                   f"had room again; `lineage-ledger spool ship`{_same_ledger(ledger_url)} (or the next run) ships "
                   "it", err=True)
        return finished, finished  # refused by the ledger: an error of this run; locked: a delay
    click.echo(f"error: the record of this run ({record_id[:12]}, {status}) was NOT recorded, and nothing keeps "
               f"it: {spool}, and the ledger {ledger} did not take it either: {why}", err=True)
    click.echo("the command's outputs are not vouched for by any record: once the spool has room, "
               "`lineage-ledger adopt` them (or run the command again)", err=True)
    return True, finished


def run_and_record(
    command: tuple[str, ...], *, inputs: tuple[str, ...], outputs: tuple[str, ...], name: str | None,
    run_id: str | None, parameters: dict[str, str], ledger_url: str, wait: float,
    code_digest: Callable[[tuple[str, ...], set[str]], str],
) -> int:
    """Run ``command`` and record it; returns the exit status ``run`` ends with."""
    # What could not ship is said once, below, with the reason; not again by the recorder.
    logging.getLogger("lineage_ledger.recorder").setLevel(logging.ERROR)
    # A bad URL, scheme or extra, or a ledger at a path that is not UTF-8 (the default one in
    # a working directory whose name is not: identity.refuse_path_not_utf8): refused before
    # anything runs.
    deferred = spool_first(ledger_url)
    in_artifacts = [hash_for_record(p) for p in inputs]  # bad inputs stop us before anything runs
    out_paths = [normalize_path(p) for p in outputs]  # a directory is recorded by its manifest
    # A file the code digest names (as code_digest picks them) whose absolute name is not UTF-8
    # (a relative one in a working directory whose name is not) is refused now, by
    # normalize_path, as an output's is: not after the command ran.
    for arg in command:
        if os.path.isfile(arg):
            normalize_path(arg)
    code = code_digest(command, {a.path for a in in_artifacts} | set(out_paths))
    # The spool must take the record before the command may run: its directory, a segment
    # of this process, and room on the disk.
    recorder = Recorder(deferred, exit_timeout=wait)  # type: ignore[arg-type]
    try:
        check_spool_writable(deferred.spool_dir)
    except LedgerError:
        recorder.close(0)
        raise
    reading_at_start(deferred.identity, deferred.url_given, deferred.spool_dir)  # before the command starts: what this account saw of the ledger
    before = {path: _stat_key(path) for path in out_paths}

    forwarder = _Forwarder()
    forwarder.install()
    started = utcnow()
    try:
        returncode = _run(list(command), forwarder)
    finally:
        ended = utcnow()
        forwarder.finished = True  # a signal from now on ends run's own wait, after the record is journaled
    interrupted = forwarder.received
    killed_by = -returncode if returncode < 0 else None

    problems: list[str] = []
    out_artifacts = []
    unchanged = []
    failed = returncode != 0 or interrupted is not None
    for path in out_paths:
        if failed and _stat_key(path) == before[path]:
            # A failed try vouches only for what it wrote: an old file, or none, is not its output.
            if before[path] is not None:
                unchanged.append(path)
            continue
        try:
            out_artifacts.append(hash_for_record(path))
        except ArtifactError as err:
            if not failed:
                problems.append(str(err))
    status = "succeeded" if not failed and not problems else "failed"
    # What run says of the record: an interrupted run says so (exit 128+N), as every command does.
    said = status if interrupted is None else f"{status}; interrupted by {_signal_name(interrupted)}"
    extra: dict[str, Any] = {"argv": list(command), "returncode": returncode, "cwd": os.getcwd()}
    # A command line or working directory that is not UTF-8 is kept escaped: the command ran.
    escaped = escape_fields(extra, ("argv", "cwd"))
    task_name = name or os.path.basename(command[0])  # a name given with -n is UTF-8 (checked before)
    if not_utf8(task_name):
        task_name = escaped_text(task_name)
        escaped.append("task_name")
    if escaped:
        extra[ESCAPED] = escaped
    if killed_by is not None:
        extra["killed_by_signal"] = _signal_name(killed_by)
    if interrupted is not None:
        extra["signal"] = _signal_name(interrupted)
        extra["signal_number"] = interrupted
        extra["interrupted"] = True
    if unchanged:
        extra["outputs_not_written"] = unchanged
    if problems:
        extra["problems"] = problems
    extra.update(seen_values(deferred.identity, started))  # later than every record seen before it started
    try:
        record = Record(
            engine="cli", run_id=run_id or uuid.uuid4().hex, task_id=uuid.uuid4().hex,
            task_name=task_name, status=status, started=started, ended=ended,
            inputs=entries_of(in_artifacts), outputs=entries_of(out_artifacts), code_digest=code,
            parameters=parameters, environment=current_environment(), extra=extra,
        )
    except ValueError as err:
        recorder.close(0)
        raise ConfigError(f"cannot record this task: {err}") from err
    records = [*manifest_records_of(in_artifacts + out_artifacts), record]
    try:
        # Journaled (the kernel has it) after the manifests of its directories, in one write.
        record_id = recorder.record_many(records)[-1]
    except SpoolError as err:
        # The command ran, and the spool cannot take its record now (its disk filled
        # meanwhile, say): the ledger itself is the one place left to keep it.
        recorder.close(0)
        return _exit(*_straight_into_the_ledger(deferred, records, err, status, wait, ledger_url), interrupted=interrupted,
                     killed_by=killed_by, problems=problems, returncode=returncode, forwarder=forwarder)
    recorder.sync()  # and the disk
    deadline = time.monotonic() + wait
    shipped = _flush_unless_refused(recorder, deadline, forwarder)
    # Then what dead processes left in the spool is shipped, in what is left of the wait.
    finished = recorder.close(timeout=max(0.0, deadline - time.monotonic()) if shipped else 0.0)
    if finished:
        deferred.close()
    refused = recorder.last_error if not shipped and isinstance(recorder.last_error, VerificationError) else None
    for_good = permanent_refusal(recorder.last_error) if not shipped and refused is None else None
    if shipped:
        click.echo(f"recorded {record_id[:12]} ({said})", err=True)
    elif for_good is not None:
        # Permission denied, read-only, another schema: no wait or retry settles it, so it is
        # an error of this run (exit 1), not a delay. The record is synced in the spool.
        click.echo(f"error: the ledger {printable(redact(deferred.url, deferred.url))} refused the record: "
                   f"{printable(redact(str(recorder.last_error), deferred.url))}", err=True)
        click.echo(
            f"{for_good}, and waiting will not change that: recorded {record_id[:12]} ({said}) in the spool "
            f"{printable(deferred.spool_dir)} only. It stays there, safe: once the ledger may be written, "
            f"`lineage-ledger spool ship`{_same_ledger(ledger_url)} ships it", err=True)
    elif refused is not None:
        # Its history was rewritten since this account verified it: the record is not put
        # into a history nobody accepted. It waits, synced, for the user to look.
        click.echo(f"verification failed: {printable(redact(str(refused), deferred.url))}", err=True)
        click.echo(
            f"recorded {record_id[:12]} ({said}) in the spool {printable(deferred.spool_dir)} only; it was not "
            f"appended to {printable(redact(deferred.url, deferred.url))}, which fails the consistency check above. "
            "It waits there: once the ledger is as it should be (`verify-lineage`, and `lineage-ledger "
            "reset-trust` if it was restored on purpose), `lineage-ledger spool ship` ships it", err=True)
    elif forwarder.late is not None:
        click.echo(
            f"recorded {record_id[:12]} ({said}) in the spool {printable(deferred.spool_dir)}; interrupted "
            f"({_signal_name(forwarder.late)}) while the ledger {printable(redact(deferred.url, deferred.url))} had "
            "not taken it yet. It waits there: `lineage-ledger spool ship` (or the next run) ships it", err=True)
    else:
        why = (f" ({printable(redact(str(recorder.last_error), deferred.url))})"
               if recorder.last_error is not None else " (locked or slow?)")
        click.echo(
            f"recorded {record_id[:12]} ({said}) in the spool {printable(deferred.spool_dir)}; the ledger "
            f"{printable(redact(deferred.url, deferred.url))} did not take it within {wait:g}s{why}. It waits there: "
            "`lineage-ledger spool ship` (or the next run) ships it", err=True)
    if interrupted is None:
        interrupted = forwarder.late  # run itself was interrupted: 128+N, as a shell says
    return _exit(refused is not None or for_good is not None, finished, interrupted=interrupted,
                 killed_by=killed_by, problems=problems, returncode=returncode, forwarder=forwarder)


def _exit(not_in_ledger: bool, finished: bool, *, interrupted: int | None, killed_by: int | None,
          problems: list[str], returncode: int, forwarder: _Forwarder) -> int:
    """The exit status ``run`` ends with (see its docstring); leaves at once, without waiting
    for a back-end, where a thread of this process may still be blocked in it (``finished``
    false)."""
    forwarder.restore()
    if interrupted is not None:
        code_out = 128 + interrupted
    elif killed_by is not None:
        code_out = 128 + killed_by
    elif problems:
        click.echo(f"error: declared output was not produced: {printable('; '.join(problems))}", err=True)
        code_out = 2
    elif not_in_ledger and returncode == 0:
        code_out = 1  # not recorded in the ledger (a failing command's own status says more)
    else:
        code_out = returncode
    if not finished:
        # The recorder's worker may be blocked in the back-end (a lock held elsewhere): leave
        # without letting interpreter shutdown wait on it. The record is synced in the spool.
        # A lock probe of that thread's would stay beside the ledger: removed first (only where
        # the SQLite back-end was loaded).
        sqlite_files = sys.modules.get("lineage_ledger.backends._sqlite_files")
        if sqlite_files is not None:
            sqlite_files.remove_live_probes()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code_out)
    return code_out
