"""The Provenance Run Crate's entities of a selection, added to a :class:`._crate_graph.CrateGraph`
a record at a time, in the order the ``rocrate`` crate of the whole selection had them.

What the crate says is :mod:`._rocrate`'s docstring. Nothing here grows with the run: what
must be looked up again (a file version's entity, the parameter and example pairs already
linked, the versions each run read and wrote, its control actions) is kept in the graph's
scratch file; only the steps, their parameters and the people are held, a few per workflow.
"""

from __future__ import annotations

import json
import mimetypes
import os
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from .._ledger.ledger import LedgerRecord
from ._crate_copy import Places, copy_version, slug
from ._crate_graph import CrateGraph
from ._names import display_path, extra_text, file_key
from ._select import FileVersion, RunSummary, Selection, artifacts

__all__ = ["CHECKPOINT", "CRATE_DIR", "PROFILES", "PROOFS", "TERMS", "WORKFLOW", "CrateBuilder", "iso"]

CRATE_DIR = "lineage-ledger"
PROOFS = f"{CRATE_DIR}/proofs.json"
CHECKPOINT = f"{CRATE_DIR}/checkpoint.txt"
WORKFLOW = f"{CRATE_DIR}/workflow.json"
VOCAB = "https://lineage-ledger.invalid/ns#"  # a vocabulary name, never fetched
TERMS = {"blake3": f"{VOCAB}blake3", "ledgerPath": f"{VOCAB}ledgerPath", "treeSize": f"{VOCAB}treeSize",
         "leafIndex": f"{VOCAB}leafIndex", "ledgerExtra": f"{VOCAB}ledgerExtra"}
PROFILES = [
    "https://w3id.org/ro/wfrun/process/0.5",
    "https://w3id.org/ro/wfrun/workflow/0.5",
    "https://w3id.org/ro/wfrun/provenance/0.5",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
]
_PROFILE_NAMES = ["Process Run Crate", "Workflow Run Crate", "Provenance Run Crate", "Workflow RO-Crate"]
_FP_PROFILE = "https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"
_WF_PROFILE = "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"
_COMPLETED, _FAILED = "http://schema.org/CompletedActionStatus", "http://schema.org/FailedActionStatus"


def iso(moment: datetime) -> str:
    """The profiles' time form: ISO 8601 with milliseconds and a numeric offset."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def data_entity(relative: str, props: dict[str, Any], *, is_dir: bool = False) -> dict[str, Any]:
    """A File (Dataset) entity at ``relative`` in the crate: its id as ``rocrate``'s
    ``add_file`` (``add_dataset``) makes it, quoted, a directory's ending in a slash."""
    ident = quote(PurePosixPath(relative).as_posix())
    return {"@id": ident.rstrip("/") + "/" if is_dir else ident, "@type": "Dataset" if is_dir else "File", **props}


def _ref(ident: str) -> dict[str, str]:
    return {"@id": ident}


