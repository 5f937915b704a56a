"""What a recorder had seen of the ledger when a task started (the order of :mod:`.._order`).

A record may say it is later than every record whose task ended by the moment ``after``
(``extra[AFTER_KEY]``) only if its task started after those records were in the ledger. So
the moments come from *readings*, each taken before the tasks it serves start:

* a verified tree head in this process (:meth:`.ledger.Ledger.tree_head`: a pre-run check,
  ``verify-lineage``, ``adopt``): its :attr:`~.._log.tree_head.TreeHead.latest`, read when
  the refresh ended;
* records this process shipped (:meth:`.deferred.DeferredLedger.append_records`): the
  latest order end among them, once the back-end took them;
* the hint file ``latest-seen`` in the ledger's spool directory (private, this account's),
  where each of the two above also leaves its value, and the head this account's trusted
  state remembers (``head.json``): what this account's earlier processes saw, read by a
  recorder when it opens (:func:`reading_at_start`; ``lineage-ledger run`` before its
  command starts).

A task that started at ``started`` (by this host's clock, as the readings are taken) gets the
latest value of a reading taken at or before then (:func:`seen_before`). A reading taken
late only ever makes the value smaller (a lower bound), which leaves the clocks to decide, as
before; a value the ledger had not reached would order a task after records it never saw,
and that no reading here gives.
"""

from __future__ import annotations

import bisect
import os
import threading
from datetime import datetime
from typing import TYPE_CHECKING

from .._canonical import format_time, utcnow
from .._order import AFTER_KEY, after_of

if TYPE_CHECKING:
    from .deferred import DeferredLedger

__all__ = ["HINT", "note_seen", "read_hint", "reading_at_start", "seen_before", "write_hint"]

HINT = "latest-seen"
_KEEP = 256  # readings kept per ledger: a task that started before the oldest gets none

_lock = threading.Lock()
_readings: dict[str, tuple[list[str], list[str]]] = {}  # identity -> (when read, latest), both increasing


def note_seen(identity: str, latest: str | None, when: datetime | None = None) -> None:
    """Every record whose task ended by ``latest`` (in the ledger's order) was in the ledger
    ``identity`` by ``when`` (now where not given)."""
    if not latest or after_of({AFTER_KEY: latest}) is None:
        return
    at = format_time(when or utcnow())
    with _lock:
        times, values = _readings.setdefault(identity, ([], []))
        if values and latest <= values[-1]:
            return  # nothing seen that the last reading had not
        if times and at < times[-1]:
            at = times[-1]  # a clock stepped back since: no reading moves earlier than the last
        times.append(at)
        values.append(latest)
        if len(times) > _KEEP:
            del times[: _KEEP // 2], values[: _KEEP // 2]


def seen_before(identity: str, started: datetime) -> str | None:
    """The latest order time this process had seen in ledger ``identity`` by ``started``."""
    at = format_time(started)
    with _lock:
        found = _readings.get(identity)
        if not found:
            return None
        times, values = found
        index = bisect.bisect_right(times, at)
        return values[index - 1] if index else None


def read_hint(spool_dir: str) -> str | None:
    """What this account's processes left in the spool directory's hint (None: none, or unreadable)."""
    try:
        fd = os.open(os.path.join(spool_dir, HINT), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return None  # the spool directory is private; a file of another account is not ours
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return after_of({AFTER_KEY: text})


def write_hint(spool_dir: str, latest: str | None) -> None:
    """Raise the hint to ``latest`` (best effort: a hint that could not be written is only a
    lower bound that stays lower; the spool's own checks say what is wrong with the directory)."""
    if not latest or not os.path.isdir(spool_dir):
        return
    current = read_hint(spool_dir)
    if current is not None and current >= latest:
        return
    temporary = os.path.join(spool_dir, f".{HINT}-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (latest + "\n").encode("ascii"))
        finally:
            os.close(fd)
        os.replace(temporary, os.path.join(spool_dir, HINT))
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def reading_at_start(deferred: DeferredLedger) -> None:
    """A reading from what this account's earlier processes left: the spool's hint and the
    trusted state's head, both read without the back-end (a recorder opens before it is
    reached). Tasks that start from now on started after those records were in the ledger."""
    try:
        directory = deferred.spool_dir
    except Exception:  # noqa: BLE001 - the spool's own checks say what is wrong, when it is used
        directory = None
    latest = [read_hint(directory) if directory else None, _remembered_latest(deferred.url_given)]
    note_seen(deferred.identity, max((value for value in latest if value), default=None))


def _remembered_latest(url: str) -> str | None:
    """``latest`` of the head this account remembers for the ledger at ``url`` (None where
    none, or where the file is not this account's alone: the readers say why)."""
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
    return after_of({AFTER_KEY: head.latest})
