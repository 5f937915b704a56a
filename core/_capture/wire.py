"""What crosses between the engine's process and its recording process, and how it is encoded.

Both :mod:`.process` (the engine's side) and :mod:`.child` (the recording process) speak
this; it is kept apart from either so that each reads what the other sends from one place.

Messages (framed by :mod:`.channel`) go over the child's standard input and output; task
reports go through the shared :mod:`.ring`::

    parent -> child   ring: R a report, F a report whose id the caller waits for
                      M: ("nudge",) after an F: record now   M: ("flush", token, timeout)
                      M: ("digest", token, path)
                      end of input: take the rest of the ring, record, flush,
                      answer ("closed", ok, failures, outputs)
    child -> parent   M: ("ready",)   M: ("done", upto, {seq: (ok, id or error)}, failures)
                      M: ("unreadable", first, last)   M: ("flushed", token, ok)
                      M: ("digest", token, entry)   M: ("log", level, logger name, message)

A report is a tuple of the :class:`~.task.TaskRun`'s fields, pickled (about 2 us on the
engine's thread, which is the point: everything costlier happens in the child). Both ends
are our own code, started by the same user from the same interpreter, so pickle's trust
model holds; a report the child cannot unpickle (a parameter whose class only the engine's
process can import) is sent back as ``unreadable`` and recorded in the engine's process.
"""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from operator import attrgetter

from .channel import MESSAGE, Channel
from .task import TaskRun

__all__ = ["REPORT", "REPORT_WITH_ID", "decode_report", "encode_report"]

REPORT, REPORT_WITH_ID = b"R", b"F"
_NUDGE = Channel.frame(MESSAGE, pickle.dumps(("nudge",), protocol=5))

# (sequence number, the encoded report, its future): a report the engine's process handed to
# the child and keeps until the child acknowledges it as journaled. The report is kept
# encoded: a bytes object is not tracked by the engine's garbage collector, while a TaskRun
# and its dicts, kept until acknowledged, would mostly outlive the young collections and
# count toward the next full one (0.15 to 0.25 s with Parsl's heap).
_Pending = tuple[int, bytes, "Future[str | None] | None"]

# The order of TaskRun's constructor: decode_report passes the fields back positionally.
_FIELDS = ("task_id", "task_name", "status", "started", "ended", "inputs", "outputs", "known",
           "code_digest", "parameters", "environment_extra", "attempt", "extra", "run_id", "known_outputs")
_fields_of = attrgetter(*_FIELDS)
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_report(run: TaskRun) -> bytes | None:
    """``run`` as the child decodes it; None if only this process can record it."""
    started, ended = run.started, run.ended
    # A datetime pickles its class (and a UTC one its tzinfo) by reference, at twice the cost
    # of the rest of the report: UTC times go as whole microseconds since the epoch, which
    # come back exactly. Other zones go as they are; a naive time is an error that Record
    # must raise here, where the caller sees it.
    if started.tzinfo is None or ended.tzinfo is None:
        return None
    fields = list(_fields_of(run))
    if started.tzinfo is _UTC:
        fields[3] = (started - _EPOCH) // _MICROSECOND
    if ended.tzinfo is _UTC:
        fields[4] = (ended - _EPOCH) // _MICROSECOND
    try:
        return pickle.dumps(fields, protocol=5)
    except Exception:  # noqa: BLE001 - something in the report does not pickle
        return None


def decode_report(payload: bytes) -> TaskRun:
    fields = pickle.loads(payload)
    for i in (3, 4):
        if isinstance(fields[i], int):
            fields[i] = _EPOCH + timedelta(microseconds=fields[i])
    return TaskRun(*fields)
