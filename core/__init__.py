"""lineage-ledger: a provenance ledger for scientific workflows.

``import lineage_ledger`` is light: no workflow engine, SQLAlchemy, mpi4py or gRPC is
imported until a back-end or plugin that needs it is used.

Start with :func:`open_ledger`, :class:`Record`, :func:`hash_file` and :func:`verify_lineage`
(``docs/guide.md``). Every error raised on purpose derives from :class:`LedgerError`, whose
help draws the tree. ``lineage_ledger.testing`` holds the back-end conformance suite (pytest;
not imported here).
"""

from ._canonical import canonical_bytes, format_time, parse_time, utcnow
from ._environment import current_environment
from ._errors import (
    AppendConflict,
    ArtifactError,
    ArtifactMismatch,
    BackendError,
    BackendUnavailable,
    ChainBroken,
    CheckpointInvalid,
    ConfigError,
    CorruptStore,
    HistoryRewritten,
    IndexTampered,
    LedgerError,
    LineageBroken,
    MerkleMismatch,
    MissingExtra,
    NeedsMigration,
    NoLedger,
    ProofFailed,
    RecordPending,
    RecordTampered,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    UnknownScheme,
    VerificationError,
)
from ._files.hashing import Hasher, StatCache, hash_file, normalize_path, walk_files
from ._files.manifest import Manifest
from ._ledger.ledger import DEFAULT_URL, Ledger, LedgerRecord, LineageNode, open_ledger
from ._log.chain import ChainSummary, build_block, verify_block, verify_chain
from ._log.merkle import MerkleBuilder, inclusion_proof, merkle_root, verify_inclusion
from ._model import (
    Artifact,
    Block,
    BlockHeader,
    DirectoryArtifact,
    Record,
    StoredBlock,
    StoredRecord,
    artifact_map,
)
from ._verification.prerun import Policy, check_before_run, check_each, verify_before_run
from ._verification.verify import (
    ArtifactCheck,
    ArtifactStatus,
    Report,
    check_artifact,
    verify_artifact,
    verify_chain_of,
    verify_closure,
    verify_lineage,
)

__version__ = "0.1.0"

# The capture machinery (threads, shared memory, the recording process) is for engines'
# processes; a command that only reads (verify-lineage in a fresh process) does not pay
# for importing it. Imported on first use of one of these names.
_LAZY = {
    "TaskCapture": "._capture.task", "TaskRun": "._capture.report", "code_digest": "._capture.report",
    "jsonable": "._capture.report", "ProcessCapture": "._capture.process", "Recorder": "._ledger.recorder",
    "spool_first": "._ledger.deferred", "PendingWrite": "._capture.pending",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lineage_ledger' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "DEFAULT_URL", "AppendConflict", "Artifact", "DirectoryArtifact", "Manifest", "artifact_map", "ArtifactCheck", "ArtifactError",
    "ArtifactMismatch", "ArtifactStatus", "BackendError", "BackendUnavailable", "Block",
    "BlockHeader", "ChainBroken", "CheckpointInvalid", "HistoryRewritten", "IndexTampered",
    "NoLedger", "NeedsMigration", "ProofFailed", "ChainSummary", "ConfigError", "CorruptStore", "Hasher",
    "Ledger", "LedgerError", "LedgerRecord", "LineageBroken", "LineageNode", "MerkleBuilder",
    "MerkleMismatch", "MissingExtra", "PendingWrite", "Policy", "ProcessCapture", "Record", "RecordPending", "RecordTampered", "Recorder",
    "Report", "SpoolCorrupt", "SpoolError", "SpoolFull", "StatCache", "StoredBlock",
    "StoredRecord", "TaskCapture", "TaskRun", "UnknownScheme", "VerificationError", "build_block", "canonical_bytes", "code_digest",
    "check_artifact", "check_before_run", "check_each", "current_environment", "spool_first", "format_time", "hash_file",
    "inclusion_proof", "jsonable", "merkle_root", "normalize_path", "open_ledger", "parse_time", "utcnow",
    "verify_artifact", "verify_block", "verify_chain", "verify_chain_of", "verify_closure",
    "verify_before_run", "verify_inclusion", "verify_lineage", "walk_files",
]
