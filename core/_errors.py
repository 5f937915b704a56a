"""The exception tree of lineage-ledger.

Every error the library raises on purpose derives from :class:`LedgerError`; its docstring
draws the tree (``help(lineage_ledger.LedgerError)``). Back-ends raise ``BackendError``
subclasses ``from`` their library's exception, so raw SQLAlchemy, MPI or gRPC errors never
reach a user.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._capture.pending import PendingWrite

__all__ = [
    "AppendConflict",
    "ArtifactError",
    "ArtifactMismatch",
    "BackendError",
    "BackendUnavailable",
    "ChainBroken",
    "ConfigError",
    "CorruptStore",
    "LedgerError",
    "LineageBroken",
    "MerkleMismatch",
    "MissingExtra",
    "NoLedger",
    "NeedsMigration",
    "IndexTampered",
    "ProofFailed",
    "HistoryRewritten",
    "CheckpointInvalid",
    "RecordPending",
    "RecordTampered",
    "ServerInRecovery",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "UnknownScheme",
    "VerificationError",
]


class LedgerError(Exception):
    """Root of every error lineage-ledger raises on purpose: ``except LedgerError`` catches
    them all. CLI exit status: 1 for a ``VerificationError``, 2 for the others. Those marked
    (baash) or (fabric) are defined by that back-end's module::

        LedgerError
        ├── ConfigError                 bad URL, settings or arguments (CLI exit 2)
        │   ├── UnknownScheme           no back-end registered for the URL's scheme
        │   ├── MissingExtra            the back-end's optional dependencies are not installed
        │   ├── NoLedger                a read found no ledger at the URL (nothing is created)
        │   └── NeedsMigration          a read found a ledger of an older schema (``migrate`` it)
        ├── ArtifactError               a file cannot be hashed: missing, a directory, a symlink
        │                               loop, unreadable, or a name that is not UTF-8 (exit 2)
        ├── BackendError                the back-end failed (library errors are translated)
        │   ├── BackendUnavailable      cannot reach or open the store
        │   │   └── ServerInRecovery    a standby in recovery: no writes until it is promoted
        │   ├── CorruptStore            the store exists but is not a readable ledger
        │   ├── AppendConflict          another writer took the height first; rebuild and retry
        │   ├── AccessDenied            (baash, fabric) this identity may not do that
        │   ├── BlockRejected           (baash) the service's validators found a block invalid
        │   ├── InvalidBlock            (fabric) the chaincode refused a block that does not check out
        │   └── TreeNotBuilt            (fabric) the ledger predates the chaincode's log tree
        ├── SpoolError                  the local write-behind journal
        │   ├── SpoolFull               backpressure: too many records not yet shipped
        │   ├── SpoolCorrupt            a torn or unreadable journal was set aside (nothing dropped)
        │   └── RecordPending           the spool refused a record and the ledger had not taken it
        │                               within the wait: its write goes on (``.write``)
        ├── WaitingInSpool              the back-end did not take the spooled records (spool ship)
        └── VerificationError           a check failed (CLI exit 1)
            ├── ChainBroken             a block's id, height or previous-block link is wrong
            ├── MerkleMismatch          a block's Merkle root does not match its records
            ├── RecordTampered          a stored record's bytes do not hash to its id
            ├── ArtifactMismatch        a file on disk differs from its last record
            ├── LineageBroken           an input was consumed in a state no recorded task produced
            ├── IndexTampered           an index row disagrees with the record it points at
            ├── ProofFailed             an inclusion or consistency proof does not verify
            ├── HistoryRewritten        the ledger is not an append-only extension of a tree head
            │   │                       it was verified at (it shrank, or forked)
            │   └── EndorsedHeadMismatch  (fabric) the endorsed head is not the one verified
            ├── EndorsementRefused      (fabric) an endorsed answer does not prove itself
            └── CheckpointInvalid       a checkpoint is unreadable, or its signature fails
    """


class ConfigError(LedgerError):
    """Bad configuration: a malformed URL, an unknown option, an impossible setting."""


class UnknownScheme(ConfigError):
    """No back-end is registered for a URL scheme."""


class MissingExtra(ConfigError):
    """A back-end needs an optional dependency that is not installed."""


class NoLedger(ConfigError):
    """A command that only reads found no ledger (a missing or empty file); it creates none."""


class NeedsMigration(ConfigError):
    """A command that only reads found a ledger of an older schema: ``lineage-ledger migrate``
    (or any command that writes) brings it to the current one, once."""


class ArtifactError(LedgerError):
    """A file named as an input or output cannot be hashed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BackendError(LedgerError):
    """The storage back-end failed."""


class BackendUnavailable(BackendError):
    """The store cannot be reached or opened."""


class ServerInRecovery(BackendUnavailable):
    """The database server is a standby in recovery (a PostgreSQL hot standby, as during a
    failover): it refuses writes as a read-only database does ("cannot execute INSERT in a
    read-only transaction", SQLSTATE 25006), but only until it is promoted, so the records
    wait in the spool instead of being refused for good."""


class CorruptStore(BackendError):
    """The store exists but cannot be read as a ledger (corrupt or truncated file)."""


class AppendConflict(BackendError):
    """Another writer appended first: the block must be rebuilt on the new head."""


class SpoolError(LedgerError):
    """The local write-behind journal failed."""


class SpoolFull(SpoolError):
    """Too many records wait to be shipped; the caller must slow down or flush."""


class SpoolCorrupt(SpoolError):
    """A journal had a torn or unreadable part; it was moved aside, not deleted."""


class RecordPending(SpoolError):
    """The spool refused a record (its disk full, its directory read-only), and the ledger,
    its one place left, had not taken it when the caller's wait ran out: it is *not recorded
    yet*, not lost. The write goes on in a thread of this process and lands if the ledger
    takes it before the process ends; ``write`` (a :class:`~lineage_ledger.PendingWrite`:
    ``done()``, ``error``, ``add_done_callback``) says how it ends.
    :meth:`TaskCapture.record_now` raises it with ``raise_pending=True`` (or ``raise_errors``)."""

    def __init__(self, message: str, write: PendingWrite) -> None:
        super().__init__(message)
        self.write = write


class VerificationError(LedgerError):
    """A verification check failed. ``height`` names the first bad block where known."""

    def __init__(self, message: str, *, height: int | None = None, path: str | None = None):
        super().__init__(message)
        self.height = height
        self.path = path


class ChainBroken(VerificationError):
    """A block's id, height or link to its predecessor is wrong."""


class MerkleMismatch(VerificationError):
    """A block's Merkle root does not match the ids of its records."""


class RecordTampered(VerificationError):
    """A stored record's bytes do not hash to its id, or do not parse."""


class ArtifactMismatch(VerificationError):
    """A file on disk is modified, missing or unrecorded."""


class LineageBroken(VerificationError):
    """An input's recorded digest matches no output its producer recorded."""


class IndexTampered(VerificationError):
    """An index row (path, digest, role, run, place) disagrees with the record it names."""


class ProofFailed(VerificationError):
    """An inclusion or consistency proof does not verify against its tree head."""


class HistoryRewritten(VerificationError):
    """The ledger is not an append-only extension of a tree head verified before."""


class CheckpointInvalid(VerificationError):
    """A checkpoint note cannot be parsed, or no trusted signature on it verifies."""


def describe_os_error(err: OSError) -> str:
    """A short reason for a failed file operation, for messages that name the path."""
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT:
        return "no such file"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EISDIR:
        return "is a directory, not a file"
    return err.strerror or str(err)
