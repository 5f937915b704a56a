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
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .._canonical import utcnow
from .._errors import ConfigError
from .._files.hashing import hash_file
from .._ledger.ledger import Ledger, LedgerRecord
from . import require
from ._names import display_path, file_key
from ._select import FileVersion, Selection, artifacts

__all__ = ["CRATE_DIR", "PROFILES", "TERMS", "WrittenCrate", "write_crate"]

CRATE_DIR = "lineage-ledger"
PROOFS = f"{CRATE_DIR}/proofs.json"
CHECKPOINT = f"{CRATE_DIR}/checkpoint.txt"
WORKFLOW = f"{CRATE_DIR}/workflow.json"
PROOFS_FORMAT = "lineage-ledger-crate-proofs/1"
VOCAB = "https://lineage-ledger.invalid/ns#"  # a vocabulary name, never fetched
TERMS = {"blake3": f"{VOCAB}blake3", "ledgerPath": f"{VOCAB}ledgerPath", "treeSize": f"{VOCAB}treeSize",
         "leafIndex": f"{VOCAB}leafIndex"}
PROFILES = [
    "https://w3id.org/ro/wfrun/process/0.5",
    "https://w3id.org/ro/wfrun/workflow/0.5",
    "https://w3id.org/ro/wfrun/provenance/0.5",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
]
_PROFILE_NAMES = ["Process Run Crate", "Workflow Run Crate", "Provenance Run Crate", "Workflow RO-Crate"]
_FP_PROFILE = "https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"
_WF_PROFILE = "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"


@dataclass
class WrittenCrate:
    path: str
    files_copied: int
    records: int


def _iso(moment: datetime) -> str:
    """The profiles' time form: ISO 8601 with milliseconds and a numeric offset."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _compact(crate: Any) -> None:
    """RO-Crate 1.1 prefers single values to one-element lists, and no empty lists."""
    for entity in crate.get_entities():
        for key, value in list(entity._jsonld.items()):
            if isinstance(value, list) and len(value) <= 1 and key != "@type":
                if value:
                    entity._jsonld[key] = value[0]
                else:
                    del entity._jsonld[key]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:80] or "x"


def _prepare_dir(path: str) -> None:
    if os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ConfigError(f"{path}: exists and is not an empty directory; the crate needs a new one")
    os.makedirs(os.path.join(path, CRATE_DIR, "records"), exist_ok=True)


def _has_links(directory: str) -> bool:
    return any(os.path.islink(os.path.join(folder, name))
               for folder, dirs, files in os.walk(directory) for name in dirs + files)


def _copy_version(version: FileVersion, crate_dir: str, relative: str) -> bool:
    """Copy the file (directory) into the crate if it still holds the recorded bytes
    (manifest); the copy is hashed, so one changed during the copy is left out, not
    described wrongly."""
    target = os.path.join(crate_dir, relative)
    if version.is_dir:
        if not os.path.isdir(version.path) or os.path.islink(version.path) or _has_links(version.path):
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copytree(version.path, target, symlinks=True, ignore=shutil.ignore_patterns(".lineage"))
    else:
        if not os.path.isfile(version.path) or os.path.getsize(version.path) != version.size:
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(version.path, target)
    if hash_file(target).blake3 != version.digest:
        shutil.rmtree(target) if version.is_dir else os.unlink(target)
        return False
    return True


def _data_path(version: FileVersion) -> str:
    shown = display_path(version.path)
    if os.path.isabs(shown):
        shown = shown.lstrip(os.sep)
    return "data/" + "/".join(_slug(part) for part in shown.split(os.sep))


def _proofs(ledger: Ledger, selection: Selection) -> tuple[Any, list[dict[str, Any]]]:
    """Every record's inclusion proof in one tree head, read once: records appended while the
    crate is written must not leave some proofs for one size and the checkpoint for another.
    (A perfect subtree never changes as the tree grows, so proofs for a fixed size are stable.)"""
    from .._log.tree import BLAKE3, inclusion_proof

    head = ledger.tree_head()  # every selected record was proved in this head or an earlier one
    store = ledger.verifier.store
    entries = []
    for entry in selection.entries:
        index = store.block_start(entry.height) + entry.position
        proof = [node.hex() for node in inclusion_proof(store.node, index, head.size, BLAKE3)]
        entries.append({"id": entry.id, "file": f"{CRATE_DIR}/records/{entry.id}.json", "leaf_index": index,
                        "inclusion_proof": proof})
    return head, entries


def write_crate(ledger: Ledger, selection: Selection, path: str, *, keyfile: str | None = None,
                with_data: bool = True, license: str | None = None) -> WrittenCrate:
    """Write the crate directory ``path`` (new or empty), or the zip file ``path`` when it
    ends in ``.zip`` (RO-Crate's packaging for sharing; a new file, never overwritten)."""
    if path.lower().endswith(".zip"):
        return _write_zip(ledger, selection, path, keyfile=keyfile, with_data=with_data, license=license)
    rocrate = require("rocrate.rocrate", "rocrate")
    model = require("rocrate.model", "rocrate")
    from .._log.checkpoint import Checkpoint, load_signer, sign

    signer = load_signer(keyfile) if keyfile else None
    _prepare_dir(path)
    head, proofs = _proofs(ledger, selection)
    note = Checkpoint(head.origin, head.size, bytes.fromhex(head.root), utcnow())
    with open(os.path.join(path, CHECKPOINT), "w", encoding="utf-8") as handle:
        handle.write(sign(note, signer) if signer else note.body())
    for entry in selection.entries:
        with open(os.path.join(path, CRATE_DIR, "records", f"{entry.id}.json"), "wb") as handle:
            handle.write(entry.record.encode())
    with open(os.path.join(path, PROOFS), "w", encoding="utf-8") as handle:
        json.dump({"format": PROOFS_FORMAT, "checkpoint": CHECKPOINT, "origin": head.origin, "tree_size": head.size,
                   "records": proofs}, handle, indent=1, sort_keys=True)
        handle.write("\n")

    crate = rocrate.ROCrate(version="1.1")  # the Workflow Run Crate profiles 0.5 build on RO-Crate 1.1
    crate.metadata.extra_terms.update(TERMS)
    builder = _Builder(crate, model, path, with_data)
    builder.describe(selection, head)
    # The profiles require a license; the exporter cannot know the data's, so unless one is
    # given the crate says so in words (a string is allowed).
    crate.root_dataset["license"] = (
        {"@id": license} if license and "://" in license else license
        or "not stated by the exporter: ask the owner of the data before reusing it")
    _compact(crate)
    with warnings.catch_warnings():
        # The files were written into the crate above (each checked as it was copied); rocrate
        # warns that it has no source to copy them from.
        warnings.filterwarnings("ignore", message="No source for", category=UserWarning)
        crate.write(path)
    return WrittenCrate(path, builder.copied, len(selection.entries))


def _write_zip(ledger: Ledger, selection: Selection, path: str, **options: Any) -> WrittenCrate:
    if os.path.lexists(path):
        raise ConfigError(f"{path}: exists; the crate needs a new file")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path)) or None) as scratch:
        built = write_crate(ledger, selection, os.path.join(scratch, "crate"), **options)
        with zipfile.ZipFile(path, "x", compression=zipfile.ZIP_DEFLATED) as archive:
            for folder, dirs, files in sorted(os.walk(built.path)):
                for name in sorted(dirs):  # an empty directory inside a carried directory counts in its digest
                    full = os.path.join(folder, name)
                    archive.write(full, os.path.relpath(full, built.path) + "/")
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    archive.write(full, os.path.relpath(full, built.path))
    return WrittenCrate(path, built.files_copied, built.records)


