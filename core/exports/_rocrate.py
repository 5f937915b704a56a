"""Workflow Run RO-Crate (Provenance Run Crate profile 0.5) through ``rocrate``, verifiable offline.

The crate describes the selected records the way the profile asks: the workflow as the
ledger saw it (``lineage-ledger/workflow.json``, the main entity: its tools and steps), one
``CreateAction`` per task (instrument its tool, objects its input files and parameters,
results its output files, times and status), a ``ControlAction`` per task linking it to
its step, and per run an ``OrganizeAction`` (the engine) and the run's ``CreateAction``.
Every file version is a ``File`` entity with its BLAKE3 digest (``blake3``), size and the
path the ledger recorded (``ledgerPath``); the versions still on disk with those bytes are
copied under ``data/`` unless ``--no-data``. A directory artifact is a ``Dataset`` entity
instead, with the manifest digest (docs/directories.md) as its ``blake3`` and the bytes of its
files as its ``contentSize``; copied whole when it still holds the recorded manifest and has
no symbolic links (a zip cannot carry them). Paths through symbolic links that name the same
version (alias entries) are its ``alternateName``, not entities of their own.

Beyond the profile, ``lineage-ledger/`` holds what lets a recipient check the crate with no
access to the ledger (``verify-lineage --crate``, :mod:`._crate_verify`):

* ``checkpoint.txt``: the ledger's tree head as a checkpoint note (signed with ``--key``),
* ``records/<id>.json``: each record's canonical bytes (its id is their BLAKE3),
* ``proofs.json``: each record's leaf index and RFC 9162 inclusion proof in that tree.

The crate is written as the records are read, a page at a time (``Selection.records``): each
record's file and proof, and its entities into a scratch file (:mod:`._crate_build`,
:mod:`._crate_graph`), from which the metadata is then written an entity at a time. The
text is what ``rocrate``'s crate of the whole selection wrote, byte for byte; ``rocrate``
itself makes the context, the root data entity and the metadata descriptor. A 10,000-task
run held 624 MB whole.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from typing import IO, Any

from .._canonical import utcnow
from .._errors import ConfigError
from .._ledger.ledger import Ledger, LedgerRecord
from . import require
from ._crate_build import CHECKPOINT, CRATE_DIR, PROFILES, PROOFS, TERMS, WORKFLOW, CrateBuilder, iso
from ._crate_graph import CrateGraph
from ._output import new_private_dir, remove_unfinished
from ._select import Selection

__all__ = ["CRATE_DIR", "PROFILES", "TERMS", "WrittenCrate", "write_crate"]

PROOFS_FORMAT = "lineage-ledger-crate-proofs/1"


@dataclass
class WrittenCrate:
    path: str
    files_copied: int
    records: int


def _prepare_dir(path: str) -> str | None:
    """The crate's directory made ready; what :func:`remove_unfinished` takes away on failure."""
    made = new_private_dir(path)  # 0700: it holds every record's body, as the ledger (0600) does
    try:
        os.makedirs(os.path.join(path, CRATE_DIR, "records"), exist_ok=True)
    except BaseException:
        remove_unfinished(path, made)
        raise
    return made


class _Proofs:
    """``proofs.json`` written a record at a time, as ``json.dump(..., indent=1, sort_keys=True)``
    wrote the whole document: every proof in one tree head, read once (records appended while
    the crate is written must not leave some proofs for one size and the checkpoint for
    another; a perfect subtree never changes as the tree grows, so proofs for a fixed size
    are stable)."""

    def __init__(self, ledger: Ledger, head: Any, handle: IO[str]) -> None:
        self.store, self.head, self.handle, self.count = ledger.verifier.store, head, handle, 0
        handle.write("{\n" + "".join(f" {json.dumps(key)}: {json.dumps(value)},\n" for key, value in (
            ("checkpoint", CHECKPOINT), ("format", PROOFS_FORMAT), ("origin", head.origin))) + ' "records": [')

    def add(self, entry: LedgerRecord) -> None:
        from .._log.tree import BLAKE3, inclusion_proof

        index = self.store.block_start(entry.height) + entry.position
        proof = [node.hex() for node in inclusion_proof(self.store.node, index, self.head.size, BLAKE3)]
        item = {"id": entry.id, "file": f"{CRATE_DIR}/records/{entry.id}.json", "leaf_index": index,
                "inclusion_proof": proof}
        text = json.dumps(item, indent=1, sort_keys=True).replace("\n", "\n  ")
        self.handle.write(("," if self.count else "") + "\n  " + text)
        self.count += 1

    def close(self) -> None:
        self.handle.write(("\n ]" if self.count else "]") + f',\n "tree_size": {json.dumps(self.head.size)}\n}}\n')


