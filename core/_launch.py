"""Starting this library's own Python processes without importing code from where they start.

``python -m MODULE`` puts the current directory first on ``sys.path``: a ``json.py`` (or
``msgspec.py``, ``blake3.py``, ...) in the directory a workflow runs in, which another local
user may be able to write (a lab's shared project folder), was imported as code by the
recording process every engine starts, by BAASH's ranks and by Snakemake's sidecar
(tests/test_launch_planted.py; the audit's workers, tests/test_audit_s48_worker_start.py). The
processes start as ``python -c BOOT MODULE ARGS...`` instead: the boot takes that entry off
before anything is imported (``site`` runs before Python adds it), then runs the module as
``-m`` would. Python 3.11's ``-P`` does the same, but the library supports 3.10.
"""

from __future__ import annotations

import sys

__all__ = ["module_command"]

_BOOT = """import sys
if sys.path[:1] == [""]:
    del sys.path[0]
import runpy
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def module_command(module: str, *args: str, python: str | None = None) -> list[str]:
    """The command that runs ``module`` as ``python -m module args...`` would, minus the
    current directory on ``sys.path``."""
    return [python or sys.executable, "-c", _BOOT, module, *args]
