"""Snakemake logger plugin: every job of a run becomes a lineage-ledger record.

Turn it on with ``snakemake --logger ledger`` (settings ``--logger-ledger-*``), with
``logger: [ledger]`` in a workflow profile, or run ``snakemake-ledger`` (a shorthand).
``--logger-ledger-policy`` (warn, strict, rerun, off) checks the files a run will consume
or keep against the ledger before any job runs (:mod:`._preflight`).

Snakemake calls :meth:`LogHandler.emit` on its log listener thread. Only three events
matter (``job_info`` when a job starts, ``job_finished``, ``job_error``) and for them
``emit`` only gathers what the event and the job object say, journals it and sends it to
the plugin's recording process (:mod:`._sidecar`), which hashes the files and writes the
records. Two filters on Snakemake's logger act synchronously on its main thread: the
policy check, and hashing ``temp()`` outputs before Snakemake deletes them (:mod:`._eager`).

The handler and its settings live in :mod:`._handler`, imported when Snakemake's registry
asks the package for them. Every module of the package imports the package first, and the
recording process (:mod:`._sidecar`, a Python process of its own each run) has no use for
Snakemake's plugin interface, whose import cost it about 0.04 s of CPU a run.
"""

import importlib
from typing import Any

__all__ = ["LogHandler", "LogHandlerSettings"]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # a module's own dunders (__path__, __file__...) are never ours
        raise AttributeError(name)
    handler = importlib.import_module(f"{__name__}._handler")  # not `from . import`: it asks us again
    try:
        return getattr(handler, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
