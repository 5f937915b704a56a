"""``help(lineage_ledger.LedgerError)`` draws the exception tree, and the drawing is the
tree the classes form: every error of the core and of the built-in back-ends, under its
real parent."""

from __future__ import annotations

import importlib
import inspect
import pydoc
import re

import pytest

import lineage_ledger
from lineage_ledger import LedgerError

# Modules that define errors of their own; importing them registers their subclasses.
ERROR_MODULES = ["lineage_ledger._ledger.deferred", "lineage_ledger.backends.baash.client",
                 "lineage_ledger.backends.fabric.backend", "lineage_ledger.backends.fabric._tree_head",
                 "lineage_ledger.backends.fabric._endorsement"]
BRANCH = re.compile(r"^(?P<lead>[│ ]*)[├└]── (?P<name>\w+)")


def drawn_tree() -> dict[str, str]:
    """child -> parent, read from the drawing in LedgerError's docstring."""
    lines = inspect.getdoc(LedgerError).splitlines()
    top = next(i for i, line in enumerate(lines) if line.strip() == "LedgerError")
    indent = len(lines[top]) - len(lines[top].lstrip())
    parents, path = {}, ["LedgerError"]
    for line in lines[top + 1:]:
        match = BRANCH.match(line[indent:])
        if not match:
            continue
        depth = len(match["lead"]) // 4
        del path[depth + 1:]
        parents[match["name"]] = path[depth]
        path.append(match["name"])
    return parents


def real_tree() -> dict[str, set[str]]:
    for name in ERROR_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the fabric extra (grpc) is not installed
            pytest.skip(f"{name}: {exc}")
    parents: dict[str, set[str]] = {}
    todo = [LedgerError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("lineage_ledger"):
                parents.setdefault(sub.__name__, set()).add(cls.__name__)
                todo.append(sub)
    return parents


def test_help_shows_the_tree():
    text = pydoc.render_doc(lineage_ledger.LedgerError, renderer=pydoc.plaintext)
    for name in ("ConfigError", "BackendUnavailable", "SpoolFull", "VerificationError", "CheckpointInvalid"):
        assert re.search(rf"[├└]── {name}\b", text), name


def test_the_drawing_is_the_class_hierarchy():
    drawn, real = drawn_tree(), real_tree()
    assert set(drawn) == set(real), (sorted(set(real) - set(drawn)), sorted(set(drawn) - set(real)))
    for name, parent in drawn.items():
        assert real[name] == {parent}, f"{name} is drawn under {parent}, but derives from {real[name]}"


def test_every_public_error_is_exported_and_drawn():
    drawn = drawn_tree()
    exported = {n for n in lineage_ledger.__all__ if isinstance(getattr(lineage_ledger, n), type)
                and issubclass(getattr(lineage_ledger, n), LedgerError) and n != "LedgerError"}
    assert exported <= set(drawn), sorted(exported - set(drawn))
