"""The core's folders are layers: a module imports only from its own layer or those below.

    testing                    the conformance suite: a user of the public API
    _cli                       the commands
    exports                    built on everything below
    _capture, _verification    capture for engines; checks of files against the ledger
    _ledger                    the Ledger, the spool and the recorder
    _log, _files               the tamper-evident log; file and directory digests
    _errors, _model, ...       foundation modules at the top of the package

Imports made only for type checking are exempt. This test keeps the layering (and the
absence of import cycles between modules) from eroding.
"""

from __future__ import annotations

import ast
import os

import lineage_ledger

CORE = os.path.dirname(lineage_ledger.__file__)
LAYER = {"_files": 1, "_log": 1, "_ledger": 2, "_capture": 3, "_verification": 3,
         "exports": 4, "_cli": 5, "testing": 6}
TOP = 6  # lineage_ledger/__init__.py and __main__.py re-export or run everything


def _modules() -> dict[str, tuple[str, bool]]:
    found = {}
    for folder, _, files in os.walk(CORE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, CORE)[:-3].replace(os.sep, ".")
                dotted = "lineage_ledger" + ("" if rel == "__init__" else "." + rel.removesuffix(".__init__"))
                found[dotted] = (path, name == "__init__.py")
    return found


def _runtime_imports(path: str, module: str, package: bool) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    targets = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets.add(target)
            targets.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    return targets


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return TOP
    return LAYER.get(parts[1], 0)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {t for t in _runtime_imports(path, m, pkg) if t in modules and t != m}
            for m, (path, pkg) in modules.items()}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets
              if _layer(t) > _layer(m)]
    assert upward == [], "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_through_others():
    graph = _graph()
    cycles = []
    for start in graph:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt == start:
                    cycles.append(start)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    assert cycles == [], f"modules on an import cycle: {sorted(set(cycles))}"


def test_the_checker_sees_imports_inside_functions():
    # The lazy imports (inside functions) are what cycles hide behind; make sure they count.
    graph = _graph()
    assert "lineage_ledger._ledger.recorder" in graph["lineage_ledger._ledger.ledger"]
    assert "lineage_ledger._files.manifest" in graph["lineage_ledger._files.hashing"]


def test_the_packages_lazy_names_are_the_ones_type_checkers_see_and_all_exports():
    """lineage_ledger imports its public names on first use (``_HOME``) and tells type checkers
    the same names in a TYPE_CHECKING block: the two, and ``__all__``, name the same things
    from the same modules, and each name is there."""
    tree = ast.parse(open(os.path.join(CORE, "__init__.py"), encoding="utf-8").read())
    (checking,) = [node for node in tree.body if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    typed = {alias.name: "." * node.level + (node.module or "")
             for node in checking.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert typed == lineage_ledger._LAZY
    assert sorted(lineage_ledger.__all__) == sorted(typed)
    for name in lineage_ledger.__all__:
        assert getattr(lineage_ledger, name) is not None, name
