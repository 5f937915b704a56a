"""Watching which way an audit went, without changing it, and what it left in a state directory."""

from __future__ import annotations

import os

from lineage_ledger._log import audit_parallel


def state_files(directory: str) -> dict[str, bytes]:
    """Every file of a state directory but its lock, by name: what a failed audit must leave
    byte for byte as it was."""
    found = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and name != "lock":
            with open(path, "rb") as handle:
                found[name] = handle.read()
    return found


def watch_workers(monkeypatch) -> list[tuple[object, int]]:
    """Every call of the workers' results (the real ones run), as (the back-end they read
    through, how many ranges): empty if the audit never started workers."""
    calls: list[tuple[object, int]] = []
    real = audit_parallel.results

    def watched(backend, tasks, *, files, **options):
        calls.append((backend, len(tasks)))
        return real(backend, tasks, files=files, **options)

    monkeypatch.setattr(audit_parallel, "results", watched)
    return calls


# A refresh killed (SIGKILL) after appending its names, before its head: python -c KILLED_REFRESH URL STATE
KILLED_REFRESH = """
import os, signal, sys
from lineage_ledger import open_ledger
from lineage_ledger._log import trust

def die(self, *args, **kwargs):  # after the names are appended, before head.json
    self._names.queue(*self._batch.packed())
    self._names.flush()
    os.kill(os.getpid(), signal.SIGKILL)

trust.TreeWriter.commit = die
with open_ledger(sys.argv[1], read_only=True, state_dir=sys.argv[2]) as ledger:
    ledger.tree_head()
"""
