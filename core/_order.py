"""Which of two records came later, when the clocks that timed them disagree.

"The last record that read or wrote a file" (what ``verify-lineage`` and every pre-run check
compare the file with) is decided by the tasks' times: a writer counts from when it ended, a
reader from when it started (``Ledger.last_seen``). Those times come from the clock of the
host that ran each recorder. A host whose clock is ten minutes fast, or a clock that NTP
stepped back, put an older write first, and the file put back to the old version passed
(tests/test_time_order_skew.py).

The ledger itself gives an order no clock can upset: a recorder that had verified a record
in the ledger before its task started runs after that record's task ended. So a recorder
notes, when a task starts, the latest *order time* among the records it has seen in the
ledger (:mod:`._ledger.seen`), and writes it into the record, in ``extra`` under
:data:`AFTER_KEY` (inside the hashed body, so it cannot be changed afterwards; a reserved
key rather than a new field, so that records stay version 1 and every earlier reader reads
them). A record's order times are then its own times, moved to just after that moment where
they are earlier (a hybrid logical clock)::

    order_start = max(started, after + 1 us)      order_end = max(ended, after + 1 us)

A record that had seen another is therefore later than it whatever the clocks say, and
between records that could not have seen each other the clocks decide, as before.

A time cannot say *which* records were seen: one record from a clock ahead, naming another
file, moved a reader of ``f`` past a writer of ``f`` on a right clock that started before that
record landed and ended after the reader started, and the version the reader read, put back,
passed (tests/test_time_order_attack.py). So a record also says how many records its
recorder had verified in the ledger when the task started (:data:`SEEN_KEY`, the tree's size
then): a record at a place below that count was seen, exactly. Between the latest writer and
the latest reader of a file (``Ledger.last_seen``) the places decide first: the one that saw
the other is later. Where neither saw the other by place, a reader that carries a count is
compared by its own start (what it saw by time is then no proof it saw that writer), and one
without a count by its moved start, as before. A count at or past the record's own place is
no count (no record sees itself or what came after it).

Within one role the same holds (``Ledger._last_in_role``): of two writers of one file at once,
one of which had seen a record from a clock ahead, the one that really ended last is the later
where the other carries a count that does not cover it; a reader counts from its start, so a
short task that read a source after a long one started reading it saw it last. What stays (a
strict xfail in tests/test_time_order_attack.py): a recorder that never verified the ledger (it
only shipped records) stamps no count, and its records are ordered by their moved times. A
count is only as good as it is fresh: a reader that carries one is compared by its own start
with what the count does not cover, and one taken at an append, long before the task started,
put a reader before a writer from a fast clock that landed after it (tests/test_attack_s47.py);
counts come from verifying (engines verify before each task). (A
record replayed late from a crashed host's spool keeps its own times: ledger order alone
would wrongly make it the newest, tests/test_time_order_late_ship.py.)

The index keeps each record's ``order_end`` as its end time (``StoredRecord.ended``), so
that the look-up of a file's latest writer or reader, the names kept beside the verified
tree and the audit's comparison of the index with the records all use the same order. For
a record without the key (every record written before it existed) the order times are its
own times: nothing changes for existing ledgers.

A value under the key that is not a canonical UTC time is ignored (the same by every
reader); recorders only ever write one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

__all__ = ["AFTER_KEY", "SEEN_KEY", "after_of", "just_after", "order_end", "order_start", "seen_of"]

#: The reserved ``extra`` key: the latest order time among the records the recorder had seen in
#: the ledger when the task started (canonical UTC text).
AFTER_KEY = "lineage_ledger.after"

#: The reserved ``extra`` key: how many records (the verified tree's size) the recorder knew
#: were in the ledger when the task started; an integer.
SEEN_KEY = "lineage_ledger.seen"

_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z").match
_STEP = timedelta(microseconds=1)


def after_of(extra: Mapping[str, Any] | None) -> str | None:
    """The time a record says its task started after, where it says one a reader can use."""
    if not extra:
        return None
    after = extra.get(AFTER_KEY)
    if type(after) is not str or _CANONICAL(after) is None:
        return None
    from ._canonical import parse_time

    try:  # the pattern's digits, and a day the calendar has (2026-12-32 is no time)
        parse_time(after)
    except ValueError:
        return None
    return after


def just_after(text: str) -> str:
    """The canonical time one microsecond after ``text`` (a canonical time); ``text`` itself
    at the end of the calendar."""
    from ._canonical import format_time, parse_time

    try:
        return format_time(parse_time(text) + _STEP)
    except (ValueError, OverflowError):
        return text


def order_end(ended: str, extra: Mapping[str, Any] | None) -> str:
    """A record's end in the ledger's order (canonical texts compare as the times do)."""
    after = after_of(extra)
    if after is None or after < ended:
        return ended
    return max(ended, just_after(after))


def order_start(started: str, extra: Mapping[str, Any] | None) -> str:
    """A record's start in the ledger's order: where a reader's digest of a file was taken."""
    return order_end(started, extra)


def seen_of(extra: Mapping[str, Any] | None, leaf: int) -> int | None:
    """How many records the record at place ``leaf`` says its recorder had seen: None where it
    says none a reader can use (not an integer, none, or not below its own place)."""
    if not extra:
        return None
    seen = extra.get(SEEN_KEY)
    if type(seen) is not int or not 0 < seen <= leaf:
        return None
    return seen