def _kind(art: Any) -> str:
    return "Dataset" if art.get("type") == "dir" else "File"


class _Builder:
    """Adds the Provenance Run Crate entities for a selection to a ``rocrate`` crate."""

    def __init__(self, crate: Any, model: Any, crate_dir: str, with_data: bool) -> None:
        self.crate, self.model, self.dir, self.with_data = crate, model, crate_dir, with_data
        self.copied = 0
        self.files: dict[tuple[str, str], Any] = {}
        self.versions: dict[tuple[str, str], FileVersion] = {}
        self.tools: dict[tuple[str, str], Any] = {}
        self.params: dict[str, Any] = {}
        # What this builder added, kept here: rocrate's dereference() of an id it does not hold
        # scans every entity (for sub-crates), which made a 10,000-task export quadratic.
        self.data_paths: set[str] = set()
        self.people: dict[str, Any] = {}
        self.examples: set[tuple[str, str]] = set()  # (parameter, file or value) linked

    def entity(self, ident: str, props: dict[str, Any]) -> Any:
        return self.crate.add(self.model.ContextEntity(self.crate, ident, properties=props))

    def file(self, path: str, art: Any) -> Any:
        """The File (or, for a directory, Dataset) entity of the version ``art`` of ``path``."""
        key = (path, art["blake3"])
        if key in self.files:
            return self.files[key]
        version = self.versions.get(key) or FileVersion(path, art["blake3"], art["size"], art.get("type") == "dir")
        props: dict[str, Any] = {"@type": "Dataset" if version.is_dir else "File", "name": display_path(version.path),
                                 "blake3": version.digest, "contentSize": str(version.size), "ledgerPath": version.path}
        if not version.is_dir:
            props["encodingFormat"] = mimetypes.guess_type(version.path)[0] or "application/octet-stream"
        if version.aliases:
            props["alternateName"] = [display_path(alias) for alias in version.aliases]
        relative = _data_path(version)
        if self.with_data and relative not in self.data_paths and _copy_version(version, self.dir, relative):
            self.data_paths.add(relative)
            self.copied += 1
            add = self.crate.add_dataset if version.is_dir else self.crate.add_file
            entity = add(None, dest_path=relative, properties=props)
        else:  # not in the crate: described by its digest only
            props["description"] = "not included in the crate; identified by its BLAKE3 digest" + (
                " (of its manifest, docs/directories.md)" if version.is_dir else "")
            kind = "dir" if version.is_dir else "file"
            entity = self.entity(f"#{kind}-{file_key(version.path, version.digest)}", props)
        self.files[key] = entity
        return entity

    def person(self, name: str) -> Any:
        ident = f"#user-{_slug(name)}"
        if ident not in self.people:
            self.people[ident] = self.entity(ident, {"@type": "Person", "name": name})
        return self.people[ident]

    def formal(self, tool_id: str, role: str, slot: str, kind: str) -> Any:
        ident = f"{tool_id}/{role}/{_slug(slot)}"
        if ident not in self.params:
            self.params[ident] = self.entity(ident, {
                "@type": "FormalParameter", "name": f"{role} {slot}", "additionalType": kind,
                "conformsTo": {"@id": _FP_PROFILE}, "workExample": []})
            tool = self.crate.dereference(tool_id)
            tool.append_to("input" if role in ("in", "param") else "output", self.params[ident])
        return self.params[ident]

    def example(self, parameter: Any, entity: Any) -> None:
        # Once per pair: a reference all tasks of a step read was listed once per task.
        if (parameter.id, entity.id) not in self.examples:
            self.examples.add((parameter.id, entity.id))
            parameter.append_to("workExample", entity)
            entity.append_to("exampleOfWork", parameter)

    def tool(self, engine: str, name: str) -> Any:
        key = (engine, name)
        if key not in self.tools:
            self.tools[key] = self.entity(f"#tool-{_slug(engine)}-{_slug(name)}", {
                "@type": "SoftwareApplication", "name": f"{engine}:{name}", "input": [], "output": []})
        return self.tools[key]

    def describe(self, selection: Selection, head: Any) -> None:
        crate = self.crate
        self.versions = selection.versions()
        workflow_props = {
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": "workflow as recorded by lineage-ledger",
            "conformsTo": {"@id": _WF_PROFILE}, "hasPart": [], "step": [], "input": [], "output": [],
            "programmingLanguage": {"@id": "#lineage-ledger"}, "encodingFormat": "application/json",
        }
        self.entity("#lineage-ledger", {"@type": ["ComputerLanguage", "SoftwareApplication"],
                                        "name": "lineage-ledger", "url": {"@id": "https://pypi.org/project/lineage-ledger/"}})
        self._write_workflow_file(selection)
        workflow = crate.add_file(None, dest_path=WORKFLOW, properties=workflow_props)
        crate.mainEntity = workflow
        crate.root_dataset["conformsTo"] = [
            self.entity(uri, {"@type": "CreativeWork", "name": name, "version": uri.rsplit("/", 1)[1]})
            for uri, name in zip(PROFILES, _PROFILE_NAMES, strict=True)]
        crate.root_dataset["name"] = f"lineage-ledger export of {len(selection.entries)} task(s)"
        crate.root_dataset["description"] = (
            "Tasks and files recorded by lineage-ledger; verify offline with verify-lineage --crate")
        crate.root_dataset["datePublished"] = _iso(utcnow())
        crate.add_file(None, dest_path=CHECKPOINT, properties={
            "name": "the ledger's tree head (checkpoint note)", "encodingFormat": "text/plain",
            "treeSize": head.size, "about": {"@id": "./"}})
        crate.add_file(None, dest_path=PROOFS, properties={
            "name": "leaf index and inclusion proof of every record", "encodingFormat": "application/json"})
        steps: dict[tuple[str, str], Any] = {}
        runs: dict[str, list] = {}
        for entry in selection.entries:
            record = entry.record
            tool = self.tool(record.engine, record.task_name)
            if (record.engine, record.task_name) not in steps:
                steps[(record.engine, record.task_name)] = step = self.entity(f"#step-{tool.id[1:]}", {
                    "@type": "HowToStep", "name": tool["name"], "position": str(len(steps)), "workExample": tool})
                workflow.append_to("hasPart", tool)
                workflow.append_to("step", step)
            action = self._task_action(entry, tool)
            control = self.entity(f"#control-{entry.id}", {
                "@type": "ControlAction", "name": f"orchestrate {tool['name']}",
                "instrument": steps[(record.engine, record.task_name)], "object": action,
                "actionStatus": action["actionStatus"]})
            runs.setdefault(record.run_id, []).append((entry, control))
            crate.root_dataset.append_to("mentions", action)
        root = crate.root_dataset
        for run_id, members in runs.items():
            entries = [e for e, _ in members]
            failed = any(e.record.status == "failed" for e in entries)
            # A target rule that only reads (Snakemake's `all`) does not make its inputs intermediate.
            consumed = {(p, a["blake3"]) for e in entries if e.record.outputs for p, a in artifacts(e.record.inputs)}
            produced = {(p, a["blake3"]) for e in entries for p, a in artifacts(e.record.outputs)}
            sources, results = consumed - produced, produced - consumed  # once, not per file
            run = self.entity(f"#run-{_slug(run_id)}", {
                "@type": "CreateAction", "name": f"run {run_id}", "instrument": workflow,
                "description": f"workflow run {run_id}: {len(entries)} recorded task(s)",
                "startTime": _iso(min(e.record.started for e in entries)),
                "endTime": _iso(max(e.record.ended for e in entries)),
                "object": [self.files[k] for k in self.files if k in sources],
                "result": [self.files[k] for k in self.files if k in results],
                "actionStatus": "http://schema.org/" + ("FailedActionStatus" if failed else "CompletedActionStatus")})
            users = {e.record.environment.get("user") for e in entries} - {None, ""}
            if len(users) == 1:
                run["agent"] = self.person(users.pop())
            engine = entries[0].record.engine
            app = self.entity(f"#engine-{_slug(engine)}", {"@type": "SoftwareApplication", "name": engine})
            self.entity(f"#organize-{_slug(run_id)}", {
                "@type": "OrganizeAction", "name": f"{engine} orchestrating run {run_id}", "instrument": app,
                "object": [c for _, c in members], "result": run,
                "startTime": run["startTime"], "endTime": run["endTime"]})
            root.append_to("mentions", run)

    def _task_action(self, entry: LedgerRecord, tool: Any) -> Any:
        record = entry.record
        objects, results = [], []
        for index, (path, art) in enumerate(sorted(artifacts(record.inputs))):
            entity = self.file(path, art)
            self.example(self.formal(tool.id, "in", str(index), _kind(art)), entity)
            objects.append(entity)
        for key, value in sorted(record.parameters.items()):
            parameter = self.formal(tool.id, "param", key, "Text")
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            pv = self.entity(f"#param-{entry.id[:16]}-{_slug(key)}", {
                "@type": "PropertyValue", "name": key, "value": text})
            self.example(parameter, pv)
            objects.append(pv)
        for index, (path, art) in enumerate(sorted(artifacts(record.outputs))):
            entity = self.file(path, art)
            self.example(self.formal(tool.id, "out", str(index), _kind(art)), entity)
            results.append(entity)
        record_file = self.crate.add_file(None, dest_path=f"{CRATE_DIR}/records/{entry.id}.json", properties={
            "name": f"ledger record {entry.id[:12]}", "encodingFormat": "application/json", "blake3": entry.id})
        props: dict[str, Any] = {
            "@type": "CreateAction", "name": f"{record.engine}:{record.task_name} ({record.task_id})",
            "instrument": tool, "object": objects, "result": results, "identifier": entry.id,
            "subjectOf": record_file,
            "description": f"task {record.task_id} of run {record.run_id}, attempt {record.attempt}, "
                           f"{record.status}; ledger record {entry.id}", "startTime": _iso(record.started), "endTime": _iso(record.ended),
            "actionStatus": "http://schema.org/" + ("FailedActionStatus" if record.status == "failed"
                                                     else "CompletedActionStatus"),
        }
        if record.status == "failed":
            props["error"] = f"the task failed (attempt {record.attempt})"
        user = record.environment.get("user")
        if isinstance(user, str) and user:
            props["agent"] = self.person(user)
        return self.entity(f"#task-{entry.id}", props)

    def _write_workflow_file(self, selection: Selection) -> None:
        steps: dict[str, dict[str, Any]] = {}
        for entry in selection.entries:
            record = entry.record
            step = steps.setdefault(f"{record.engine}:{record.task_name}", {"engine": record.engine,
                                                                          "name": record.task_name, "tasks": 0})
            step["tasks"] += 1
        with open(os.path.join(self.dir, WORKFLOW), "w", encoding="utf-8") as handle:
            json.dump({"recorded_by": "lineage-ledger", "runs": selection.runs, "steps": list(steps.values())},
                      handle, indent=1, sort_keys=True)
            handle.write("\n")
