"""The ledger URL, read without importing ``lineage_ledger`` in Snakemake's process.

Checking the URL through the core imported ``lineage_ledger`` and its SQL back-end on
Snakemake's main thread before the DAG was even built: 0.26 s of CPU measured alone, over
a second of wall time on a loaded machine. For the URL nearly every run uses,
an SQLite file (the default ``.lineage/ledger.db``, ``sqlite:///PATH`` or a bare path), both
questions the plugin asks before any job runs have answers that need neither:

- can the URL be used at all? An SQLite file path can, unless it names a directory (the
  SQLite back-end ships with the core: SQLAlchemy is a dependency, not an extra);
- is there a ledger to check files against? Not while the file does not exist.

Any other URL (PostgreSQL, BAASH, Fabric, a query string, a driver name) goes the full way
through ``lineage_ledger``.
"""

from __future__ import annotations

import os
import re
import sys

#: lineage_ledger.DEFAULT_URL (core/_ledger/ledger.py), spelled here so that reading it imports nothing.
DEFAULT_URL = ".lineage/ledger.db"
_PLAIN_SQLITE = re.compile(r"^sqlite:///(?P<path>[^?#]+)$")


def effective_url(url: str | None) -> str:
    """What the core opens for ``url``: it, else ``$LINEAGE_LEDGER_URL``, else the default."""
    return url or os.environ.get("LINEAGE_LEDGER_URL") or DEFAULT_URL


def plain_sqlite_path(url: str | None) -> str | None:
    """The file of an SQLite ledger URL that needs no checking beyond the file itself, else None."""
    target = effective_url(url)
    if "://" not in target:
        # a bare path; one that looks like "scheme:..." is for the core to refuse
        return None if ":" in target.split("/")[0] and not target.startswith((".", "/")) else target
    match = _PLAIN_SQLITE.match(target)
    return match.group("path") if match else None


def surely_usable(url: str | None) -> bool:
    """True where the URL is a plain SQLite file path that is not a directory: no retry could
    make it fail the core's configuration check (``lineage_ledger._ledger.deferred.ledger_identity``)."""
    path = plain_sqlite_path(url)
    return path is not None and not os.path.isdir(path)


def maybe_remembered() -> bool:
    """False where this account surely remembers no ledger: its state directory (as
    ``lineage_ledger._environment.state_root`` places it) holds no ledger's directory. A
    missing ledger file is then a first run, with nothing to import; else the core is asked
    whether the missing file is a ledger verified here before (deleted, or moved away)."""
    root = os.environ.get("LINEAGE_STATE_DIR")
    if not root:
        base = os.environ.get("XDG_STATE_HOME")
        if not base or not os.path.isabs(base):
            base = os.path.join(os.path.expanduser("~"), ".local", "state")
        root = os.path.join(base, "lineage-ledger")
    try:
        with os.scandir(root) as entries:
            return any(entry.is_dir() for entry in entries)
    except OSError:
        return not isinstance(sys.exc_info()[1], FileNotFoundError)  # unreadable: ask the core


def surely_no_ledger(url: str | None) -> bool:
    """True where the URL is a plain SQLite file that does not exist: nothing was ever
    recorded there, so a read-only open would say ``NoLedger``."""
    path = plain_sqlite_path(url)
    return path is not None and not os.path.lexists(path)
