"""Names ``nextflow-ledger`` is given that are not UTF-8 text, looked at before Nextflow starts.

On Linux a name is bytes; a task's files are named in the ledger by their paths, as text, and
Nextflow, a Java program, reads every name as text too: a byte that is not UTF-8 becomes
another character, so Nextflow works under names other than the ones given. Tested with
Nextflow 25.04.4 (``tests/test_nextflow_not_utf8.py``):

* from a launch directory ``wd-\\xff`` it wrote ``work/`` and the published files under a
  directory beside it (``wd-\\ufffd``), kept its history and log in the real one, appended to
  the previous run's log instead of starting its own (the wrapper, which skips the previous
  log, then recorded nothing of that run), and did not find what it had cached. The default
  ledger there has no name either (the core refuses it: it was refused only after Nextflow
  had started, and Nextflow was killed).
* ``-log log-\\xff``: Nextflow wrote ``log-\\ufffd``; the wrapper, which records every task
  from that log, followed the name given and recorded nothing, without a word.

In both cases nothing of the run can be recorded: the wrapper says so once, before Nextflow
starts, and Nextflow then runs as it would without the wrapper; ``--ledger-policy strict``
refuses to start (:func:`why_nothing_is_recorded`). A ledger named by a path (or URL) that is
not UTF-8 is a bad setting, refused with exit status 2 as any ledger URL no retry can fix,
but before Nextflow starts (:func:`bad_ledger`).

``-w`` and a ``publishDir`` that are not UTF-8 are recorded where Nextflow puts them (under
the name it makes of them): their records name files that exist, nothing is lost.

Only ``os`` is used: this runs before Nextflow starts, and nothing else is imported by then.
"""

from __future__ import annotations

import os

__all__ = ["SAID", "bad_ledger", "shown", "why_nothing_is_recorded"]

#: What the wrapper says, once, before the reason.
SAID = "nothing of this run can be recorded"


def not_utf8(text: str) -> bool:
    """Whether ``text`` holds a byte that is not UTF-8 (a lone surrogate, ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown(text: str) -> str:
    """``text`` with each byte that is not UTF-8 written ``\\xNN``, as records write them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def why_nothing_is_recorded(launch_dir: str, log_file: str | None) -> str | None:
    """Why no task of a run launched from ``launch_dir`` (its log at ``log_file``, if given)
    could be recorded; None where they can be."""
    if not_utf8(launch_dir):
        return (f"the launch directory {shown(launch_dir)} is not valid UTF-8 text: a task's files are named in the "
                "ledger by their paths, as text, and Nextflow reads the name as text too, so its work directory and "
                "published files go to a directory of another name; run the pipeline from a directory whose path is "
                "UTF-8 (rename it)")
    if log_file is not None and not_utf8(log_file):
        return (f"the log file {shown(log_file)} (-log, else NXF_LOG_FILE) is not valid UTF-8 text: every task is recorded "
                "from Nextflow's log, and Nextflow reads the name as text and writes its log under another name; "
                "give -log a name that is UTF-8")
    return None


def _sqlite_path(url: str) -> str | None:
    """The file a plain path or an ``sqlite:///`` URL names (as the core reads it); None for
    another URL, an in-memory database, or one with escapes (``%``) the core decodes."""
    if "%" in url:
        return None
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    if scheme.split("+", 1)[0].lower() != "sqlite" or "/" not in rest:
        return None
    database = rest.split("?", 1)[0].split("/", 1)[1]
    return None if database in ("", ":memory:") else database


def bad_ledger(url: str) -> str | None:
    """Why the ledger ``url`` (absolute, as ``_args.absolute_url`` makes it) cannot be used
    because a name in it is not UTF-8; None otherwise. A URL other than a file's is not
    shown: it may hold a password."""
    path = _sqlite_path(url)
    if path is not None:
        if not_utf8(os.path.realpath(path)):
            return (f"the ledger {shown(os.path.abspath(path))} is at a path that is not valid UTF-8 text (a ledger "
                    "is named by its path): give --ledger (or LINEAGE_LEDGER_URL) a ledger whose path is")
        return None
    if not_utf8(url):
        return ("the ledger URL (--ledger, or LINEAGE_LEDGER_URL) is not valid UTF-8 text: give --ledger (or "
                "LINEAGE_LEDGER_URL) one that is")
    return None
