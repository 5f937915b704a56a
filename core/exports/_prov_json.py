"""PROV-JSON written as it is read: the document ``prov`` would serialize, byte for byte,
without building it.

``prov``'s model of a 10,000-task run held 650 MB and took most of the export's time; a
run of 100,000 tasks would not fit in 8 GB. The document is the same: the same statements
(:mod:`._prov` says what they mean), the same anonymous ids (``_:idN``, numbered in the
order ``prov_document`` creates the statements), the same sections in the order of their
first statement, each member written as ``json.dump(..., indent=2)`` writes it. The file
versions come from the selection's index on disk; the statements of the tasks are written
in one pass over the records, each section to a scratch file of its own, and the sections
are then joined in order. ``tests/test_export_streaming.py`` compares the output with
``prov``'s serializer.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii as _string  # what json.dumps uses by default
from typing import IO, Any

from ._names import PROV_NAMESPACE as NAMESPACE
from ._names import extra_text, task_label, xml_text
from ._names import prov_attribute as _attribute
from ._output import open_output
from ._prov_ids import PREFIXES as _ID_PREFIXES
from ._prov_ids import agent_id, file_id, task_id
from ._select import Selection, artifacts

__all__ = ["write_prov_json"]

PREFIXES = {"ll": NAMESPACE, **_ID_PREFIXES}  # in the order _prov registers them, as prov writes them
_INDENT = "  "


def _typed(value: Any) -> Any:
    """An attribute value as ``prov`` writes it (an int or float is a typed literal)."""
    from prov.serializers.provjson import encode_json_representation

    return encode_json_representation(value)


@functools.cache
def _kind(name: str) -> dict[str, str]:
    """A ``prov:type`` value as ``prov`` writes a qualified name (``{"$": "prov:Person", "type":
    "xsd:QName"}``): a type, which the plain string "prov:Person" is not to a PROV reader."""
    from prov.model import PROV, Namespace

    prefix, local = name.split(":", 1)
    namespace = PROV if prefix == "prov" else Namespace(prefix, PREFIXES[prefix])
    return _typed(namespace[local])  # type: ignore[no-any-return]


def _time(moment: datetime.datetime) -> str:
    """xsd:dateTime text as ``prov`` writes it: an offset that is not a whole number of
    minutes is written in UTC."""
    offset = moment.utcoffset()
    if offset is not None and (offset.total_seconds() % 60 or offset.microseconds):
        moment = moment.astimezone(datetime.timezone.utc)
    return moment.isoformat()


def _text(value: Any, depth: int) -> str:
    """``value`` as ``json.dumps(value, indent=2)`` writes it at nesting ``depth``; that
    pure-Python encoder (used whenever an indent is asked) was most of the export's time.
    Strings go through the C encoder, as ``json.dumps`` without indent does, each character
    XML cannot carry first made ``\\xNN`` (:func:`._names.xml_text`), as :mod:`._prov` does."""
    if isinstance(value, str):
        return _string(xml_text(value))
    if isinstance(value, dict) and value:
        inner = "\n" + _INDENT * (depth + 1)
        items = (f"{_string(key)}: {_text(item, depth + 1)}" for key, item in value.items())
        return "{" + inner + ("," + inner).join(items) + "\n" + _INDENT * depth + "}"
    if isinstance(value, list) and value:
        inner = "\n" + _INDENT * (depth + 1)
        return "[" + inner + ("," + inner).join(_text(item, depth + 1) for item in value) + "\n" + _INDENT * depth + "]"
    return json.dumps(value, indent=2).replace("\n", "\n" + _INDENT * depth)


class _Section:
    """One section of the document (``"used": {...}``), its members written as they come."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle, self.members = handle, 0

    def add(self, ident: str, attributes: dict[str, Any]) -> None:
        self.handle.write(("," if self.members else "") + f"\n{_INDENT * 2}{_string(ident)}: {_text(attributes, 2)}")
        self.members += 1