def write_crate(ledger: Ledger, selection: Selection, path: str, *, keyfile: str | None = None,
                with_data: bool = True, license: str | None = None) -> WrittenCrate:
    """Write the crate directory ``path`` (new or empty), or the zip file ``path`` when it
    ends in ``.zip`` (RO-Crate's packaging for sharing; a new file, never overwritten)."""
    if path.lower().endswith(".zip"):
        return _write_zip(ledger, selection, path, keyfile=keyfile, with_data=with_data, license=license)
    require("rocrate.rocrate", "rocrate")  # a missing extra is said before anything is made
    from .._log.checkpoint import load_signer

    signer = load_signer(keyfile) if keyfile else None
    made = _prepare_dir(path)
    try:
        return _write_crate_dir(ledger, selection, path, signer, with_data, license)
    except BaseException:  # a file that cannot be read or copied, a full disk, ^C: no half crate
        remove_unfinished(path, made)
        raise


def _write_crate_dir(ledger: Ledger, selection: Selection, path: str, signer: Any, with_data: bool,
                     license: str | None) -> WrittenCrate:
    from .._log.checkpoint import checkpoint_text

    rocrate = require("rocrate.rocrate", "rocrate")
    head = ledger.tree_head()  # every selected record was proved in this head or an earlier one
    # Read back first: a crate whose checkpoint no reader accepts proves nothing (an origin
    # too long for a note: ConfigError, and the half-made crate is removed).
    text = checkpoint_text(head.origin, head.size, bytes.fromhex(head.root), utcnow(), signer)
    with open(os.path.join(path, CHECKPOINT), "w", encoding="utf-8") as handle:
        handle.write(text)

    crate = rocrate.ROCrate(version="1.1")  # the Workflow Run Crate profiles 0.5 build on RO-Crate 1.1
    crate.metadata.extra_terms.update(TERMS)
    graph = CrateGraph(crate.resolve_id, crate.arcp_base_uri)
    try:
        builder = CrateBuilder(graph, selection, path, with_data)
        builder.start(crate.root_dataset.properties(), crate.metadata.properties(), head.size)
        crate.root_dataset["datePublished"] = iso(utcnow())
        records = 0
        with open(os.path.join(path, PROOFS), "w", encoding="utf-8") as handle:
            proofs = _Proofs(ledger, head, handle)
            for entry in selection.records():
                with open(os.path.join(path, CRATE_DIR, "records", f"{entry.id}.json"), "wb") as record:
                    record.write(entry.record.encode())
                proofs.add(entry)
                builder.task(entry)
                records += 1
            proofs.close()
        builder.finish()
        for key, value in builder.root_properties(license).items():
            crate.root_dataset[key] = value
        graph.update(graph.root, crate.root_dataset.properties())
        with open(os.path.join(path, WORKFLOW), "w", encoding="utf-8") as handle:
            json.dump({"recorded_by": "lineage-ledger", "runs": selection.runs,
                       "steps": list(builder.workflow_steps.values())}, handle, indent=1, sort_keys=True)
            handle.write("\n")
        # The context as rocrate writes it (its own crate holds the root and this descriptor only).
        graph.write(os.path.join(path, "ro-crate-metadata.json"), crate.metadata.generate()["@context"])
    finally:
        graph.close()
    return WrittenCrate(path, builder.copied, records)


def _write_zip(ledger: Ledger, selection: Selection, path: str, **options: Any) -> WrittenCrate:
    if os.path.lexists(path):
        raise ConfigError(f"{path}: exists; the crate needs a new file")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path)) or None) as scratch:
        built = write_crate(ledger, selection, os.path.join(scratch, "crate"), **options)
        # A new file, never a link followed (O_EXCL), 0600 like the ledger whose records it holds.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for folder, dirs, files in sorted(os.walk(built.path)):
                    for name in sorted(dirs):  # an empty directory inside a carried directory counts in its digest
                        full = os.path.join(folder, name)
                        archive.write(full, os.path.relpath(full, built.path) + "/")
                    for name in sorted(files):
                        full = os.path.join(folder, name)
                        archive.write(full, os.path.relpath(full, built.path))
        except BaseException:  # a full disk: no half zip that looks like a crate
            os.unlink(path)
            raise
    return WrittenCrate(path, built.files_copied, built.records)
