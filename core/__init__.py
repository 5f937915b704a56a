"""lineage-ledger: a provenance ledger for scientific workflows.

``import lineage_ledger`` is light: no workflow engine, SQLAlchemy, mpi4py or gRPC is
imported until a back-end or plugin that needs it is used.

Start with :func:`open_ledger`, :class:`Record`, :func:`hash_file` and :func:`verify_lineage`
(``docs/guide.md``). Every error raised on purpose derives from :class:`LedgerError`, whose
help draws the tree. ``lineage_ledger.testing`` holds the back-end conformance suite (pytest;
not imported here).
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Every public name is imported on first use (PEP 562), so that a process pays only for
# what it touches: ``verify-lineage FILE`` in a fresh process does not import the full
# audit, the capture machinery (threads, shared memory, the recording process) or the
# environment probe. The module that holds each name; the block under TYPE_CHECKING says the
# same to type checkers, and tests/test_layout.py checks that the two agree.
_HOME = {
    "._canonical": "canonical_bytes format_time parse_time utcnow",
    "._environment": "current_environment",
    "._errors": ("AppendConflict ArtifactError ArtifactMismatch BackendError BackendUnavailable "
        "ChainBroken CheckpointInvalid ConfigError CorruptStore HistoryRewritten "
        "IndexTampered LedgerError LineageBroken MerkleMismatch MissingExtra "
        "NeedsMigration NoLedger ProofFailed RecordPending RecordTampered SpoolCorrupt "
        "SpoolError SpoolFull UnknownScheme VerificationError"),
    "._files.hashing": "Hasher StatCache hash_file normalize_path walk_files",
    "._files.manifest": "Manifest",
    "._ledger.ledger": "DEFAULT_URL Ledger LedgerRecord LineageNode open_ledger",
    "._log.chain": "ChainSummary build_block verify_block verify_chain",
    "._log.merkle": "MerkleBuilder inclusion_proof merkle_root verify_inclusion",
    "._model": "Artifact Block BlockHeader DirectoryArtifact Record StoredBlock StoredRecord artifact_map",
    "._verification.prerun": "Policy check_before_run check_each verify_before_run",
    "._verification.verify": ("ArtifactCheck ArtifactStatus Report check_artifact verify_artifact "
        "verify_chain_of verify_closure verify_lineage"),
    "._capture.task": "TaskCapture",
    "._capture.report": "TaskRun code_digest jsonable",
    "._capture.process": "ProcessCapture",
    "._ledger.recorder": "Recorder",
    "._ledger.deferred": "spool_first",
    "._capture.pending": "PendingWrite",
}
_LAZY = {name: module for module, names in _HOME.items() for name in names.split()}

if TYPE_CHECKING:
    from ._canonical import (
        canonical_bytes,
        format_time,
        parse_time,
        utcnow,
    )
    from ._capture.pending import (
        PendingWrite,
    )
    from ._capture.process import (
        ProcessCapture,
    )
    from ._capture.report import (
        TaskRun,
        code_digest,
        jsonable,
    )
    from ._capture.task import (
        TaskCapture,
    )
    from ._environment import (
        current_environment,
    )
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
    from ._files.hashing import (
        Hasher,
        StatCache,
        hash_file,
        normalize_path,
        walk_files,
    )
    from ._files.manifest import (
        Manifest,
    )
    from ._ledger.deferred import (
        spool_first,
    )
    from ._ledger.ledger import (
        DEFAULT_URL,
        Ledger,
        LedgerRecord,
        LineageNode,
        open_ledger,
    )
    from ._ledger.recorder import (
        Recorder,
    )
    from ._log.chain import (
        ChainSummary,
        build_block,
        verify_block,
        verify_chain,
    )
    from ._log.merkle import (
        MerkleBuilder,
        inclusion_proof,
        merkle_root,
        verify_inclusion,
    )
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
    from ._verification.prerun import (
        Policy,
        check_before_run,
        check_each,
        verify_before_run,
    )
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


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lineage_ledger' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