def _task_statements(entry: Any, agents: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str | None, dict]]:
    """(section, id or None for an anonymous one, attributes) of one task, in the order
    ``prov_document`` creates them; ``agents`` holds the agents made so far."""
    record = entry.record
    activity_id = task_id(entry.id)
    attributes: dict[str, Any] = {
        "prov:startTime": _time(record.started), "prov:endTime": _time(record.ended),
        "prov:label": task_label(record.engine, record.task_name), "prov:type": _kind("ll:Task"),
        "ll:record": entry.id, "ll:engine": record.engine, "ll:run_id": record.run_id,
        "ll:task_id": record.task_id, "ll:task_name": record.task_name, "ll:status": record.status,
        "ll:attempt": _typed(record.attempt), "ll:block_height": _typed(entry.height),
        "ll:block_position": _typed(entry.position),
    }
    if record.code_digest:
        attributes["ll:code_digest"] = record.code_digest
    if record.parameters:
        attributes["ll:parameters"] = _typed(_attribute(record.parameters))
    if record.extra:
        attributes["ll:extra"] = extra_text(record.extra)
    yield "activity", activity_id, attributes

    def agent(kind: str, name: str, prov_type: str) -> Iterator[tuple[str, str | None, dict]]:
        ident = agent_id(kind, name)
        if ident not in agents:
            agents[ident] = {"prov:label": name, "prov:type": _kind(prov_type)}
            yield "agent", ident, agents[ident]

    engine = agent_id("engine", record.engine)
    yield from agent("engine", record.engine, "prov:SoftwareAgent")
    yield "wasAssociatedWith", None, {"prov:activity": activity_id, "prov:agent": engine}
    user_name = record.environment.get("user")
    if isinstance(user_name, str) and user_name:
        yield from agent("user", user_name, "prov:Person")
        user = agent_id("user", user_name)
        yield "wasAssociatedWith", None, {"prov:activity": activity_id, "prov:agent": user}
        yield "actedOnBehalfOf", None, {"prov:delegate": engine, "prov:responsible": user,
                                        "prov:activity": activity_id}
    host_name = record.environment.get("host")
    if isinstance(host_name, str) and host_name:
        yield from agent("host", host_name, "ll:Host")
        yield "wasAssociatedWith", None, {"prov:activity": activity_id, "prov:agent": agent_id("host", host_name)}
    inputs = [file_id(path, art["blake3"]) for path, art in artifacts(record.inputs)]
    started, ended = _time(record.started), _time(record.ended)
    for used in inputs:
        yield "used", None, {"prov:activity": activity_id, "prov:entity": used, "prov:time": started}
    for path, art in artifacts(record.outputs):
        output = file_id(path, art["blake3"])
        yield "wasGeneratedBy", None, {"prov:entity": output, "prov:activity": activity_id, "prov:time": ended}
        for used in inputs:
            yield "wasDerivedFrom", None, {"prov:generatedEntity": output, "prov:usedEntity": used,
                                           "prov:activity": activity_id}


def _entities(selection: Selection, section: _Section) -> None:
    head = selection.head
    section.add("tree:head", {"prov:type": _kind("ll:TreeHead"), "ll:origin": head.origin, "ll:size": _typed(head.size),
                              "ll:root": head.root})
    for path, digest, size, is_dir, aliases in selection.index().versions():
        described: dict[str, Any] = {"prov:label": path, "ll:path": path, "ll:blake3": digest,
                                     "ll:size": _typed(size)}
        described["prov:type"] = ([_kind("ll:DirectoryVersion"), _kind("prov:Collection")] if is_dir
                                  else _kind("ll:FileVersion"))
        if aliases:
            described["ll:alias"] = list(dict.fromkeys(aliases)) if len(aliases) > 1 else aliases[0]
        section.add(file_id(path, digest), described)


def write_prov_json(selection: Selection, path: str,
                    contains: dict[tuple[str, str], tuple[str, str]] | None = None) -> None:
    """Write the PROV-JSON document of ``selection`` to ``path`` (see the module's docstring)."""
    scratch = os.path.join(selection.index().directory, "prov-sections")
    os.makedirs(scratch, mode=0o700)
    handles: dict[str, IO[str]] = {}
    sections: dict[str, _Section] = {}

    def section(name: str) -> _Section:
        if name not in sections:
            handles[name] = open(os.path.join(scratch, f"{len(handles)}.json"), "w+", encoding="utf-8")
            sections[name] = _Section(handles[name])
        return sections[name]

    try:
        _entities(selection, section("entity"))
        for member, directory in (contains or {}).items():
            section("hadMember").add(f"_:id{_next(sections)}", {
                "prov:collection": file_id(*directory), "prov:entity": file_id(*member)})
        agents: dict[str, dict[str, Any]] = {}
        anonymous = sections["hadMember"].members if "hadMember" in sections else 0
        for entry in selection.records():
            for name, ident, attributes in _task_statements(entry, agents):
                if ident is None:
                    anonymous += 1
                    ident = f"_:id{anonymous}"
                section(name).add(ident, attributes)
        with open_output(path) as out:
            out.write("{\n" + _INDENT + '"prefix": ' + json.dumps(PREFIXES, indent=2).replace("\n", "\n" + _INDENT))
            for name, written in sections.items():
                out.write(f",\n{_INDENT}{json.dumps(name)}: {{")
                handle = handles[name]
                handle.seek(0)
                shutil.copyfileobj(handle, out, 1 << 20)
                out.write(f"\n{_INDENT}}}" if written.members else "}")
            out.write("\n}\n")
    finally:
        for handle in handles.values():
            handle.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _next(sections: dict[str, _Section]) -> int:
    return (sections["hadMember"].members if "hadMember" in sections else 0) + 1
