"""How the plugin starts its own Python processes (the recording process, and ``snakemake-ledger``'s
Snakemake), without importing code from the directory they start in.

``lineage_ledger._launch``'s boot, written again here: importing the library would load it into
Snakemake's process (and into the wrapper, which imports nothing it does not need before its exec).
"""

from __future__ import annotations

import sys

# The current directory off sys.path (``-m`` would put it first), then the module as -m runs it.
_BOOT = """import sys
if sys.path[:1] == [""]:
    del sys.path[0]
import runpy
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args...``, minus the current directory on ``sys.path``."""
    return [sys.executable, "-c", _BOOT, module, *args]
