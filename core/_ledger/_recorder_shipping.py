"""The :class:`~.recorder.Recorder`'s worker: it ships the spool's segments into the ledger.

The task path (:meth:`Recorder.record`) only journals and queues; everything that touches the
back-end happens here, on the recorder's one background thread. Each wake-up rotates the
current segment out (or, where no new segment can be made, ships it in place), appends the
unshipped segments' records to the ledger as blocks, oldest first, and deletes each segment
once the back-end has it. A back-end that refuses backs the worker off (0.2 s doubling to
10 s) and says why once per distinct error; records wait in the spool meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from .._errors import SpoolError, VerificationError
from .._model import StoredRecord
from .refusal import permanent_refusal
from .spool import Segment, SpoolWriter

__all__ = ["SegmentShipping", "Shipper"]

log = logging.getLogger("lineage_ledger.recorder")


class Shipper(Protocol):
    """What a :class:`~.recorder.Recorder` ships into: a :class:`~lineage_ledger.Ledger`, or the spool-first
    stand-in that opens one on first use (:mod:`.deferred`). A protocol, so that this module
    needs nothing from the ledger that uses it."""

    url: str

    @property
    def spool_dir(self) -> str: ...

    def append_records(self, records: Sequence[StoredRecord], *, block_size: int = ...) -> int: ...


class SegmentShipping:
    """The shipping half of :class:`~.recorder.Recorder`, which derives from it and sets
    these attributes up (see ``Recorder._reset``); its worker thread runs :meth:`_run`."""

    ledger: Shipper
    batch_size: int
    max_age: float
    last_error: BaseException | None
    _writer: SpoolWriter | None
    _lock: threading.Lock
    _wake: threading.Event
    _shipped: threading.Condition
    _unshipped: list[Segment]
    _waiting: int
    _shipped_total: int
    _closing: bool
    _closed: bool
    _refused: int
    _in_place: bool

    def _take_batch(self) -> bool:
        """Rotate the current segment out for shipping if it holds records and none waits;
        True where it must be shipped in place instead (no new segment can be made)."""
        with self._lock:
            assert self._writer is not None  # the worker runs only once there is one
            # While a backlog waits (back-end down), keep appending to the current segment
            # instead of opening a new locked file on every wake: descriptors are finite.
            if not len(self._writer.current) or self._unshipped:
                return False
            try:
                full = self._writer.rotate()
            except SpoolError as err:  # a directory turned read-only, no inode left
                if not self._in_place:  # said once, not on every wake
                    log.warning("lineage-ledger: %s; shipping from the current segment instead", err)
                self._in_place = True
                return True
            self._in_place = False
            if full is not None:  # (None: journaled again in the new segment, see rotate)
                self._unshipped.append(full)
            return False

    def _failed_to_ship(self, err: Exception, count: int) -> bool:
        """Say (once per distinct error) why ``count`` records wait; False."""
        if self.last_error is None or str(err) != str(self.last_error):
            log.warning("lineage-ledger: cannot ship %d records yet: %s", count, err)
        self.last_error = err
        # A rewritten history, or a ledger that refuses writes for good (permission denied, a
        # read-only database): a flush or close waits for no retry of either (see flush).
        if isinstance(err, VerificationError) or permanent_refusal(err) is not None:
            with self._lock:
                self._refused += 1
                self._shipped.notify_all()
        return False

    def _ship_in_place(self) -> bool:
        """Ship the current segment's records without rotating it (no new segment could be
        made). Once the back-end has them they are cut from the file; where more came
        meanwhile they stay in it: a replay after a crash ships them again, and the ledger
        keeps one copy (``append_records`` skips the ids it holds)."""
        with self._lock:
            assert self._writer is not None
            segment = self._writer.current
            batch = list(segment.stored())
        try:
            segment.sync()
            self.ledger.append_records(batch, block_size=self.batch_size)
        except Exception as err:  # noqa: BLE001 - the worker must outlive any failure
            return self._failed_to_ship(err, len(batch))
        self.last_error = None
        with self._lock:
            segment.drop_shipped(len(batch))
            self._acknowledged(len(batch))
        return True

    def _acknowledged(self, count: int) -> None:
        """``count`` records are in the ledger (called under the lock)."""
        self._waiting -= count
        self._shipped_total += count
        self._shipped.notify_all()

    def _ship_one(self) -> bool:
        """Ship the oldest unshipped segment; False if the back-end refused."""
        segment = self._unshipped[0]
        try:
            segment.sync()
            self.ledger.append_records(segment.stored(), block_size=self.batch_size)
        except Exception as err:  # noqa: BLE001 - the worker must outlive any failure
            return self._failed_to_ship(err, len(segment))
        self.last_error = None
        try:
            segment.delete()
        except OSError as err:  # shipped; a leftover file is replayed harmlessly later
            log.warning("lineage-ledger: cannot remove spool segment %s: %s", segment.path, err)
        with self._lock:
            self._unshipped.pop(0)
            self._acknowledged(len(segment))
        after = getattr(self.ledger, "after_shipped", None)
        if after is not None:  # e.g. a DeferredLedger ships what dead processes left, once
            after()
        return True

    def _run(self) -> None:
        backoff = 0.0
        while True:
            try:
                backoff = self._cycle(backoff)
            except Exception:  # noqa: BLE001 - never let the worker die silently
                log.exception("lineage-ledger: recorder worker error; retrying")
                backoff = 1.0
            if self._closed:
                return

    def _cycle(self, backoff: float) -> float:
        """One wake-up: take a batch, ship what waits; returns the next back-off."""
        self._wake.wait(timeout=backoff or self.max_age)
        self._wake.clear()
        in_place = self._take_batch()
        while self._unshipped:
            if not self._ship_one():
                return min(max(backoff * 2, 0.2), 10.0)
        if in_place and not self._ship_in_place():
            return min(max(backoff * 2, 0.2), 10.0)
        backoff = 0.0
        if self._closing:
            with self._lock:
                assert self._writer is not None
                if not len(self._writer.current):
                    try:
                        self._writer.current.delete()  # an empty segment needs no replay
                    except OSError as err:  # closed all the same; a replay removes it later
                        log.warning("lineage-ledger: cannot remove spool segment %s: %s",
                                    self._writer.current.path, err)
                    self._closed = True
                    self._shipped.notify_all()
        return backoff
