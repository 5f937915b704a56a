"""One long-lived process per machine ships the spool; task processes only journal.

Opening the ledger and appending to it is the expensive part of recording: connecting,
checking the tree head, a write transaction that other task processes wait for (SQLite's
lock). A task process that shipped its own record before ``os._exit`` paid for all of it,
and for the others' waits, on every try (issue 16: +90 to +177 ms per task, seconds under
load). So when an Airflow job process (the scheduler, the DAG processor, the triggerer)
starts, the listener's ``on_starting`` hook starts a shipper thread in it:

* it takes an exclusive POSIX record lock (``lockf``) on ``<spool>/.airflow-shipper`` (one
  shipper per machine and spool; another process takes over when the holder dies, since
  the kernel drops the lock with it). Not ``flock``: that lock belongs to the open file,
  which the holder's forks share (the scheduler's LocalExecutor workers and their task
  processes), so after ``kill -9`` of the scheduler alone its orphaned workers kept the
  lease, nobody shipped and no other process could take over;
* while it holds the lease, it touches the file every :data:`INTERVAL` seconds, fsyncs the
  segments task processes journaled since the last round, and ships what finished
  processes left in the spool, as ``lineage-ledger spool ship`` does, one shipping at a
  time (a locked or unreachable ledger leaves records waiting, nothing else; one that
  refuses writes for good, read-only say, is also said once).

A task process that sees a fresh lease file (:func:`alive`) only journals its record (one
``write(2)``: in the kernel, so ``kill -9`` of the task loses nothing) and ends; the
shipper's fsync makes it survive a power cut within a round (:data:`INTERVAL`), much as
the task's own output files, which nobody fsyncs, survive one after the kernel's writeback. Without one (a worker machine with no Airflow job
process, ``airflow dags test``) it ships its own records at its end as before, waiting at
most ``flush_timeout`` seconds.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from typing import Any

from . import _settings

log = logging.getLogger("lineage_ledger.airflow")

LEASE = ".airflow-shipper"
#: Seconds between two rounds of the shipper (and two touches of the lease file).
INTERVAL = 2.0
#: A lease file touched within this many seconds means a shipper is alive.
FRESH_S = 10.0

_started_pid = -1
_lock = threading.Lock()


def lease_path() -> str:
    return os.path.join(_settings.spool_root(), LEASE)


def alive(now: float | None = None) -> bool:
    """Whether some process on this machine ships this spool (its lease file is fresh)."""
    if _started_pid == os.getpid():
        return False  # the shipper's own process records and ships through its recorder
    try:
        age = (time.time() if now is None else now) - os.stat(lease_path()).st_mtime
    except OSError:
        return False
    return -FRESH_S < age < FRESH_S


def start() -> bool:
    """Start this process's shipper thread (once); True if started now."""
    global _started_pid
    with _lock:
        if _started_pid == os.getpid():
            return False
        _started_pid = os.getpid()
    thread = threading.Thread(target=_run, name="lineage-ledger-airflow-shipper", daemon=True)
    thread.start()
    return True


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open at ``fd`` (not after ``rm -rf`` of the spool)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _run() -> None:
    fd = -1
    held = False
    shipper = _Shipper()
    shipping: threading.Thread | None = None
    failed: str | None = None  # the last failure said: a lasting one is said once, not every round
    while True:
        try:
            if fd >= 0 and not _same_file(fd, lease_path()):
                # The spool was removed (a clean-up job, an operator) or its lease file replaced:
                # a lock on the old file leases nothing. Let it go, and take the lease of the
                # spool that task processes now journal in (made again by the first of them).
                if held:
                    log.warning("lineage-ledger: the shipper's lease file %s was removed; taking the lease again",
                                lease_path())
                os.close(fd)
                fd, held = -1, False
            if fd < 0:
                root = _settings.spool_root()
                os.makedirs(root, mode=0o700, exist_ok=True)
                fd = os.open(lease_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not held:
                try:
                    # A process's own lock (forks do not inherit it); this process never opens
                    # the file elsewhere, whose close would drop it (alive() only stats it).
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    log.info("lineage-ledger: this process (pid %d) ships the spool %s", os.getpid(),
                             _settings.spool_root())
                except OSError as err:  # EAGAIN or EACCES: another process ships; take over if it dies
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
            if held:
                os.utime(lease_path())
                waiting = shipper.sync_waiting()  # every round, even while a shipment is blocked
                if waiting and (shipping is None or not shipping.is_alive()):
                    shipping = threading.Thread(target=shipper.ship, name="lineage-ledger-airflow-ship", daemon=True)
                    shipping.start()
            failed = None
        except Exception as err:  # noqa: BLE001 - the shipper must outlive any failure
            if f"{type(err).__name__}: {err}" != failed:
                failed = f"{type(err).__name__}: {err}"
                log.exception("lineage-ledger: the spool shipper failed; retrying (said again when it changes)")
            else:
                log.debug("lineage-ledger: the spool shipper failed again: %s", failed)
        time.sleep(INTERVAL)


class _Shipper:
    """Ships the ledger's spool directory from one ledger kept open between rounds.

    A round with no segment file in the directory costs one ``scandir``: the ledger is
    opened only when there is something to ship, and kept open for the next round (opening
    it, with its schema and tree-head checks, is the expensive part).
    """

    def __init__(self) -> None:
        self._deferred: Any = None
        self._spool_dir: str | None = None
        #: The size at which each waiting segment was last fsynced: one that has not grown
        #: since is not synced again.
        self._synced: dict[str, int] = {}
        self.synced_total = 0  # fsyncs done, for the tests
        self._refusal: str | None = None  # the failed verification last logged (once, not every round)

    def _ledger(self) -> Any:
        if self._deferred is None:
            from lineage_ledger import spool_first

            self._deferred = spool_first(_settings.ledger_url(), spool=_settings.spool_root())
        return self._deferred

    def sync_waiting(self) -> int:
        """How many segments the ledger's spool directory holds (finished processes', or live
        ones': replay takes only those whose lock is free), after fsyncing each that is new
        or has grown since the last round (task processes leave that to this shipper)."""
        if not _settings.enabled():
            return 0
        try:
            if self._spool_dir is None:  # worked out once (the shipping thread may reopen the ledger)
                self._spool_dir = self._ledger().spool_dir
            directory = self._spool_dir
            with os.scandir(directory) as entries:
                names = [entry.name for entry in entries if entry.name.endswith(".log")]
        except OSError:
            return 0
        for name in names:
            self._sync(os.path.join(directory, name), name)
        for gone in set(self._synced).difference(names):  # shipped: forget it
            del self._synced[gone]
        return len(names)

    def _sync(self, path: str, name: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return  # shipped and removed meanwhile
        try:
            size = os.fstat(fd).st_size
            if self._synced.get(name) != size:
                os.fsync(fd)
                self._synced[name] = size
                self.synced_total += 1
        except OSError as err:  # the next round tries again
            log.debug("lineage-ledger: cannot sync the spool segment %s: %s", path, err)
        finally:
            os.close(fd)

    def ship(self) -> None:
        """Ship what finished processes left; a locked or unreachable ledger only delays it."""
        from lineage_ledger import LedgerError, VerificationError
        from lineage_ledger._ledger.refusal import permanent_refusal

        try:
            shipped = self._ledger().ledger().replay_spool()
        except VerificationError as err:
            # The ledger failed a verification (its history rewritten or shrunk since this
            # account verified it, the file replaced): the core appends nothing to it, and no
            # retry settles that. The records wait for a repair; say so once (at DEBUG, as a
            # locked ledger is, nobody under the scheduler's INFO log learnt why they wait).
            said = f"{type(err).__name__}: {err}"
            if said != self._refusal:
                self._refusal = said
                log.error("lineage-ledger: the records in the spool %s are not shipped; the ledger failed its "
                          "own check (%s)", self._spool_dir or _settings.spool_root(), said)
            self._reopen()
            return
        except LedgerError as err:
            # Locked, busy or down: a later round gets through, and says nothing meanwhile. A
            # ledger that refuses writes for good (read-only, permission denied) is said once
            # (nobody under the scheduler's INFO log learnt why the records waited).
            why = permanent_refusal(err)
            if why is None:
                log.debug("lineage-ledger: records wait in the spool: %s", err)
            elif f"{why}: {err}" != self._refusal:
                self._refusal = f"{why}: {err}"
                log.error("lineage-ledger: the records in the spool %s are not shipped: %s; they wait there and "
                          "ship once the ledger can be written", self._spool_dir or _settings.spool_root(),
                          self._refusal)
            self._reopen()
            return
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            log.exception("lineage-ledger: could not ship the spool")
            self._reopen()
            return
        self._refusal = None
        if shipped:
            log.info("lineage-ledger: shipped %d records from the spool", shipped)

    def _reopen(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            try:
                deferred.close()
            except Exception:  # noqa: BLE001
                log.debug("lineage-ledger: closing the ledger failed", exc_info=True)
