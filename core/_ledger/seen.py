"""What a recorder had seen of the ledger when a task started (the order of :mod:`.._order`).

A record may say it is later than every record whose task ended by the moment ``after``
(``extra[AFTER_KEY]``) only if its task started after those records were in the ledger. So
each value comes from a *reading*: the latest order end among records known to be in the
ledger, and the moment by which they were:

* a verified tree head in this process (:meth:`.ledger.Ledger.tree_head`: a pre-run check,
  ``verify-lineage``, ``adopt``): its :attr:`~.._log.tree_head.TreeHead.latest`, dated when
  the refresh ended;
* records this process shipped (:meth:`.ledger.Ledger.append_records`): the latest order end
  among them, dated once the back-end took them;
* what this account's earlier processes saw, read by a recorder when it opens
  (:func:`reading_at_start`), each dated when it was taken: the hint file ``latest-seen`` in
  the ledger's spool directory (private, this account's), where each of the two above also
  leaves its value, dated when it was taken or when it is read, whichever is earlier, where
  this host (in this boot) wrote it; and the head the trusted state remembers
  (``head.json``), dated when it is read. Not simply "now": the engines' recorders open when
  their first task ends, and the tasks that started after the reading still get it. Not
  simply the date written: a clock stepped back since, or another process's clock ahead,
  would date it past the tasks it serves. And never a date another host's clock gave: a
  home directory on NFS holds one state and one spool for a cluster's nodes, and a
  verification on a login node whose clock is behind dated its reading before a task that
  was already running on a compute node when it was taken; that task, stamped later than a
  record that landed while it ran, passed the old version of a file that record rewrote
  (tests/test_time_order_attack.py).

A reading also says how many records (the verified tree's size) were in the ledger by then,
where it knows (a verified head does; an append alone does not): a record below that count
in the ledger was seen, exactly, whatever its time says (:data:`.._order.SEEN_KEY`).

A task that started at ``started`` gets the latest value among the readings dated at or
before then, and the largest count among those of them that carry that value
(:func:`seen_before`): every record behind them was in the ledger before the task started,
so the task ran after theirs. A count from an older reading than the time says less than the
time does, and would order a reader by its own start (:mod:`.._order`). Times are this
host's clock, as ``started`` is. A reading missed leaves the clocks to decide, as before.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime

from .._canonical import format_time, utcnow
from .._order import AFTER_KEY, SEEN_KEY, after_of

__all__ = ["HINT", "note_seen", "read_hint", "reading_at_start", "seen_before", "seen_values", "write_hint"]

HINT = "latest-seen"
_KEEP = 256  # readings kept per ledger (the latest dates): a task that started before them all gets none

_lock = threading.Lock()
_readings: dict[str, list[tuple[str, str, int]]] = {}  # identity -> [(dated, latest or "", size)]


def _after_fork_in_child() -> None:
    # A fork while another thread held the lock (Airflow's scheduler forks its task
    # processes while its recorder's worker builds records) would leave it held for good in
    # the child; the readings themselves hold for the child too (taken before it existed).
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _time(value: object) -> str | None:
    return after_of({AFTER_KEY: value})


def note_seen(identity: str, latest: str | None, dated: str | datetime | None = None, size: int = 0) -> None:
    """Every record whose task ended by ``latest`` (in the ledger's order), and the first
    ``size`` records of the ledger (0: not known), were in the ledger ``identity`` by
    ``dated`` (now where not given)."""
    value = _time(latest) or ""
    size = size if type(size) is int and size > 0 else 0
    now = format_time(utcnow())
    at = format_time(dated) if isinstance(dated, datetime) else now if dated is None else _time(dated)
    if (not value and not size) or at is None:
        return
    # Never later than now: the file read now held it, whatever clock dated it (one stepped
    # back since, another process's under a clock ahead); earlier where it says so.
    at = min(at, now)
    with _lock:
        readings = _readings.setdefault(identity, [])
        if any(when <= at and seen >= value and count >= size for when, seen, count in readings):
            return  # an earlier or same reading says as much
        readings.append((at, value, size))
        if len(readings) > _KEEP:
            readings.sort()
            del readings[: _KEEP // 2]


def seen_before(identity: str, started: datetime) -> tuple[str | None, int]:
    """The latest order time, and the most records (0: none known), this process knows were
    in ledger ``identity`` by ``started``."""
    at = format_time(started)
    with _lock:
        found = [(value, size) for when, value, size in _readings.get(identity, ()) if when <= at]
    latest = max((value for value, _size in found if value), default=None)
    # The count of a reading as recent as the time: one taken before a later time (an append,
    # which knows no count) says less than the time does, and a reader with a count is ordered
    # by its own start, not by the time (.._order).
    return latest, max((size for value, size in found if value == latest), default=0)


def seen_values(identity: str, started: datetime) -> dict[str, str | int]:
    """The ``extra`` keys of a record whose task started at ``started`` (:func:`seen_before`):
    :data:`AFTER_KEY` and :data:`SEEN_KEY`, each left out where not known."""
    after, seen = seen_before(identity, started)
    values: dict[str, str | int] = {}
    if after is not None:
        values[AFTER_KEY] = after
    if seen > 0:
        values[SEEN_KEY] = seen
    return values


def _this_host() -> str:
    """What tells this host, in this boot, from the others that share the spool directory
    (a home on NFS): a hint dated by another's clock (or before a reboot) is dated when read."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as handle:
            found = handle.read(64).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        import platform

        found = platform.node()
    return "".join(found.split())[:64] or "-"


_HOST = _this_host()


def read_hint(spool_dir: str) -> tuple[str, str, int] | None:
    """(latest, dated, size) that this account's processes left in the spool directory's hint
    (None: none, or unreadable); dated now where another host (or boot) left it; size 0
    where it says none (a hint of an earlier release)."""
    try:
        fd = os.open(os.path.join(spool_dir, HINT), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return None  # the spool directory is private; a file of another account is not ours
        fields = os.read(fd, 128).decode("ascii", "replace").split()
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(fields) not in (2, 3, 4) or _time(fields[0]) is None or _time(fields[1]) is None:
        return None
    size = int(fields[3]) if len(fields) == 4 and fields[3].isdigit() and len(fields[3]) < 19 else 0
    return fields[0], fields[1] if fields[2:3] == [_HOST] else format_time(utcnow()), size


def write_hint(spool_dir: str, latest: str | None, size: int = 0) -> None:
    """Raise the hint to ``latest`` and ``size`` records, dated now (best effort: a hint that
    could not be written leaves the next process knowing less, which leaves the clocks to
    decide)."""
    if not latest or _time(latest) is None or not os.path.isdir(spool_dir):
        return
    current = read_hint(spool_dir)
    # The hint is one reading, its count taken with its time: a later time replaces it whole,
    # with the count that came with it (0: none known). A count kept beside a later time from
    # an append (which knows none) made a reader count as having seen no more records than
    # that, and its own start, on a clock behind, fell before a fast writer it had seen by
    # time (tests/test_time_order_attack_counts.py). The same time: the count just verified,
    # even where lower (a count is of one history; reading_at_start caps it as well).
    if current is not None and (current[0] > latest or current[0] == latest and current[2] == (size or current[2])):
        return
    temporary = os.path.join(spool_dir, f".{HINT}-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{latest} {format_time(utcnow())} {_HOST} {max(0, int(size))}\n".encode("ascii"))
        finally:
            os.close(fd)
        os.replace(temporary, os.path.join(spool_dir, HINT))
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def reading_at_start(identity: str, url: str, spool_dir: str) -> None:
    """The readings this account's earlier processes left for ledger ``identity`` (at ``url``):
    the hint in its spool directory and the trusted state's head, both read without the
    back-end (a recorder starts before it is reached), neither created."""
    hint, remembered = read_hint(spool_dir), _remembered(url)
    if remembered is not None:
        note_seen(identity, *remembered)
    if hint is not None:
        # The hint's count only where the trusted state remembers a head of at least as many
        # records: after a restore and reset-trust the hint may still count the history before
        # it. A larger count (a verification kept in another state directory) is dropped whole, not cut to
        # the head's size: a count below the time it came with orders a reader by its own start,
        # before a fast writer the time says it saw (tests/test_time_order_attack_counts.py).
        latest, dated, size = hint
        note_seen(identity, latest, dated, size=size if remembered is not None and size <= remembered[2] else 0)


def _remembered(url: str) -> tuple[str, str, int] | None:
    """(latest, now, size) of the head this account remembers for the ledger at ``url`` (None
    where none, or where the file is not this account's alone: the readers say why). Dated
    when read, not by its ``verified`` time: any host of the account may have verified it."""
    import stat

    from .._environment import state_root
    from .._log.trust import TreeHead, TrustStore
    from .identity import trust_identity_of

    try:
        directory = TrustStore.directory_for(trust_identity_of(url), state_root())
        fd = os.open(os.path.join(directory, "head.json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except Exception:  # noqa: BLE001 - no state, a relative LINEAGE_STATE_DIR, a URL the recorder refuses
        return None
    try:
        status = os.fstat(fd)
        if status.st_uid != os.geteuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            head = TreeHead.from_json(handle.read(1 << 16))
    except (OSError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)
    if _time(head.latest) is None:
        return None
    return head.latest, format_time(utcnow()), head.size
