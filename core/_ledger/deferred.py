"""Spool first: a ledger the task path can record into before the back-end is reached.

:func:`open_ledger` connects to the back-end, creates its schema and replays the spool
before it returns; a locked SQLite file, a database that is down or a slow network would
hold the task path up, and an error there would lose the record. :func:`spool_first`
instead checks only the configuration (an unparsable URL, an unknown scheme, a missing
extra raise :class:`ConfigError` at once), works out which spool directory belongs to
the ledger without connecting to it, and returns a :class:`DeferredLedger`: a
:class:`~._recorder.Recorder` journals into its spool at once and its worker ships
through it, opening the real ledger on the first shipment (and retrying, with the
recorder's back-off, while the back-end is unreachable). Once its own records are in,
it replays what dead processes left in the same spool, best effort.

:func:`backlog` and :func:`ship` are what ``lineage-ledger spool status`` and
``lineage-ledger spool ship`` show and do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import LedgerError, SpoolCorrupt, SpoolError, VerificationError
from .._terminal import printable
from .backlog import (
    SpoolBacklog,
    Waiting,
    _default_spool,
    _scan,
    backlog,
    orphan_kinds,
    waiting_digests,
    waiting_for,
)
from .identity import _sql_identity as _sql_identity  # re-exported: tests and callers import it from here
from .identity import ledger_identity, redact, trust_identity_of
from .refusal import permanent_refusal as permanent_refusal  # re-exported: callers import it from here
from .spool import spool_directory

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend

    from .._model import StoredRecord
    from .ledger import Ledger

__all__ = ["DeferredLedger", "SpoolBacklog", "Waiting", "WaitingInSpool", "backlog", "check_spool_writable", "ledger_identity",
           "permanent_refusal", "spool_first", "trust_identity_of", "waiting_digests", "waiting_for"]

log = logging.getLogger("lineage_ledger.spool")

def _default_url(url: str | None) -> str:
    from .ledger import DEFAULT_URL

    return url if url is not None else os.environ.get("LINEAGE_LEDGER_URL", DEFAULT_URL)


class DeferredLedger:
    """What a :class:`~._recorder.Recorder` needs of a ledger (``url``, ``spool_dir``,
    ``append_records``), with the back-end opened only when records are shipped."""

    def __init__(self, url: str, identity: str, spool_root: str, backend: Backend | None = None) -> None:
        self.url = redact(url, url)  # what messages show
        self._url = url
        self.identity = identity
        self.spool_root = spool_root
        self._backend = backend
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()
        self._replayed = False
        self._spool_dir: str | None = None

    @property
    def url_given(self) -> str:
        """The URL as given, secrets included: for opening and looking up, never for showing."""
        return self._url

    @property
    def spool_dir(self) -> str:
        if self._spool_dir is None:
            self._spool_dir = spool_directory(self.spool_root, self.identity)
        return self._spool_dir

    @property
    def opened(self) -> Ledger | None:
        """The real ledger if it has been opened, else None (never connects)."""
        return self._ledger

    def ledger(self) -> Ledger:
        """The real ledger, opened on first use (no replay here: see :meth:`append_records`).

        Raises :class:`HistoryRewritten` (a :class:`VerificationError`) while it no longer
        extends the tree head this account verified: every shipment goes through here, and
        none appends to a history that fails that check (:mod:`._extends`); the records wait
        in the spool."""
        with self._lock:
            if self._ledger is None:
                from .ledger import Ledger, open_ledger

                if self._backend is not None:
                    self._ledger = Ledger(self._backend, spool_root=self.spool_root)
                else:
                    self._ledger = open_ledger(self._url, spool=self.spool_root, replay=False)
                if self._ledger.backend.identity != self.identity:  # pragma: no cover - a back-end changed
                    log.warning("lineage-ledger: %s names itself %r, its spool was keyed %r; records spooled "
                                "for it are shipped by this process, or by `lineage-ledger spool ship`",
                                self.url, self._ledger.backend.identity, self.identity)
            from ._extends import check_extends

            check_extends(self._ledger)
            return self._ledger

    def append_records(self, records: Sequence[StoredRecord], *, block_size: int = 1000) -> int:
        return self.ledger().append_records(records, block_size=block_size)

    def after_shipped(self) -> None:
        """Called by the recorder's worker once its records are acknowledged: ship what dead
        processes left in this spool, once per process (after ours, never before)."""
        if self._replayed:
            return
        try:
            self.ledger().replay_spool()
            self._replayed = True
        except SpoolCorrupt as err:  # the good records are in; the damaged lines set aside
            self._replayed = True
            log.warning("lineage-ledger: %s", printable(str(err)))
        except Exception as err:  # noqa: BLE001 - their records wait for the next shipper
            log.warning("lineage-ledger: could not ship records other processes left in the spool yet: %s",
                        printable(str(err)))

    def close(self) -> None:
        with self._lock:
            ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger.close()
        elif self._backend is not None:
            self._backend.close()


def spool_first(url: str | None = None, *, spool: str | None = None) -> DeferredLedger:
    """A :class:`DeferredLedger` for ``url``; raises :class:`ConfigError` for a bad configuration.

    Public as ``lineage_ledger.spool_first``: what a process that ships others' spooled
    records needs. ``.spool_dir`` names the ledger's spool directory without connecting;
    ``.ledger()`` opens the ledger on first use (``.ledger().replay_spool()`` ships what
    finished processes left there); ``.close()`` closes it.
    """
    url = _default_url(url)
    identity, backend = ledger_identity(url)
    return DeferredLedger(url, identity, _default_spool(spool), backend)


def check_spool_writable(directory: str, reserve: int = 64 << 10) -> None:
    """Raise :class:`SpoolError` unless ``reserve`` bytes can be written and synced in ``directory``.

    Creating a file succeeds on a full disk; writing to it does not.
    """
    path = os.path.join(directory, f".probe-{os.getpid()}-{time.monotonic_ns()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise SpoolError(f"cannot write to the spool {directory}: {err.strerror or err}") from None
    try:
        block = b"\0" * min(reserve, 1 << 16)
        written = 0
        while written < reserve:
            written += os.write(fd, block[: reserve - written])
        os.fsync(fd)
    except OSError as err:
        raise SpoolError(f"cannot write to the spool {directory}: {err.strerror or err}") from None
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass


def ship(url: str | None, *, spool: str | None = None, timeout: float = 60.0) -> tuple[Shipped, SpoolBacklog]:
    """Ship what dead processes left in ``url``'s spool; ``(shipped, what still waits)``.
    With nothing waiting, the ledger is not opened (nor created).

    Raises :class:`WaitingInSpool` (the back-end's error, or a timeout) when the back-end
    does not take them (its ``permanent`` says why waiting will not help, where it will
    not), :class:`HistoryRewritten` when the ledger no longer extends the tree head
    this account verified; the records stay in the spool.
    """
    deferred = spool_first(url, spool=spool)
    from .spool import spool_path

    directory = spool_path(os.path.abspath(deferred.spool_root), deferred.identity)
    held = os.path.isdir(directory) and not os.path.islink(directory)
    try:
        segments = held and any(name.endswith(".log") for name in os.listdir(directory))
    except OSError:
        segments = True  # replay says what is wrong with it
    if not segments:
        # No segment at all (a torn one, no record in it, is still replay's to set aside):
        # the ledger is not opened, so a mistyped path is not made a new empty ledger (nor
        # a zero-byte file one), and no spool directory is made either.
        deferred.close()
        return Shipped(0), _scan(directory) if held else SpoolBacklog(directory, deferred.identity)
    result: dict[str, Any] = {}

    def work(directory: str = directory) -> None:
        try:
            ledger = deferred.ledger()
            # Which of the records it will take are directory manifests, and which of those the
            # ledger has already (journaled again by a later run): said apart from the tasks.
            kinds = orphan_kinds(directory)
            known = ledger.backend.known(kinds) if any(kinds.values()) else set()
            result["shipped"] = ledger.replay_spool()
            result["manifests"] = sum(1 for record_id, manifest in kinds.items()
                                      if manifest and record_id not in known)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = err

    worker = threading.Thread(target=work, name="lineage-ledger-ship", daemon=True)
    worker.start()
    worker.join(timeout)
    directory = deferred.spool_dir
    if worker.is_alive():  # a locked ledger: the worker stays blocked; we leave
        raise WaitingInSpool(f"{deferred.url} did not take the records within {timeout:g}s (locked or slow?)",
                       _scan(directory))
    deferred.close()
    error = result.get("error")
    if isinstance(error, (SpoolCorrupt, VerificationError)):  # a rewritten history: nothing appended
        raise error
    if isinstance(error, LedgerError):
        raise WaitingInSpool(str(error), _scan(directory), permanent_refusal(error)) from error
    if error is not None:
        raise error
    return Shipped(int(result.get("shipped", 0)), int(result.get("manifests", 0))), _scan(directory)


class Shipped(int):
    """How many records :func:`ship` appended (an ``int``); ``manifests`` of them keep a
    directory's manifest, ``tasks`` are the rest: a user counts tasks."""

    manifests: int

    def __new__(cls, count: int, manifests: int = 0) -> Shipped:
        self = super().__new__(cls, count)
        self.manifests = min(manifests, count)  # another shipper may have taken some meanwhile
        return self

    @property
    def tasks(self) -> int:
        return int(self) - self.manifests


class WaitingInSpool(LedgerError):
    """The back-end did not take the spooled records; ``left`` says what waits.
    ``permanent``: why waiting will not settle it (see :func:`permanent_refusal`), or None."""

    def __init__(self, message: str, left: SpoolBacklog, permanent: str | None = None) -> None:
        super().__init__(message)
        self.left = left
        self.permanent = permanent
