"""``lineage-ledger graph``: tasks and file versions as a DAG, coloured by verification status.

The model is built once from the selected (proved) records: a node per task (its engine,
run, status and whole record) and per file version (path, digest, size and its status on
disk: ``OK``, ``MODIFIED``, ``MISSING``, ``broken`` when consumed in a version nobody
produced, ``superseded`` for an older version); a directory artifact is one node of type
``dir`` (label ending in ``/``, digest of its manifest), and paths through symbolic links
that name the same version are its ``aliases``, not nodes. Three views are laid out in Python
(:mod:`._layout`): every node, tasks folded by rule, and tasks folded by run, each folded box
coloured by the worst status inside it. The HTML page embeds the views and draws them with a
small inlined script (no network: its Content-Security-Policy forbids any fetch); SVG and DOT
show one view.

The model holds every node, so it is built only for up to :data:`MAX_DRAWN` tasks and file
versions (counted from the selection's index first). Past that, DOT is streamed
(:mod:`._graph_dot`, every node), an SVG is drawn folded from the run read a page at a time
(:mod:`._graph_fold`), and an HTML page, which keeps every node to open a folded box, is
refused with what to use instead.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .._canonical import format_time, utcnow
from .._errors import ConfigError
from .._ledger.ledger import Ledger
from ._graph_dot import COLOURS, dot_id, dot_node, graph_title
from ._layout import NODE_HEIGHT, NODE_WIDTH, layout
from ._names import display_path, file_key, xml_text
from ._output import open_output
from ._select import Selection, artifacts, file_statuses, members

__all__ = ["COLOURS", "MAX_DRAWN", "GraphModel", "build_graph", "render_dot", "render_html", "draw_large", "render_svg", "svg_of_view", "too_big_to_draw",
           "write_graph"]

# Worst first: a folded box takes the colour of its worst member.
_SEVERITY = ["broken", "MODIFIED", "failed", "MISSING", "superseded", "UNRECORDED", "cached", "OK", "succeeded"]
AUTO_GROUP_OVER = 300
# The most tasks and file versions drawn (html, svg): the 1,201 nodes of tests/test_graph.py
# open in a second; each node is a few KB of page and of the model held to lay it out.
MAX_DRAWN = 5_000


@dataclass
class GraphModel:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    title: str = ""
    head: dict[str, Any] = field(default_factory=dict)


def _worst(statuses: list[str]) -> str:
    return min(statuses, key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else len(_SEVERITY))


def build_graph(ledger: Ledger, selection: Selection) -> GraphModel:
    statuses = file_statuses(ledger, selection)
    model = GraphModel(head={"origin": selection.head.origin, "size": selection.head.size,
                             "root": selection.head.root})
    made = selection.producer_of()
    for (path, digest), version in selection.versions().items():
        producer = made.get((path, digest))
        model.nodes[f"f:{file_key(path, digest)}"] = {
            "kind": "file", "type": "dir" if version.is_dir else "file",
            "label": display_path(path) + ("/" if version.is_dir else ""), "path": path, "digest": digest,
            "size": version.size, "aliases": [display_path(alias) for alias in version.aliases],
            "status": statuses[(path, digest)], "producer": f"t:{producer.id}" if producer else None,
            "rule": f"{producer.record.engine}:{producer.record.task_name}" if producer else None,
            "run": producer.record.run_id if producer else None,
        }
    for entry in selection.entries:
        record = entry.record
        task = f"t:{entry.id}"
        model.nodes[task] = {
            "kind": "task", "label": f"{record.engine}:{record.task_name}", "status": record.status,
            "engine": record.engine, "run": record.run_id, "rule": f"{record.engine}:{record.task_name}",
            "record": {"id": entry.id, "block": entry.height, "position": entry.position, **record.to_dict()},
        }
        for path, art in artifacts(record.inputs):
            model.edges.append((f"f:{file_key(path, art['blake3'])}", task))
        for path, art in artifacts(record.outputs):
            model.edges.append((task, f"f:{file_key(path, art['blake3'])}"))
    first_reader: dict[str, str] = {}
    for source, target in model.edges:
        first_reader.setdefault(source, target)
    for key, node in model.nodes.items():  # sources take the rule (run) of their first reader
        if node["kind"] == "file" and node["rule"] is None:
            reader = model.nodes[first_reader[key]] if key in first_reader else None
            node["rule"] = f"inputs of {reader['rule']}" if reader else "sources"
            node["run"] = reader["run"] if reader else None
    for (path, digest), (dir_path, dir_digest) in members(ledger, selection).items():
        # The directory holds the file a task read from it (added after the sources took
        # their readers' rules, so a source directory takes a task's, not a file's).
        model.edges.append((f"f:{file_key(dir_path, dir_digest)}", f"f:{file_key(path, digest)}"))
    model.title = graph_title(selection)
    return model


def _counts(selection: Selection) -> tuple[int, int]:
    """(tasks, file versions) of the selection, from its index: no record is held to count."""
    return selection.count, sum(1 for _ in selection.index().versions())


def too_big_to_draw(selection: Selection) -> tuple[int, int] | None:
    """(tasks, file versions) when the selection has more than :data:`MAX_DRAWN` of them
    together (the model, its three layouts and the page are then gigabytes that no browser
    draws), else None. Counted from the selection's index (a run was read once, a page at a
    time, by ``select``) before any of it is loaded."""
    tasks, versions = _counts(selection)
    return (tasks, versions) if tasks + versions > MAX_DRAWN else None


def draw_large(ledger: Ledger, selection: Selection, path: str, fmt: str, group: str,
               counts: tuple[int, int]) -> tuple[int, int]:
    """An SVG folded by rule (``--group auto``, as a graph past 300 nodes is) or by run, from
    the run read a page at a time; (boxes, edges) drawn. Raises ConfigError, saying what to
    use instead, for HTML (its page holds every node, to open a box), ``--group none``, or a
    selection of more boxes than :data:`MAX_DRAWN` folded."""
    tasks, versions = counts
    runs = selection.runs
    which = f"run {runs[0]!r}" if len(runs) == 1 else f"{len(runs):,} runs"
    said = (f"the selection ({which}) holds {tasks:,} task(s) and {versions:,} file version(s): "
            f"{tasks + versions:,} nodes, more than the {MAX_DRAWN:,} ")
    instead = ("write it as DOT (-f dot, streamed; lay it out with Graphviz: sfdp -Tsvg), or draw fewer: "
               "the lineage of some files (TARGET...), with --run RUN to keep that run's records only")
    if fmt == "html" or group == "none":
        where = ("an HTML page holds (it keeps every node, to open a folded box)" if fmt == "html"
                 else "drawn unfolded (--group none)")
        raise ConfigError(f"{said}{where}. Draw it folded as SVG (-f svg --group rule, or --group run), "
                          f"{instead}")
    from ._graph_fold import folded_view

    by = "run" if group == "run" else "rule"
    view = folded_view(ledger, selection, by, MAX_DRAWN)
    if view is None:
        raise ConfigError(f"{said}drawn, and more boxes than that folded by {by}. "
                          f"{instead[0].upper()}{instead[1:]}")
    _write_text(path, svg_of_view(view, graph_title(selection)))
    return len(view["nodes"]), len(view["edges"])


def _group_key(node: dict[str, Any], by: str) -> str:
    if by == "rule":
        return ("t|" if node["kind"] == "task" else "f|") + str(node["rule"])
    if node["kind"] == "task":
        return f"t|{node['run']}"
    return f"f|{'outputs' if node.get('producer') else 'sources'} of run {node['run']}"


def _view(model: GraphModel, by: str | None) -> dict[str, Any]:
    """Nodes with coordinates and edges with counts, every node or folded ``by`` rule or run."""
    nodes: dict[str, dict[str, Any]] = {}
    if by is None:
        nodes = {k: {"id": k, **{f: v for f, v in n.items() if f != "record"}} for k, n in model.nodes.items()}
        edges = [(s, d, 1) for s, d in model.edges]
    else:
        members: dict[str, list[str]] = {}
        for key, node in model.nodes.items():
            group = "g:" + _group_key(node, by)
            members.setdefault(group, []).append(key)
        final: dict[str, str] = {}  # a group of one is drawn as its member, under the member's id
        for group, keys in members.items():
            first = model.nodes[keys[0]]
            if len(keys) == 1:
                final[group] = keys[0]
                nodes[keys[0]] = {"id": keys[0], **{f: v for f, v in first.items() if f != "record"}}
                continue
            final[group] = group
            kind = first["kind"]
            name = group.split("|", 1)[1]
            label = f"{name} ×{len(keys)}" if kind == "task" else f"{len(keys)} files: {name}"
            nodes[group] = {"id": group, "kind": "group", "of": kind, "label": label, "members": keys,
                            "status": _worst([model.nodes[k]["status"] for k in keys]),
                            "engine": first.get("engine"), "rule": first.get("rule"), "run": first.get("run")}
        of = {k: final["g:" + _group_key(n, by)] for k, n in model.nodes.items()}
        counted: dict[tuple[str, str], int] = {}
        for s, d in model.edges:
            counted[(of[s], of[d])] = counted.get((of[s], of[d]), 0) + 1
        edges = [(s, d, c) for (s, d), c in counted.items() if s != d]
    coordinates = layout(list(nodes), [(s, d) for s, d, _ in edges])
    for key, (x, y) in coordinates.items():
        nodes[key]["x"], nodes[key]["y"] = x, y
    return {"nodes": list(nodes.values()), "edges": [{"from": s, "to": d, "count": c} for s, d, c in edges]}


def _views(model: GraphModel, group: str) -> tuple[dict[str, Any], str]:
    views = {"all": _view(model, None), "rule": _view(model, "rule"), "run": _view(model, "run")}
    if group == "auto":
        default = "rule" if len(model.nodes) > AUTO_GROUP_OVER else "all"
    else:
        default = {"none": "all"}.get(group, group)
    return views, default


def _template(name: str) -> str:
    return resources.files("lineage_ledger.exports").joinpath("templates", name).read_text(encoding="utf-8")


def render_html(model: GraphModel, group: str = "auto") -> str:
    views, default = _views(model, group)
    data = {
        "title": model.title, "head": model.head, "generated": format_time(utcnow()), "colours": COLOURS,
        "views": views, "defaultView": default,
        "records": {k[2:]: n["record"] for k, n in model.nodes.items() if n["kind"] == "task"},
        "nodeWidth": NODE_WIDTH, "nodeHeight": NODE_HEIGHT,
    }
    # Inside <script type="application/json"> only "</" could end the element: escape every "<".
    payload = json.dumps(data, ensure_ascii=False, sort_keys=True).replace("<", "\\u003c")
    page = _template("graph.html")
    return (page.replace("/*STYLE*/", _template("graph.css")).replace("/*SCRIPT*/", _template("graph.js"))
            .replace("__TITLE__", html.escape(model.title)).replace("__DATA__", payload))


def render_svg(model: GraphModel, group: str = "auto") -> str:
    views, default = _views(model, group)
    return svg_of_view(views[default], model.title)


def svg_of_view(view: dict[str, Any], title: str) -> str:
    """One laid-out view (:func:`_view`'s) as an SVG document."""
    width = max((n["x"] for n in view["nodes"]), default=0) + NODE_WIDTH + 20
    height = max((n["y"] for n in view["nodes"]), default=0) + NODE_HEIGHT + 20
    where = {n["id"]: n for n in view["nodes"]}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="-10 -10 {width} {height}" font-family="sans-serif" font-size="12">',
             f"<title>{_xml(title)}</title>"]
    for edge in view["edges"]:
        a, b = where[edge["from"]], where[edge["to"]]
        x1, y1 = a["x"] + NODE_WIDTH, a["y"] + NODE_HEIGHT // 2
        x2, y2 = b["x"], b["y"] + NODE_HEIGHT // 2
        mid = (x1 + x2) // 2
        parts.append(f'<path d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" fill="none" stroke="#90a4ae"/>')
    for node in view["nodes"]:
        colour = COLOURS.get(node["status"], "#607d8b")
        shape = 'rx="4"' if node["kind"] != "file" else 'rx="14"'
        label = node["label"] if len(node["label"]) <= 34 else "…" + node["label"][-33:]
        parts.append(
            f'<g class="node {node["kind"]}{" dir" if node.get("type") == "dir" else ""}"><title>{_xml(node["label"])} [{_xml(node["status"])}]'
            f'</title><rect x="{node["x"]}" y="{node["y"]}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" {shape} '
            f'fill="{colour}" fill-opacity="0.15" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{node["x"] + 8}" y="{node["y"] + 21}">{_xml(label)} · {_xml(node["status"])}'
            f"</text></g>")
    parts.append("</svg>\n")
    return "\n".join(parts)


def render_dot(model: GraphModel) -> str:
    """Every node (Graphviz lays it out; `dot -Tsvg`), coloured as in the HTML page."""
    lines = ["digraph lineage {", "  rankdir=LR;", '  node [fontname="sans-serif", fontsize=10];',
             f"  label={dot_id(model.title)};"]
    for key, node in model.nodes.items():
        lines.append(dot_node(key, node["kind"], node["label"], node["status"], is_dir=node.get("type") == "dir",
                              digest=node.get("digest", "")))
    for s, d in model.edges:
        lines.append(f"  {dot_id(s)} -> {dot_id(d)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _xml(text: str) -> str:
    """``text`` escaped for SVG; a character XML cannot carry shown as ``\\xNN``
    (:func:`._names.xml_text`: a file named with one would otherwise leave the whole picture
    not well-formed)."""
    return html.escape(xml_text(text))


def write_graph(model: GraphModel, path: str, fmt: str, *, group: str = "auto") -> None:
    text = render_html(model, group) if fmt == "html" else render_svg(model, group) if fmt == "svg" \
        else render_dot(model)
    _write_text(path, text)


def _write_text(path: str, text: str) -> None:
    with open_output(path, parents=True) as handle:
        handle.write(text)
