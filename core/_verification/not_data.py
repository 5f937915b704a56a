"""What ``verify-lineage DIR`` passes over in a folder it walks: what is not workflow data.

``verify-lineage .`` at a project's root walked into the ledger's own database (a ledger
kept beside the project, ``--ledger ./ledger.db``: the file and its ``-wal`` and ``-shm``)
and into the engines' own state (``.snakemake/``, ``.nextflow/``) and a repository's
``.git/``, and failed on each of their files as UNRECORDED: no task can record them, so
that check could never pass, whatever the workflow did. They are skipped now, each said
once (``skipped .snakemake: Snakemake's own state, ...``, and in ``--json``'s
``"skipped"``), as the ledger's own ``.lineage`` folders always were.

A state folder that a record names, or that holds a file a record names, is walked as
any other: what the ledger vouches for is checked wherever it lies. Everything else a
walk meets that no record names still fails (``docs/directories.md``): the ledger vouches
for nothing there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._files.hashing import lookup_paths

if TYPE_CHECKING:
    from .._ledger.ledger import Ledger

__all__ = ["OWN_DATABASE", "OWN_PROBE", "own_files", "own_probes", "state_folders"]

OWN_DATABASE = "this ledger's own database"
OWN_PROBE = "a lock probe the SQLite back-end left beside this ledger (its process was killed)"

# Folders engines and tools keep their own state in, by name, wherever they lie.
_STATE = {
    ".snakemake": "Snakemake's own state",
    ".nextflow": "Nextflow's own state",
    ".git": "a git repository's own data",
}
_SQLITE = "sqlite:///"
_JOURNALS = ("", "-wal", "-shm", "-journal")
# The SQLite back-end's lock probe (ledger_backends/_sqlite_files.py): unnamed where the file
# system allows, else removed by the next probe once its process is gone; one from an older
# release, or another host's within a day, can still lie beside the ledger.
_PROBE = ".ll-lock-probe-"


def own_files(ledger: Ledger) -> frozenset[str]:
    """The paths of the ledger's own database files on this machine (a SQLite ledger's
    file and its journals), as named and resolved; empty for a server's ledger."""
    found: set[str] = set()
    backend = ledger.backend
    for identity in (getattr(backend, "identity", ""), getattr(backend, "trust_identity", "")):
        if isinstance(identity, str) and identity.startswith(_SQLITE):
            base = identity[len(_SQLITE):]
            found.update(base + suffix for suffix in _JOURNALS)
    return frozenset(found)


def own_probes(ledger: Ledger, paths: list[str]) -> list[str]:
    """Of ``paths``, the SQLite back-end's lock probes beside the ledger's database."""
    folders = {os.path.dirname(p) + os.sep for p in own_files(ledger)}
    return [p for p in paths if _PROBE in p and os.path.basename(p).startswith(_PROBE)
            and any(p.startswith(f) and os.sep not in p[len(f):] for f in folders)]


def state_folders(ledger: Ledger, recorded: Callable[[str], bool]) -> Callable[[str], str | None]:
    """``walk_tree``'s ``skip_dir``: the reason to pass over an engine's state folder, or
    None where it is to be walked (another name, or a record names it or a file in it)."""

    def reason(path: str) -> str | None:
        said = _STATE.get(os.path.basename(path))
        if said is None or recorded(path) or _names_under(ledger, path):
            return None
        return f"{said}, not workflow data (no record names a file in it)"

    return reason


def _names_under(ledger: Ledger, directory: str) -> bool:
    """Whether the index names any path below ``directory`` (under either spelling); True
    where the back-end keeps no index to ask, so that nothing is passed over unseen."""
    for base in lookup_paths(directory):
        page = ledger.backend.paths_under(base, "", 1)
        if page is None or page:
            return True
    return False
