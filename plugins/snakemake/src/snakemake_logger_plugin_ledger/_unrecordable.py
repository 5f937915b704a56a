"""Where nothing of a run can be recorded: a working directory, or a ledger, whose path is not
UTF-8 text.

A job's files are named in its record by their paths, which are the ledger's keys and text;
on Linux a directory's name is bytes, and one that is not UTF-8 gives paths no record can
hold (the core refuses them: "the file name is not valid UTF-8"). Under such a working
directory every job would run and then have its record refused, and the pending-jobs journal
would keep them for a next run that could never record them either. A ledger whose own path
is not UTF-8 has no name to be kept under (its spool, this account's trust state), and every
``lineage-ledger`` command refuses it. So the plugin looks once, when the workflow starts, in
Snakemake's working directory: it says that nothing of the run is recorded and records
nothing (the jobs run as they would without it), and ``--logger-ledger-policy strict``
refuses to start (:class:`._preflight.PolicyHook`).

Read without importing ``lineage_ledger``, as :mod:`._urls` reads the URL.
"""

from __future__ import annotations

import os

from ._urls import plain_sqlite_path

__all__ = ["SAID", "why_nothing_is_recorded"]

#: What the plugin says, once, before the reason.
SAID = "nothing of this run can be recorded"


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a byte that is not UTF-8 (surrogateescape)
        return True
    return False


def _shown(path: str) -> str:
    """``path`` with each byte that is not UTF-8 written ``\\xNN``, as records write them."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def why_nothing_is_recorded(url: str | None) -> str | None:
    """Why no job of a run in the current directory, recording into ``url`` (the plugin's
    setting; None: ``$LINEAGE_LEDGER_URL`` or the default), could be recorded; None where
    they can be."""
    try:
        here = os.getcwd()
    except OSError:
        return None  # a working directory that is gone: Snakemake says so itself
    if _not_utf8(here):
        return (f"the working directory {_shown(here)} is not valid UTF-8 text, and a job's files are named in "
                "the ledger by their paths, as text: run the workflow in a directory whose path is UTF-8 (rename "
                "it)")
    path = plain_sqlite_path(url)  # other URLs: the core checks them before the run (ledger_identity)
    if path is not None and _not_utf8(os.path.realpath(path)):
        return (f"the ledger {_shown(os.path.abspath(path))} is at a path that is not valid UTF-8 text, and a "
                "ledger is named by its path: give --logger-ledger-url (or $LINEAGE_LEDGER_URL) a ledger whose "
                "path is")
    return None
