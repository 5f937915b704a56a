"""Plain-text rendering of lineage trees and verification reports (human and JSON).

Every value that comes from a record, a path or an error message quoting them goes
through :func:`printable` before it reaches a line for the terminal (issue 15).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from .._ledger.ledger import LedgerRecord, LineageNode
from .._ledger.lineage import walk_lineage
from .._ledger.walks import Nested, run_nested
from .._terminal import printable
from .._verification.report import NotVerifiedFound, TargetResult, not_verified_in, not_verified_marks
from .._verification.verify import ArtifactCheck, Report
from .unchecked import unchecked_directories  # where trust.py has always found it

__all__ = ["DEPTH_SHOWN", "NODES_SHOWN", "derived_lines", "describe_record", "lineage_json", "lineage_lines",
           "not_verified_json", "not_verified_lines", "report_json", "report_lines", "unchecked_directories"]

# Generations of a tree shown. A file updated in place every day has a lineage as deep as
# its age in days; shown whole, its lines would indent four columns more each generation
# (quadratic text). Everything below is still walked and checked; it is only not printed.
DEPTH_SHOWN = 50
# Links (or files) a note about a record's marks shows; the others are counted.
MARKED_SHOWN = 3
NEVER_HASHED = "part of what it read was never hashed: see the note below"
# Files of one tree drawn. A summary derived from the outputs of 150,000 tasks drew every
# one of them (45 MB of text); past this many the tree says how many more it holds. They are
# still checked: a failing one is named under FAILED, and --json lists them all.
NODES_SHOWN = 2_000


def _below(node: LineageNode) -> int:
    return sum(1 for _ in walk_lineage(node)) - 1


def _short(path: str, here: str | None = None) -> str:
    """The path as shown (relative to ``here``, the working directory, when near), escaped
    for the terminal."""
    here = os.getcwd() if here is None else here
    if path.startswith(here) and path[len(here) : len(here) + 1] == "/" and here != "/":
        relative = path[len(here) + 1 :]  # under the working directory: what relpath gives
        if relative and "/." not in path and "//" not in path and path[-1] != "/":
            return printable(relative)
    # Normal absolute paths elsewhere, without relpath's two abspath calls (most of the
    # rendering of `depends --all`): relative to the parent, or whole where "../.." away.
    parent = here.rpartition("/")[0]  # "" for a directory just below the root
    if path[:1] == "/" and here[:1] == "/" and here != "/" and path != here and path != parent \
            and path[-1] != "/" and not path.startswith(here + "/") \
            and "/." not in path and "//" not in path and "/." not in here and "//" not in here:
        if path.startswith(parent + "/"):
            return printable("../" + path[len(parent) + 1 :])
        return printable(path)
    relative = os.path.relpath(path)
    return printable(path if relative.startswith("../..") else relative)


def describe_record(entry: LedgerRecord) -> str:
    r = entry.record
    when = r.ended.strftime("%Y-%m-%d %H:%M:%SZ")
    return (f"{printable(entry.id[:12])} {printable(r.engine)}:{printable(r.task_name)} "
            f"[{printable(r.status)}] run {printable(r.run_id)} at {when}")


def _node_label(node: LineageNode, check: ArtifactCheck | None, here: str,
                described: dict[str, str]) -> str:
    digest = printable(node.digest[:12]) if node.digest else "-"
    status = f" {check.status.value}" if check is not None else ""
    if node.kind == "produced" and node.producer is not None:
        producer = described.get(node.producer.id)
        if producer is None:  # the 10,000 outputs of one task name it 10,000 times
            producer = described[node.producer.id] = describe_record(node.producer)
        marked = f"  ({NEVER_HASHED})" if not_verified_marks(node.producer) else ""
        return f"{_short(node.path, here)} {digest}{status}  <- {producer}{marked}"
    if node.kind == "broken":
        return f"{_short(node.path, here)} {digest}{status}  BROKEN: no recorded task produced this version"
    return f"{_short(node.path, here)} {digest}{status}  (source)"


def _target_checks(target: TargetResult) -> dict[str, ArtifactCheck]:
    """Each file's check in a target's tree, the target's own under the path it was given and
    the path it was checked as: a target reached through a link (``dlink/out.txt`` of a link
    ``dlink`` to ``data/``) is checked, and its tree drawn, as the real ``data/out.txt``."""
    checks = dict(target.files)
    checks.setdefault(target.check.path, target.check)
    checks[target.path] = target.check
    return checks


def lineage_lines(root: LineageNode, checks: dict[str, ArtifactCheck] | None = None, *,
                  described: dict[str, str] | None = None, shown: set[int] | None = None,
                  here: str | None = None, labels: dict[tuple[int, Any], str] | None = None,
                  notes: bool = True) -> list[str]:
    """The tree as lines (``notes``: then the note on what its records say was never hashed,
    as ``why`` shows it; a report says it once for all its trees); ``described``: records'
    descriptions by id, shared by the trees of one report; ``shown``: the nodes whose inputs
    were drawn already (by an earlier tree of the report too), drawn again as one line, "(see
    above)"; ``here``: the working directory paths are shown relative to (asked once for a
    report's 10,000 trees);
    ``labels``: each node's line by its check's status, shared by the trees of one report
    (the input that 10,000 outputs of one task share is one node, drawn in each tree)."""
    checks = checks or {}
    lines: list[str] = []
    shown = set() if shown is None else shown
    here = os.getcwd() if here is None else here
    described = {} if described is None else described

    stack = [(root, "", True, True, 0)]  # preorder, without Python recursion
    drawn: set[int] = set()  # the nodes of this tree drawn (a line each, repeats too)
    count = 0
    while stack:
        if count >= NODES_SHOWN:
            more = sum(1 for node in walk_lineage(root) if id(node) not in drawn)
            lines.append(f"... and {more} more files in this lineage, checked, not shown (--json lists them)")
            break
        node, prefix, last, top, depth = stack.pop()
        drawn.add(id(node))
        count += 1
        connector = "" if top else ("└── " if last else "├── ")
        repeat = id(node) in shown and node.parents
        check = checks.get(node.path)
        key = (id(node), None if check is None else check.status)
        label = labels.get(key) if labels is not None else None
        if label is None:
            label = _node_label(node, check, here, described)
            if labels is not None:
                labels[key] = label
        lines.append(prefix + connector + label + ("  (see above)" if repeat else ""))
        if repeat:
            continue
        shown.add(id(node))
        child_prefix = prefix + ("" if top else ("    " if last else "│   "))
        if node.parents and depth + 1 >= DEPTH_SHOWN:
            lines.append(f"{child_prefix}└── ... and {_below(node)} more files further back in its lineage, "
                         "not shown")
            continue
        for index in range(len(node.parents) - 1, -1, -1):
            stack.append((node.parents[index], child_prefix, index == len(node.parents) - 1, False, depth + 1))
    if notes:
        lines.extend(not_verified_lines(not_verified_in([(root.path, root)]), here, targets=False))
    return lines


def not_verified_lines(found: NotVerifiedFound, here: str | None = None, *, targets: bool = True) -> list[str]:
    """The note on the records in the lineage that say part of what their task read (or
    wrote) was never hashed (``report.not_verified_in``): each record, what it did not
    verify, and the targets whose lineage holds it. A note, not a failure: nothing was seen
    to change, but nothing vouches for that content either (docs/nextflow.md). ``targets``:
    name them (a report's; ``why`` draws one tree)."""
    if not found.records:
        return []
    here = os.getcwd() if here is None else here
    lines = ["", f"note: part of what {len(found.records) + found.more} record(s) in the lineage read was never "
                 "hashed, so the ledger does not vouch for it (not a failure: nothing was seen to change):"]
    for note in found.records:
        lines.append(f"  {describe_record(note.entry)}")
        marks = note.marks
        links = marks.get("links_not_followed")
        if isinstance(links, dict) and links:
            count = len(links) + _count(marks.get("links_not_followed_more"))
            lines.append(f"    {count} symbolic link(s) in its staged directory(ies) lead out of it and were not "
                         f"followed: what it read through them is in no record: "
                         f"{_first(f'{_short(str(p), here)} -> {printable(str(links[p]))}' for p in sorted(links))}"
                         f"{_more(count - min(len(links), MARKED_SHOWN))}")
        files = marks.get("not_verified")
        if isinstance(files, list) and files:
            failed = f" (its check failed: {printable(str(marks['check_failed'])[:200])})" if marks.get("check_failed") else ""
            lines.append(f"    {len(files)} file(s) it read or wrote that the ledger could not vouch for{failed}, "
                         f"left out of its record: {_first(_short(str(p), here) for p in files)}"
                         f"{_more(len(files) - min(len(files), MARKED_SHOWN))}")
        if targets and note.targets:
            lines.append(f"    in the lineage of: {', '.join(_short(t, here) for t in note.targets)}"
                         f"{_more(note.more_targets)}")
    if found.more:
        lines.append(f"  ... and {found.more} more record(s) that say so, not shown")
    return lines


def _first(items: Iterable[str]) -> str:
    return ", ".join(item for _, item in zip(range(MARKED_SHOWN), items, strict=False))


def _more(count: int) -> str:
    return f", ... and {count} more" if count > 0 else ""


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def not_verified_json(found: NotVerifiedFound) -> list[dict[str, Any]]:
    """The records of :func:`not_verified_lines`, for ``--json``: id, who ran what, their marks
    as recorded (``links_not_followed``, ``links_not_followed_more``, ``not_verified``,
    ``check_failed``) and the targets whose lineage holds them."""
    return [{"record": note.entry.id, "engine": note.entry.record.engine, "task_name": note.entry.record.task_name,
             "run_id": note.entry.record.run_id, **note.marks, "targets": note.targets,
             "targets_not_shown": note.more_targets} for note in found.records]


def derived_lines(path: str, tree: list, prefix: str = "") -> list[str]:
    lines = [_short(path)] if not prefix else []
    run_nested(_derived_lines(tree, prefix, 0, lines))
    return lines


def _derived_lines(tree: list, prefix: str, depth: int, lines: list[str]) -> Nested[None]:
    for index, (consumer, outputs) in enumerate(tree):
        last = index == len(tree) - 1
        if consumer is None:  # the page ended: ``outputs`` is how many more there are
            lines.append(prefix + "└── " + f"... and {outputs} more (--all lists them)")
            continue
        lines.append(prefix + ("└── " if last else "├── ") + describe_record(consumer))
        inner = prefix + ("    " if last else "│   ")
        for out_index, (out_path, subtree) in enumerate(outputs):
            out_last = out_index == len(outputs) - 1
            lines.append(inner + ("└── " if out_last else "├── ") + _short(out_path))
            below = inner + ("    " if out_last else "│   ")
            if subtree and depth + 1 >= DEPTH_SHOWN:
                lines.append(f"{below}└── ... and {_records_in(subtree)} more records further on, not shown")
            elif subtree:
                yield _derived_lines(subtree, below, depth + 1, lines)


def _records_in(tree: list) -> int:
    """The records of a derived tree (and the readers a page left out), counted without recursion."""
    count, stack = 0, [tree]
    while stack:
        for consumer, outputs in stack.pop():
            if consumer is None:
                count += int(outputs)
                continue
            count += 1
            stack.extend(subtree for _path, subtree in outputs)
    return count


def report_lines(report: Report, unchecked: Sequence[str] = ()) -> list[str]:
    """``unchecked``: the directories given under which nothing was checked
    (:func:`unchecked_directories`); each fails the report."""
    lines: list[str] = []
    if report.chain is not None:
        c = report.chain
        lines.append(f"ledger: OK  {c.blocks} blocks, {c.records} records")
        lines.append(f"tree head: size {c.records}, root {printable(c.log_root)}")
        if report.index_rows is not None:
            lines.append(f"index: {report.index_rows} rows agree with their records")
        if report.first_audit:
            lines.append("(nothing was remembered for this ledger: it was audited in full first)")
    if report.against is not None:
        lines.append(f"extends checkpoint: {printable(report.against.origin)} size {report.against.size}")
    described: dict[str, str] = {}
    # A version drawn with its inputs once, by any target's tree: an audit of a file kept
    # in a thousand versions, each derived from the one before, drew every target's fifty
    # generations (50,784 lines, 11 MB, for 1,100 versions).
    shown: set[int] = set()
    here = os.getcwd()
    labels: dict[tuple[int, Any], str] = {}  # the report's nodes stay alive while it is drawn
    for target in report.targets:
        lines.append("")
        if target.tree is None:
            lines.append(f"{_short(target.path, here)} {target.check.status.value}")
            continue
        checks = _target_checks(target)
        lines.extend(lineage_lines(target.tree, checks, described=described, shown=shown, here=here,
                                   labels=labels, notes=False))
    for absent in report.absent:
        count = len(absent.paths) + absent.more
        lines.append(f"\nnote: {count} file(s) that records name under {_short(absent.directory)} are not on disk "
                     "(deleted or moved since; not a failure; each proved by its record, the list read from "
                     "the index, whose completeness only the full audit checks):")
        lines.extend(f"  {_short(path)}" for path in absent.paths)
        if absent.more:
            lines.append(f"  ... and {absent.more} more")
    for directory in unchecked:
        lines.append(f"\n{_short(directory, here)}: nothing was checked (no file in it, and no record names "
                     "anything under it)")
    if report.not_shown:
        checked = "recorded outputs" if report.audited_records else "files"  # an audit's, or a directory's
        lines.append(f"\n... and {report.not_shown} more {checked} checked, not shown here "
                     "(`verify-lineage PATH` shows one, with any note on what its lineage never hashed)")
    if report.audited_records:
        lines.append(f"\naudited {report.audited_records} records, {report.outputs_checked} recorded outputs")
    if report.waiting:
        named = f", naming {', '.join(_short(p) for p in report.waiting_named)}" if report.waiting_named else ""
        from .._ledger.backlog import kinds_text

        kinds = kinds_text(report.waiting - report.waiting_manifests, report.waiting_manifests)
        lines.append(f"\nnote: {report.waiting} record(s){kinds} of this ledger wait in the spool, not yet in the ledger"
                     f"{named}: `lineage-ledger spool ship`, then verify again")
    found = not_verified_in((target.path, target.tree) for target in report.targets)
    lines.extend(not_verified_lines(found, here))
    lines.append("")
    if report.ok and not unchecked and found.records:
        lines.append("verified, except what the note above says was never hashed")
    elif report.ok and not unchecked:
        lines.append("verified")
    else:
        lines.append(f"FAILED: {report.problems + len(unchecked)} problem(s)")
        lines.extend(f"  {type(f).__name__}: {printable(str(f))}" for f in report.failures)
        lines.extend(f"  nothing was checked in {printable(d)}: no file in it, and no record names anything "
                     "under it" for d in unchecked)
        if report.more_failures:
            lines.append(f"  ... and {report.more_failures} more problem reports, not shown")
    return lines


def _node_json(root: LineageNode, checks: dict[str, ArtifactCheck], seen: set[int]) -> dict[str, Any]:
    def entry(node: LineageNode) -> dict[str, Any]:
        return {
            "path": node.path, "digest": node.digest, "kind": node.kind,
            "record": node.producer.id if node.producer else None,
            "status": checks[node.path].status.value if node.path in checks else None,
        }

    top = entry(root)
    stack = [(root, top, 0)]  # preorder, without Python recursion: a node's inputs once
    while stack:
        node, out, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.parents and depth + 1 >= DEPTH_SHOWN:
            out["inputs"] = []
            out["inputs_not_shown"] = _below(node)  # further back in its lineage
            continue
        out["inputs"] = inputs = [entry(parent) for parent in node.parents]
        stack.extend(reversed([(parent, child, depth + 1) for parent, child in zip(node.parents, inputs, strict=True)]))
    return top


def lineage_json(root: LineageNode) -> dict[str, Any]:
    """The tree (``why --json``); at its root, ``not_verified``: the records in it that say
    part of what their task read was never hashed (:func:`not_verified_json`)."""
    tree = _node_json(root, {}, set())
    tree["not_verified"] = not_verified_json(not_verified_in([(root.path, root)]))
    return tree


def report_json(report: Report, unchecked: Sequence[str] = ()) -> dict[str, Any]:
    """``not_verified``: the records in the targets' lineage that say part of what their task
    read was never hashed (:func:`not_verified_json`), and in each target the ids of those in
    its lineage: a note, ``ok`` stays true."""
    found = not_verified_in((target.path, target.tree) for target in report.targets)
    targets = []
    for target in report.targets:
        checks = _target_checks(target)
        targets.append({
            "path": target.path, "check": target.check.to_json(),
            "lineage": _node_json(target.tree, checks, set()) if target.tree else None,
            "not_verified": found.by_target.get(target.path, []),
        })
    chain = report.chain
    return {
        "ok": report.ok and not unchecked,
        "nothing_checked": list(unchecked),  # directories given with no file, nothing recorded under them
        "chain": None if chain is None else {
            "blocks": chain.blocks, "records": chain.records, "head": chain.head, "log_root": chain.log_root,
        },
        "tree_head": None if chain is None else {"size": chain.records, "root": chain.log_root},
        "index_rows": report.index_rows,
        "waiting_in_spool": {"records": report.waiting, "tasks": report.waiting - report.waiting_manifests,
                             "manifests": report.waiting_manifests, "naming": report.waiting_named},
        "against": None if report.against is None else {
            "origin": report.against.origin, "size": report.against.size, "root": report.against.root.hex(),
        },
        "targets": targets,
        "outputs_checked": report.outputs_checked,  # an audit's recorded outputs on disk
        "targets_not_shown": report.not_shown,  # of those, checked and not listed in targets
        "absent": [{"directory": a.directory, "paths": a.paths, "more": a.more} for a in report.absent],
        "failures": [
            {"error": type(f).__name__, "message": str(f), "height": f.height, "path": f.path}
            for f in report.failures
        ],
        "failures_not_shown": report.more_failures,
        "not_verified": not_verified_json(found),
        "not_verified_not_shown": found.more,
    }
