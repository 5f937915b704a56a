"""W3C PROV (PROV-JSON and PROV-N) through the ``prov`` package.

Tasks are activities, file versions are entities (path, BLAKE3 digest, size), with
``used``, ``wasGeneratedBy`` and ``wasDerivedFrom`` (each output from each input of the
task that made it). Agents: the user and the host a task ran as and on, and the engine
that ran it (a software agent acting for the user).

A directory artifact is one entity of types ``ll:DirectoryVersion`` and ``prov:Collection``
(its BLAKE3 is the manifest digest, docs/directories.md); paths through symbolic links that
name the same version are its ``ll:alias`` attributes, not entities of their own.
"""

from __future__ import annotations

import json
from typing import Any

from . import require
from ._names import file_key, task_label
from ._select import Selection, artifacts

__all__ = ["NAMESPACE", "prov_document", "write_prov"]

NAMESPACE = "https://lineage-ledger.invalid/ns#"  # a vocabulary name, never fetched
_SIMPLE = (str, int, float, bool)


def _attribute(value: Any) -> Any:
    """PROV attribute values are literals: nested values are kept as JSON text."""
    return value if isinstance(value, _SIMPLE) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def prov_document(selection: Selection, contains: dict[tuple[str, str], tuple[str, str]] | None = None) -> Any:
    """A ``prov.model.ProvDocument`` describing the selected records; ``contains`` ({file
    version: directory version}, :func:`._select.members`) adds ``hadMember`` statements."""
    model = require("prov.model", "prov")
    doc = model.ProvDocument()
    doc.add_namespace("ll", NAMESPACE)
    doc.add_namespace("task", "urn:lineage-ledger:record:")
    doc.add_namespace("file", "urn:lineage-ledger:file:")
    doc.add_namespace("agent", "urn:lineage-ledger:agent:")
    doc.add_namespace("tree", "urn:lineage-ledger:tree:")
    head = selection.head
    doc.entity("tree:head", {"prov:type": "ll:TreeHead", "ll:origin": head.origin, "ll:size": head.size,
                             "ll:root": head.root})
    entities: dict[tuple[str, str], Any] = {}
    for version in selection.versions().values():
        described: list[tuple[str, Any]] = [
            ("prov:label", version.path), ("ll:path", version.path), ("ll:blake3", version.digest),
            ("ll:size", version.size)]
        if version.is_dir:
            described += [("prov:type", "ll:DirectoryVersion"), ("prov:type", "prov:Collection")]
        else:
            described.append(("prov:type", "ll:FileVersion"))
        described += [("ll:alias", alias) for alias in version.aliases]
        entities[(version.path, version.digest)] = doc.entity(
            f"file:{file_key(version.path, version.digest)}", described)
    for member, directory in (contains or {}).items():
        doc.hadMember(entities[directory], entities[member])
    agents: dict[str, Any] = {}

    def agent(kind: str, name: str, prov_type: str) -> Any:
        key = f"{kind}/{name}"
        if key not in agents:
            agents[key] = doc.agent(f"agent:{key}", {"prov:label": name, "prov:type": prov_type})
        return agents[key]

    for entry in selection.entries:
        record = entry.record
        attributes = {
            "prov:label": task_label(record.engine, record.task_name), "prov:type": "ll:Task",
            "ll:record": entry.id, "ll:engine": record.engine, "ll:run_id": record.run_id,
            "ll:task_id": record.task_id, "ll:task_name": record.task_name, "ll:status": record.status,
            "ll:attempt": record.attempt, "ll:block_height": entry.height, "ll:block_position": entry.position,
        }
        if record.code_digest:
            attributes["ll:code_digest"] = record.code_digest
        if record.parameters:
            attributes["ll:parameters"] = _attribute(record.parameters)
        activity = doc.activity(f"task:{entry.id}", record.started, record.ended, attributes)
        engine = agent("engine", record.engine, "prov:SoftwareAgent")
        doc.wasAssociatedWith(activity, engine)
        user_name = record.environment.get("user")
        if isinstance(user_name, str) and user_name:
            user = agent("user", user_name, "prov:Person")
            doc.wasAssociatedWith(activity, user)
            doc.actedOnBehalfOf(engine, user, activity)
        host_name = record.environment.get("host")
        if isinstance(host_name, str) and host_name:
            doc.wasAssociatedWith(activity, agent("host", host_name, "ll:Host"))
        inputs = artifacts(record.inputs)
        for path, art in inputs:
            doc.used(activity, entities[(path, art["blake3"])], record.started)
        for path, art in artifacts(record.outputs):
            output = entities[(path, art["blake3"])]
            doc.wasGeneratedBy(output, activity, record.ended)
            for in_path, in_art in inputs:
                doc.wasDerivedFrom(output, entities[(in_path, in_art["blake3"])], activity)
    return doc


def write_prov(selection: Selection, path: str, fmt: str,
               contains: dict[tuple[str, str], tuple[str, str]] | None = None) -> None:
    """Write PROV-JSON (``fmt="prov-json"``, streamed: :mod:`._prov_json`) or PROV-N
    (``fmt="prov-n"``, through ``prov``'s whole document) to ``path``."""
    if fmt == "prov-json":
        require("prov.model", "prov")
        from ._prov_json import write_prov_json

        write_prov_json(selection, path, contains)
        return
    doc = prov_document(selection, contains)
    text = doc.get_provn()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
