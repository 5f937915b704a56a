"""Replace setuptools' import hook of the editable install with a lighter one of the same mapping.

``pip install -e .`` serves this project's ``core/ -> lineage_ledger`` and
``ledger_backends/ -> lineage_ledger.backends`` mapping with a finder module that a ``.pth``
file imports at every interpreter start in the environment. That module imports ``pathlib``
and ``importlib.util`` (and through them ``re``, ``fnmatch``, ``urllib.parse``...): 35 ms of
CPU at each start of Python here (60 ms against 26 ms for ``python -c pass``), whether or not
the process uses the package, and the tests start Python some ten thousand times (every CLI
call, engine worker and recording process). This script writes a finder that maps the same two
packages with what the interpreter has already loaded, and points the ``.pth`` file at it.
The rest of the package is found by Python's own path finder below those two directories.

Run by ``make install`` after the install; idempotent. Where the install is not what it
expects (no such ``.pth`` file, another format), it says so and changes nothing: setuptools'
finder then stays, slower but correct.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig

DISTRIBUTION = "lineage_ledger"
MODULE = "__editable___lineage_ledger_paths"

FINDER = '''"""The editable install's packages, found without importing pathlib (tools/quick_editable.py)."""
import sys
from importlib.machinery import ModuleSpec, SourceFileLoader

PACKAGES = {packages!r}


class QuickEditableFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        where = PACKAGES.get(name)
        if where is None:
            return None
        init = where + "/__init__.py"
        spec = ModuleSpec(name, SourceFileLoader(name, init), origin=init, is_package=True)
        spec.submodule_search_locations = [where]
        spec.has_location = True
        return spec


if not any(getattr(f, "__name__", "") == "QuickEditableFinder" for f in sys.meta_path):
    sys.meta_path.append(QuickEditableFinder)
'''


def main() -> int:
    site = sysconfig.get_paths()["purelib"]
    pths = [n for n in os.listdir(site) if n.startswith(f"__editable__.{DISTRIBUTION}-") and n.endswith(".pth")]
    if len(pths) != 1:
        print(f"quick_editable: no single editable .pth of {DISTRIBUTION} in {site}; left as it is")
        return 0
    pth = os.path.join(site, pths[0])
    with open(pth, encoding="utf-8") as handle:
        line = handle.read().strip()
    if line == f"import {MODULE}":
        print("quick_editable: already in place")
        return 0
    words = line.replace(";", " ").split()
    if len(words) < 2 or words[0] != "import" or not words[1].startswith("__editable___"):
        print(f"quick_editable: {pth} is not setuptools' finder ({line[:60]!r}); left as it is")
        return 0
    sys.path.insert(0, site)
    mapping = getattr(importlib.import_module(words[1]), "MAPPING", None)
    if not isinstance(mapping, dict) or DISTRIBUTION not in mapping \
            or not all(os.path.isfile(os.path.join(p, "__init__.py")) for p in mapping.values()):
        print("quick_editable: setuptools' finder maps something unexpected; left as it is")
        return 0
    with open(os.path.join(site, MODULE + ".py"), "w", encoding="utf-8") as handle:
        handle.write(FINDER.format(packages=dict(sorted(mapping.items()))))
    with open(pth + ".new", "w", encoding="utf-8") as handle:
        handle.write(f"import {MODULE}\n")
    os.replace(pth + ".new", pth)
    print(f"quick_editable: {', '.join(sorted(mapping))} found by {MODULE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
