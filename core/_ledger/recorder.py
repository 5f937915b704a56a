"""Write-behind recording: ``record()`` journals and enqueues; a worker ships blocks.

``record()`` encodes the record, appends one line to this process's spool segment with a
single ``write(2)`` (the bytes are in the kernel once it returns, so ``kill -9`` loses
nothing) and puts it on an in-memory queue. A background thread wakes when a batch is
full or ``max_age`` has passed, rotates the segment, fsyncs it, appends the batch to the
ledger as blocks, and deletes the segment once the back-end has them (where no new
segment can be made, a directory turned read-only, it ships the current one and empties
it instead). When the back-end is down, records wait in the spool; past ``max_pending`` unshipped records ``record()``
raises :class:`SpoolFull` instead of letting memory grow. At interpreter exit the worker
gets ``exit_timeout`` seconds to flush; whatever is left is replayed by the next open.
The worker's side (rotating, shipping, backing off) is :mod:`._recorder_shipping`'s.

``ship=False`` makes a journal-only recorder, for a process that must not wait for the
back-end at all and whose records another process ships (``lineage-ledger spool ship``,
an engine's long-lived shipper, or the next open of the ledger): no worker thread, and
:meth:`Recorder.flush`, :meth:`Recorder.close` and interpreter exit only fsync the
segment and leave it for that process (closing it releases its lock, so a replay can
take it).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
import time
import weakref

from blake3 import blake3

from .._errors import LedgerError, SpoolError, SpoolFull, VerificationError
from .._model import Record
from ._recorder_shipping import SegmentShipping, Shipper
from .refusal import permanent_refusal, say_unshipped
from .spool import Segment, SpoolWriter

__all__ = ["Recorder", "Shipper"]

log = logging.getLogger("lineage_ledger.recorder")
_LIVE: weakref.WeakSet[Recorder] = weakref.WeakSet()


class Recorder(SegmentShipping):
    def __init__(
        self,
        ledger: Shipper,
        *,
        batch_size: int = 1000,
        max_age: float = 1.0,
        max_pending: int = 100_000,
        exit_timeout: float = 10.0,
        ship: bool = True,
    ) -> None:
        if batch_size < 1 or max_pending < batch_size or max_age <= 0:
            raise ValueError("need batch_size >= 1, max_pending >= batch_size, max_age > 0")
        self.ledger = ledger
        self.batch_size = batch_size
        self.max_age = max_age
        self.max_pending = max_pending
        self.exit_timeout = exit_timeout
        #: False: journal only; another process ships this spool (see the module's docstring).
        self.ship = ship
        self.last_error: BaseException | None = None
        self._reset()
        self._begin()
        _LIVE.add(self)

    def _reset(self) -> None:
        """Fresh locks and counters, and no segment or worker yet."""
        self._writer: SpoolWriter | None = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._shipped = threading.Condition(self._lock)
        self._unshipped: list[Segment] = []  # rotated, waiting for the back-end
        self._waiting = 0  # records in the current segment plus the unshipped ones
        self._accepted_total = 0  # record() calls that returned
        self._shipped_total = 0  # of those, acknowledged by the back-end
        self._closing = False
        self._closed = False
        self._refused = 0  # shipments the ledger failed a verification for (a rewritten history)
        self._in_place = False  # no new segment could be made: the current one ships in place

    def _begin(self) -> SpoolWriter:
        """Open this process's segment and start the worker: at construction, or (under the
        lock) at a forked child's first record."""
        writer = self._writer = SpoolWriter(self.ledger.spool_dir)
        if not self.ship:  # journal only: nothing here ships, so no thread to start
            return writer
        self._worker = threading.Thread(target=self._run, name="lineage-ledger-recorder", daemon=True)
        self._worker.start()
        return writer

    def _after_fork_in_child(self) -> None:
        # The child inherited the parent's segment descriptors (and so its locks) but
        # not its worker thread. Writing there would put lines into a file the parent
        # deletes after shipping only its own records. Close our copies, which leaves
        # the parent's locks alone. Most forked children never record (OpenLineage forks
        # the task process to emit each event), so the child's own segment and worker
        # start with its first record, not here: no empty segment per fork, no thread.
        segments = [*self._unshipped, *([self._writer.current] if self._writer is not None else [])]
        for segment in segments:
            try:
                os.close(segment.fd)
            except OSError:
                pass
        closing = self._closing
        self._reset()
        self._closing = self._closed = closing

    # -- the task path ------------------------------------------------------------------
    def record(self, record: Record) -> str:
        """Journal ``record`` durably and queue it; returns its id. Never touches the back-end."""
        body = record.encode()
        record_id = blake3(body).hexdigest()  # the spool line carries it, for replay to check
        with self._lock:
            self._admit(1)
            writer = self._writer or self._begin()
            writer.append(record, record_id, body)
            self._accepted(1, writer)
        return record_id

    def record_many(self, records: list[Record]) -> list[str]:
        """Journal several records with one write (all or none) and queue them; their ids."""
        entries = []
        for record in records:
            body = record.encode()
            entries.append((record, blake3(body).hexdigest(), body))
        with self._lock:
            self._admit(len(entries))
            writer = self._writer or self._begin()
            writer.append_many(entries)
            self._accepted(len(entries), writer)
        return [record_id for _, record_id, _ in entries]

    def _admit(self, count: int) -> None:
        """Refuse records a closed or overfull recorder cannot take; called under the lock."""
        if self._closing:
            raise LedgerError("this recorder is closed")
        # A journal-only recorder keeps nothing in memory and waits for no back-end: no limit.
        if self.ship and self._waiting and self._waiting + count > self.max_pending:
            raise SpoolFull(
                f"{self._waiting} records wait for the back-end ({self.ledger.url}); "
                "it is down or slower than the workflow. Records so far are safe in the spool."
            )

    def _accepted(self, count: int, writer: SpoolWriter) -> None:
        self._waiting += count
        self._accepted_total += count
        if not self.ship:  # the lines are in the segment file, for another process to ship
            writer.current.fresh.clear()
            return
        # Wake the worker once when a batch fills, not on every later record: during an
        # outage the segment grows past a batch, and the worker must keep its back-off.
        fresh = len(writer.current.fresh)
        if fresh >= self.batch_size > fresh - count:
            self._wake.set()

    def sync(self) -> None:
        """fsync what this process journaled so far (``record()`` leaves it in the kernel,
        which a power cut can still lose); the back-end is not touched."""
        with self._lock:
            for segment in list(self._unshipped):
                try:
                    segment.sync()
                except OSError as err:
                    # EBADF: shipped and closed by the worker meanwhile (it syncs before it
                    # ships). Anything else (EIO, ENOSPC) means the record may not be on disk.
                    if err.errno != errno.EBADF:
                        raise SpoolError(f"cannot sync the spool segment {segment.path}: {err.strerror}") from err
            if self._writer is not None:
                segment = self._writer.current
                try:
                    segment.sync()
                except OSError as err:
                    raise SpoolError(f"cannot sync the spool {segment.path}: {err.strerror or err}") from err

    @property
    def pending(self) -> int:
        with self._lock:
            return self._waiting

    def flush(self, timeout: float | None = None) -> bool:
        """Ship everything recorded so far; True if the back-end has it all in time.

        Journal only (``ship=False``): fsync the spool and return True at once; the
        records are another process's to ship. False at once, too, when the ledger failed a
        verification (:attr:`last_error`: its history was rewritten since this account
        verified it): the worker still retries, with its back-off, but only the user can
        settle that (``lineage-ledger reset-trust``), not a longer wait."""
        if not self.ship:
            self.sync()
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._accepted_total  # later records need not hold this call up
        self._wake.set()
        with self._lock:
            while self._shipped_total < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if isinstance(self.last_error, VerificationError) or permanent_refusal(self.last_error) is not None:
                    return False
                self._shipped.wait(timeout=min(0.5, remaining) if remaining else 0.5)
                self._wake.set()
            return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush for at most ``timeout`` seconds and stop; unshipped records stay spooled."""
        timeout = self.exit_timeout if timeout is None else timeout
        if not self.ship:
            return self._close_journal()
        with self._lock:
            self._closing = True
            worker = self._worker
        self._wake.set()
        if worker is None:  # a forked child that recorded nothing: nothing to ship
            _LIVE.discard(self)
            return True
        refused = self._refused
        deadline = time.monotonic() + timeout
        while True:
            # Until the worker is done, the time is up, or the ledger fails a verification
            # again: a retry would not settle that (see flush), and a process's exit would
            # wait out the whole timeout for nothing.
            remaining = deadline - time.monotonic()
            worker.join(max(0.0, min(0.05, remaining)))
            if not worker.is_alive() or remaining <= 0 or self._refused != refused:
                break
        done = not worker.is_alive()
        if not done:
            say_unshipped(self.pending, self.last_error, self.ledger.spool_dir, timeout)
        _LIVE.discard(self)
        return done

    def _close_journal(self) -> bool:
        """Close a journal-only recorder: fsync its segment and let go of it (and of its
        lock), leaving the file for whichever process ships this spool."""
        with self._lock:
            if self._closing:
                return True
            self._closing = self._closed = True
            writer, self._writer = self._writer, None
        _LIVE.discard(self)
        if writer is None:  # a forked child that recorded nothing
            return True
        segment = writer.current
        try:
            if self._accepted_total:
                segment.sync()
            else:
                os.unlink(segment.path)  # an empty segment needs no replay
        except OSError as err:
            log.warning("lineage-ledger: cannot sync or remove the spool segment %s: %s", segment.path, err)
        finally:
            os.close(segment.fd)
        return True

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _flush_at_exit() -> None:
    for recorder in list(_LIVE):
        recorder.close()


def _reset_after_fork() -> None:
    for recorder in list(_LIVE):
        recorder._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_after_fork)