class CrateBuilder:
    """Adds the entities of a selection to ``graph``: :meth:`start`, :meth:`task` for each
    record in ledger order, then :meth:`finish`."""

    def __init__(self, graph: CrateGraph, selection: Selection, crate_dir: str, with_data: bool) -> None:
        self.graph, self.selection, self.dir, self.with_data = graph, selection, crate_dir, with_data
        self.copied = 0
        self.places = Places(graph.db)  # where copies are in the crate
        self.tools: dict[tuple[str, str], tuple[int, str, str]] = {}  # (seq, id, name)
        self.steps: dict[tuple[str, str], str] = {}
        self.params: dict[str, tuple[int, str]] = {}
        self.slots: dict[tuple[str, str, str], str] = {}  # a parameter's id, made once
        self.people: set[str] = set()
        self.users: dict[str, set[Any]] = {}  # per run, up to two: is there exactly one?
        self.workflow_steps: dict[str, dict[str, Any]] = {}  # workflow.json's
        self.workflow = 0
        self._marks: list[tuple[str, int, int, int]] = []  # rows for run_files and controls, gathered:
        self._controls: list[tuple[str, str]] = []  # read only once every task is added
        db = graph.db
        # In order of first mention (rowid), as the builder's dict of File entities was.
        db.execute("CREATE TABLE files (path TEXT NOT NULL, digest TEXT NOT NULL, entity INTEGER NOT NULL,"
                   " ident TEXT NOT NULL, PRIMARY KEY (path, digest))")
        db.execute("CREATE TABLE examples (parameter INTEGER NOT NULL, example INTEGER NOT NULL,"
                   " PRIMARY KEY (parameter, example)) WITHOUT ROWID")
        db.execute("CREATE TABLE run_files (run TEXT NOT NULL, file INTEGER NOT NULL, consumed INTEGER NOT NULL,"
                   " produced INTEGER NOT NULL, PRIMARY KEY (run, file)) WITHOUT ROWID")
        db.execute("CREATE TABLE controls (run TEXT NOT NULL, ident TEXT NOT NULL)")
        db.execute("CREATE INDEX controls_of ON controls (run)")

    def entity(self, ident: str, props: dict[str, Any]) -> int:
        return self.graph.add({"@id": ident, **props})

    # -- the crate's own entities --------------------------------------------------------------
    def start(self, root: dict[str, Any], metadata: dict[str, Any], tree_size: int) -> None:
        """The root and the metadata descriptor (``rocrate``'s first two), then the entities the
        crate has before its tasks'."""
        self.graph.root = self.graph.add(root)
        self.graph.add(metadata)
        self.entity("#lineage-ledger", {"@type": ["ComputerLanguage", "SoftwareApplication"], "name": "lineage-ledger",
                                        "url": _ref("https://pypi.org/project/lineage-ledger/")})
        self.workflow = self.graph.add(data_entity(WORKFLOW, {
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": "workflow as recorded by lineage-ledger",
            "conformsTo": _ref(_WF_PROFILE), "hasPart": [], "step": [], "input": [], "output": [],
            "programmingLanguage": _ref("#lineage-ledger"), "encodingFormat": "application/json"}), data=True)
        for uri, name in zip(PROFILES, _PROFILE_NAMES, strict=True):
            self.entity(uri, {"@type": "CreativeWork", "name": name, "version": uri.rsplit("/", 1)[1]})
        self.graph.add(data_entity(CHECKPOINT, {
            "name": "the ledger's tree head (checkpoint note)", "encodingFormat": "text/plain",
            "treeSize": tree_size, "about": _ref("./")}), data=True)
        self.graph.add(data_entity(PROOFS, {
            "name": "leaf index and inclusion proof of every record", "encodingFormat": "application/json"}), data=True)

    def root_properties(self, license: str | None) -> dict[str, Any]:
        """What the exporter sets on the root data entity."""
        # The profiles require a license; the exporter cannot know the data's, so unless one is
        # given the crate says so in words (a string is allowed).
        return {"mainEntity": _ref(WORKFLOW), "conformsTo": [_ref(uri) for uri in PROFILES],
                "name": f"lineage-ledger export of {self.selection.count} task(s)",
                "description": "Tasks and files recorded by lineage-ledger; verify offline with verify-lineage --crate",
                "license": _ref(license) if license and "://" in license else license
                or "not stated by the exporter: ask the owner of the data before reusing it"}

    # -- a task --------------------------------------------------------------------------------
    def task(self, entry: LedgerRecord) -> None:
        record = entry.record
        step = self.workflow_steps.setdefault(f"{record.engine}:{record.task_name}", {
            "engine": record.engine, "name": record.task_name, "tasks": 0})
        step["tasks"] += 1
        key = (record.engine, record.task_name)
        tool_seq, tool_id, tool_name = self._tool(*key)
        if key not in self.steps:
            self.steps[key] = step_id = f"#step-{tool_id[1:]}"
            self.entity(step_id, {"@type": "HowToStep", "name": tool_name, "position": str(len(self.steps) - 1),
                                  "workExample": _ref(tool_id)})
            self.graph.append(self.workflow, "hasPart", tool_id)
            self.graph.append(self.workflow, "step", step_id)
        status = _FAILED if record.status == "failed" else _COMPLETED
        action = self._task_action(entry, tool_seq, tool_id, status)
        control = f"#control-{entry.id}"
        self.entity(control, {"@type": "ControlAction", "name": f"orchestrate {tool_name}",
                              "instrument": _ref(self.steps[key]), "object": _ref(action), "actionStatus": status})
        self._controls.append((record.run_id, control))
        users = self.users.setdefault(record.run_id, set())
        if len(users) < 2 and record.environment.get("user") not in (None, ""):
            users.add(record.environment.get("user"))
        self.graph.append(self.graph.root, "mentions", action)

    def _task_action(self, entry: LedgerRecord, tool_seq: int, tool_id: str, status: str) -> str:
        record = entry.record
        objects, results = [], []
        for index, (path, art) in enumerate(sorted(artifacts(record.inputs))):
            seq, ident, row = self._file(path, art)
            self._example(self._formal(tool_seq, tool_id, "in", str(index), _kind(art)), seq, ident)
            objects.append(_ref(ident))
            if record.outputs:  # a target rule that only reads does not make its inputs intermediate
                self._mark(record.run_id, row, consumed=1)
        for key, value in sorted(record.parameters.items()):
            parameter = self._formal(tool_seq, tool_id, "param", key, "Text")
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            ident = f"#param-{entry.id[:16]}-{slug(key)}"
            seq = self.entity(ident, {"@type": "PropertyValue", "name": key, "value": text})
            self._example(parameter, seq, ident)
            objects.append(_ref(ident))
        for index, (path, art) in enumerate(sorted(artifacts(record.outputs))):
            seq, ident, row = self._file(path, art)
            self._example(self._formal(tool_seq, tool_id, "out", str(index), _kind(art)), seq, ident)
            results.append(_ref(ident))
            self._mark(record.run_id, row, produced=1)
        record_file = data_entity(f"{CRATE_DIR}/records/{entry.id}.json", {
            "name": f"ledger record {entry.id[:12]}", "encodingFormat": "application/json", "blake3": entry.id})
        self.graph.add(record_file, data=True)
        props: dict[str, Any] = {
            "@type": "CreateAction", "name": f"{record.engine}:{record.task_name} ({record.task_id})",
            "instrument": _ref(tool_id), "object": objects, "result": results, "identifier": entry.id,
            "subjectOf": _ref(record_file["@id"]),
            "description": f"task {record.task_id} of run {record.run_id}, attempt {record.attempt}, "
                           f"{record.status}; ledger record {entry.id}",
            "startTime": iso(record.started), "endTime": iso(record.ended), "actionStatus": status,
        }
        if record.status == "failed":
            props["error"] = f"the task failed (attempt {record.attempt})"
        if record.extra:  # the record's own map, exactly: verify-lineage --crate compares it
            props["ledgerExtra"] = extra_text(record.extra)
        user = record.environment.get("user")
        if isinstance(user, str) and user:
            props["agent"] = _ref(self._person(user))
        ident = f"#task-{entry.id}"
        self.entity(ident, props)
        return ident

    def _tool(self, engine: str, name: str) -> tuple[int, str, str]:
        if (engine, name) not in self.tools:
            ident, label = f"#tool-{slug(engine)}-{slug(name)}", f"{engine}:{name}"
            seq = self.entity(ident, {"@type": "SoftwareApplication", "name": label, "input": [], "output": []})
            self.tools[(engine, name)] = (seq, ident, label)
        return self.tools[(engine, name)]

    def _formal(self, tool_seq: int, tool_id: str, role: str, slot: str, kind: str) -> tuple[int, str]:
        ident = self.slots.get((tool_id, role, slot))
        if ident is None:
            ident = self.slots[(tool_id, role, slot)] = f"{tool_id}/{role}/{slug(slot)}"
        if ident not in self.params:
            self.params[ident] = (self.entity(ident, {
                "@type": "FormalParameter", "name": f"{role} {slot}", "additionalType": kind,
                "conformsTo": _ref(_FP_PROFILE), "workExample": []}), ident)
            self.graph.append(tool_seq, "input" if role in ("in", "param") else "output", ident)
        return self.params[ident]

    def _example(self, parameter: tuple[int, str], seq: int, ident: str) -> None:
        # Once per pair: a reference all tasks of a step read was listed once per task.
        if self.graph.db.execute("INSERT OR IGNORE INTO examples VALUES (?, ?)", (parameter[0], seq)).rowcount:
            self.graph.append(parameter[0], "workExample", ident)
            self.graph.append(seq, "exampleOfWork", parameter[1])

    def _person(self, name: str) -> str:
        ident = f"#user-{slug(name)}"
        if ident not in self.people:
            self.people.add(ident)
            self.entity(ident, {"@type": "Person", "name": name})
        return ident

    def _mark(self, run: str, row: int, consumed: int = 0, produced: int = 0) -> None:
        self._marks.append((run, row, consumed, produced))
        if len(self._marks) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        """Insert what was gathered for the runs (read only once every task is added)."""
        self.graph.db.executemany(
            "INSERT INTO run_files VALUES (?, ?, ?, ?) ON CONFLICT (run, file) DO UPDATE SET"
            " consumed = max(consumed, excluded.consumed), produced = max(produced, excluded.produced)",
            self._marks)
        self.graph.db.executemany("INSERT INTO controls (run, ident) VALUES (?, ?)", self._controls)
        self._marks.clear()
        self._controls.clear()

    def _file(self, path: str, art: Any) -> tuple[int, str, int]:
        """(seq, id, row in the files table) of the File (or, for a directory, Dataset)
        entity of the version ``art`` of ``path``, added at its first mention."""
        found = self.graph.db.execute("SELECT entity, ident, rowid FROM files WHERE path = ? AND digest = ?",
                                      (path, art["blake3"])).fetchone()
        if found is not None:
            return found
        version = self.selection.version(path, art["blake3"]) or FileVersion(
            path, art["blake3"], art["size"], art.get("type") == "dir")
        shown = display_path(version.path)
        props: dict[str, Any] = {"@type": "Dataset" if version.is_dir else "File", "name": shown,
                                 "blake3": version.digest, "contentSize": str(version.size), "ledgerPath": version.path}
        if not version.is_dir:
            props["encodingFormat"] = mimetypes.guess_type(version.path)[0] or "application/octet-stream"
        if version.aliases:
            props["alternateName"] = [display_path(alias) for alias in version.aliases]
        # (Absent from the disk: nothing is copied, and no place is asked for.)
        relative = self.places.place(version.path, shown) if self.with_data and os.path.lexists(version.path) \
            else None
        if relative is not None and copy_version(version, self.dir, relative):
            self.places.take(relative)
            self.copied += 1
            body = data_entity(relative, props, is_dir=version.is_dir)
            seq = self.graph.add(body, data=True)
        else:  # not in the crate: described by its digest only
            props["description"] = "not included in the crate; identified by its BLAKE3 digest" + (
                " (of its manifest, docs/directories.md)" if version.is_dir else "")
            kind = "dir" if version.is_dir else "file"
            body = {"@id": f"#{kind}-{file_key(version.path, version.digest)}", **props}
            seq = self.graph.add(body)
        row = self.graph.db.execute("INSERT INTO files VALUES (?, ?, ?, ?)",
                                    (path, art["blake3"], seq, body["@id"])).lastrowid
        assert row is not None
        return seq, body["@id"], row

    # -- the runs ------------------------------------------------------------------------------
    def finish(self) -> None:
        """Each run's CreateAction, its engine and its OrganizeAction, after every task."""
        self._flush()
        for run_id, summary in self.selection.summaries.items():
            self._run(run_id, summary)

    def _run(self, run_id: str, summary: RunSummary) -> None:
        ident = f"#run-{slug(run_id)}"
        start, end = iso(summary.started), iso(summary.ended)
        props: dict[str, Any] = {
            "@type": "CreateAction", "name": f"run {run_id}", "instrument": _ref(WORKFLOW),
            "description": f"workflow run {run_id}: {summary.tasks} recorded task(s)",
            "startTime": start, "endTime": end, "actionStatus": _FAILED if summary.failed else _COMPLETED}
        users = self.users.get(run_id, set())
        if len(users) == 1:
            props["agent"] = _ref(f"#user-{slug(next(iter(users)))}")
        seq = self.entity(ident, props)
        # Sources and results once, not per file; in order of first mention.
        files = ("SELECT f.ident AS target, r.file AS place FROM run_files r JOIN files f ON f.rowid = r.file"
                 " WHERE r.run = ? AND r.consumed = {} AND r.produced = {}")
        self.graph.append_selected(seq, "object", files.format(1, 0), (run_id,))
        self.graph.append_selected(seq, "result", files.format(0, 1), (run_id,))
        if len(users) == 1:
            self._person(next(iter(users)))
        engine = f"#engine-{slug(summary.engine)}"
        self.entity(engine, {"@type": "SoftwareApplication", "name": summary.engine})
        organize = self.entity(f"#organize-{slug(run_id)}", {
            "@type": "OrganizeAction", "name": f"{summary.engine} orchestrating run {run_id}",
            "instrument": _ref(engine), "result": _ref(ident), "startTime": start, "endTime": end})
        self.graph.append_selected(organize, "object", "SELECT ident AS target, rowid AS place FROM controls"
                                   " WHERE run = ?", (run_id,))
        self.graph.append(self.graph.root, "mentions", ident)


def _kind(art: Any) -> str:
    return "Dataset" if art.get("type") == "dir" else "File"
