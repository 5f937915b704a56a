"""W3C PROV (PROV-JSON and PROV-N) through the ``prov`` package.

Tasks are activities, file versions are entities (path, BLAKE3 digest, size), with
``used``, ``wasGeneratedBy`` and ``wasDerivedFrom`` (each output from each input of the
task that made it). Agents: the user and the host a task ran as and on, and the engine
that ran it (a software agent acting for the user).

A directory artifact is one entity of types ``ll:DirectoryVersion`` and ``prov:Collection``
(its BLAKE3 is the manifest digest, docs/directories.md); paths through symbolic links that
name the same version are its ``ll:alias`` attributes, not entities of their own.

Every text value is one XML can carry (``prov``'s PROV-XML writer refuses a control character,
and a name may hold one): such a character is written ``\\xNN`` (:func:`._names.xml_text`);
the ids keep the exact text (an agent's id decodes to the exact name, a file's has a digest of
the exact path, a task's is the record's id).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import require
from ._names import PROV_NAMESPACE, extra_text, task_label, xml_text
from ._names import prov_attribute as _attribute
from ._output import open_output
from ._prov_ids import PREFIXES, agent_id, file_id, task_id
from ._select import Selection, artifacts

__all__ = ["NAMESPACE", "prov_document", "prov_pages", "write_prov"]

NAMESPACE = PROV_NAMESPACE


class _Pages:
    """``prov`` documents holding the statements in order: a new one past ``page`` tasks or
    versions (never, where ``page`` is None). A statement names what an earlier one made by
    its id, so a page needs nothing of the one before."""

    def __init__(self, page: int | None) -> None:
        self.model = require("prov.model", "prov")
        self.page, self.count = page, 0
        self.doc = self._new()

    def _new(self) -> Any:
        doc = self.model.ProvDocument()
        for prefix, uri in {"ll": NAMESPACE, **PREFIXES}.items():
            doc.add_namespace(prefix, uri)
        return doc

    def next(self) -> Iterator[Any]:
        """Count one task or version; past a page, hand the document over and start one."""
        self.count += 1
        if self.page is not None and self.count >= self.page:
            yield self.doc
            self.doc, self.count = self._new(), 0


def prov_pages(selection: Selection, contains: dict[tuple[str, str], tuple[str, str]] | None = None,
               page: int | None = None) -> Iterator[Any]:
    """``prov.model.ProvDocument``s describing the selected records, their statements in
    order, each holding up to ``page`` tasks or file versions (all of them in one where
    ``page`` is None); ``contains`` ({file version: directory version},
    :func:`._select.members`) adds ``hadMember`` statements."""
    pages = _Pages(page)
    head = selection.head
    type_of = pages.doc.valid_qualified_name  # a prov:type is a qualified name, never the string "prov:Person"
    pages.doc.entity("tree:head", {"prov:type": type_of("ll:TreeHead"), "ll:origin": _safe(head.origin),
                                   "ll:size": head.size, "ll:root": head.root})
    for path, digest, size, is_dir, aliases in selection.index().versions():
        described: list[tuple[str, Any]] = [
            ("prov:label", path), ("ll:path", path), ("ll:blake3", digest), ("ll:size", size)]
        if is_dir:
            described += [("prov:type", type_of("ll:DirectoryVersion")), ("prov:type", type_of("prov:Collection"))]
        else:
            described.append(("prov:type", type_of("ll:FileVersion")))
        described += [("ll:alias", alias) for alias in aliases]
        pages.doc.entity(file_id(path, digest), [(key, _safe(value)) for key, value in described])
        yield from pages.next()
    for member, directory in (contains or {}).items():
        pages.doc.hadMember(file_id(*directory), file_id(*member))
    agents: set[str] = set()

    def agent(kind: str, name: str, prov_type: str) -> str:
        ident = agent_id(kind, name)
        if ident not in agents:
            agents.add(ident)
            pages.doc.agent(ident, {"prov:label": _safe(name), "prov:type": type_of(prov_type)})
        return ident

    for entry in selection.records():
        doc, record = pages.doc, entry.record
        attributes = {
            "prov:label": task_label(record.engine, record.task_name), "prov:type": type_of("ll:Task"),
            "ll:record": entry.id, "ll:engine": record.engine, "ll:run_id": record.run_id,
            "ll:task_id": record.task_id, "ll:task_name": record.task_name, "ll:status": record.status,
            "ll:attempt": record.attempt, "ll:block_height": entry.height, "ll:block_position": entry.position,
        }
        if record.code_digest:
            attributes["ll:code_digest"] = record.code_digest
        if record.parameters:
            attributes["ll:parameters"] = _attribute(record.parameters)
        if record.extra:  # what the engine or plugin recorded beside (a command line, an error)
            attributes["ll:extra"] = extra_text(record.extra)
        activity = doc.activity(task_id(entry.id), record.started, record.ended,
                                {key: _safe(value) for key, value in attributes.items()})
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
        inputs = [file_id(path, art["blake3"]) for path, art in artifacts(record.inputs)]
        for used in inputs:
            doc.used(activity, used, record.started)
        for path, art in artifacts(record.outputs):
            output = file_id(path, art["blake3"])
            doc.wasGeneratedBy(output, activity, record.ended)
            for used in inputs:
                doc.wasDerivedFrom(output, used, activity)
        yield from pages.next()
    yield pages.doc


def _safe(value: Any) -> Any:
    """A text value as PROV-XML can carry it (:func:`._names.xml_text`); others as they are."""
    return xml_text(value) if isinstance(value, str) else value


def prov_document(selection: Selection, contains: dict[tuple[str, str], tuple[str, str]] | None = None) -> Any:
    """The whole ``prov.model.ProvDocument`` of the selected records (:func:`prov_pages`)."""
    return next(prov_pages(selection, contains))


def _write_provn(selection: Selection, path: str, contains: dict[tuple[str, str], tuple[str, str]] | None) -> None:
    """PROV-N as ``ProvDocument.get_provn`` writes the whole document (a header, a line per
    statement, ``endDocument``), a page of statements at a time."""
    with open_output(path) as handle:
        first = True
        for doc in prov_pages(selection, contains, page=_PAGE):
            if first:
                # The registered namespaces (an xsi one is added only for xsi-typed values,
                # which no statement here has): the same on every page.
                handle.write(_header(doc))
                first = False
            for statement in doc.get_records():
                handle.write("\n  " + statement.get_provn())
        handle.write("\nendDocument\n")


def _header(doc: Any) -> str:
    """``document`` and its prefix lines: an empty document's text less its last line."""
    empty = type(doc)()
    for namespace in doc.get_registered_namespaces():
        empty.add_namespace(namespace)
    return str(empty.get_provn()).rsplit("\n", 1)[0]


_PAGE = 200  # tasks or versions per page of PROV-N (a task is about 18 statements of ~3 KB each in prov)


def write_prov(selection: Selection, path: str, fmt: str,
               contains: dict[tuple[str, str], tuple[str, str]] | None = None) -> None:
    """Write PROV-JSON (``fmt="prov-json"``, streamed: :mod:`._prov_json`) or PROV-N
    (``fmt="prov-n"``, ``prov``'s text of each statement, a page of them at a time) to ``path``."""
    if fmt == "prov-json":
        require("prov.model", "prov")
        from ._prov_json import write_prov_json

        write_prov_json(selection, path, contains)
        return
    _write_provn(selection, path, contains)
