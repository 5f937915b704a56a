"""Tries that cannot be recorded: ``File``s, or a ledger, at paths that are not UTF-8 text.

On Linux a path is bytes; one that is not UTF-8 (a run started in ``$'run-\\xff'``, whose
relative ``File``s and ``os.path.abspath`` names are under it) is a ``str`` with lone
surrogates in Python. The ledger names a file by its path, as text, so a try that reads or
writes such a file can be neither checked nor recorded (the core refuses the path: "the file
name is not valid UTF-8"), and a ledger whose own path is not UTF-8 has no name to be kept
under (its spool, the trust state), so nothing can be recorded in it.

Each such task used to say so twice (the memoizer's "could not check the files of task N",
the capture's "could not record task ...") and strict failed it with the core's bare error.
Now the run says once, at its start, what will not be recorded (:func:`why_nothing_is_recorded`,
:func:`working_directory_note`), drops those tries before they reach the capture, and says
at its end how many it dropped. As the Snakemake plugin does (its ``_unrecordable``), except
that a working directory that is not UTF-8 does not stop a Parsl run's recording: a Parsl
app's ``File``s are often absolute, elsewhere, and those tries are recorded as usual.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from typing import Any

from lineage_ledger import DEFAULT_URL, ArtifactError
from lineage_ledger._environment import not_utf8 as not_utf8  # the core's test, for callers of this module

log = logging.getLogger("lineage_ledger.parsl")

__all__ = ["SAID", "changes_key", "not_utf8", "refuse_unnamed", "shown", "unnamed", "why_nothing_is_recorded",
           "working_directory_note"]

#: What the plugin says, once, before the reason no try of a run can be recorded.
SAID = "nothing of this run can be recorded"



def shown(text: str) -> str:
    """``text`` with each byte that is not UTF-8 written ``\\xNN``, as records write them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unnamed(paths: list[str]) -> list[str]:
    """Those of ``paths`` (absolute, as a try's files are) that the ledger cannot name."""
    return [p for p in paths if not_utf8(p)]


def why_nothing_is_recorded(url: str | None) -> str | None:
    """Why no try recorded into ``url`` (None: ``$LINEAGE_LEDGER_URL`` or the default, the
    working directory's ``.lineage/ledger.db``) can be recorded; None where tries can be.
    Only what makes the ledger unnameable: an unknown scheme, a server that is down, are
    said by the capture, and a ledger that comes back takes the spooled records."""
    text = url if url is not None else os.environ.get("LINEAGE_LEDGER_URL", DEFAULT_URL)
    if not_utf8(text):
        from lineage_ledger._ledger.identity import redact

        return (f"the ledger URL {shown(redact(text, text))} is not valid UTF-8 text: give ParslLedger(url) "
                "(or $LINEAGE_LEDGER_URL) one that is")
    from lineage_ledger.backends._sqlite_files import sqlite_file

    path = sqlite_file(text) if "%" not in text else None  # other URLs: text, checked above
    if path is not None and not_utf8(os.path.realpath(path)):
        return (f"the ledger {shown(os.path.abspath(path))} is at a path that is not valid UTF-8 text, and a "
                "ledger is named by its path (the default one by the working directory's): give ParslLedger(url) "
                "(or $LINEAGE_LEDGER_URL) a ledger whose path is")
    return None


def working_directory_note() -> str | None:
    """What to say at the start of a run in a working directory whose name is not UTF-8
    (the ledger elsewhere); None in any other."""
    try:
        here = os.getcwd()
    except OSError:
        return None
    if not not_utf8(here):
        return None
    return (f"the working directory {shown(here)} is not valid UTF-8 text: a task whose Files are under it "
            "(every relative File is) can be neither checked nor recorded, as the ledger names a file by its "
            "path, as text; such tasks run unrecorded (policy strict refuses them). Run the workflow in a "
            "directory whose path is UTF-8 (rename it)")


def changes_key(path: str) -> str | None:
    """A cache key for an input the ledger cannot name, in place of its content digest
    (which the core will not take for such a path): its status, and for a directory that
    of everything under it. Any write changes it (the change time cannot be set back), so an
    edited input is a cache miss, never a stale hit; a mere ``touch`` is one too (the safe
    side). None if it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        top = os.stat(path)
        digest.update(_signature(top))
        if stat.S_ISDIR(top.st_mode):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files) + dirs:
                    entry = os.path.join(root, name)
                    digest.update(os.fsencode(os.path.relpath(entry, path)) + b"\0")
                    digest.update(_signature(os.stat(entry)))
    except OSError:
        return None
    return "changes:" + digest.hexdigest()


def _signature(found: os.stat_result) -> bytes:
    return repr((found.st_mode, found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino,
                 found.st_dev)).encode()


def refuse_unnamed(ledger: Any, task: Mapping[str, Any], left: list[str], *, said: bool) -> None:
    """Files of ``task`` at paths that are not UTF-8: the try goes unrecorded (the run
    says so at its start and end), and ``strict`` refuses it, as nothing can vouch for
    them. The refusal is logged once per ledger (``said``: it was already); each refused
    try raises it."""
    if ledger.policy != "strict":
        return
    refusal = ArtifactError(
        shown(left[0]),
        f"not valid UTF-8 text: lineage-ledger refuses to run task {task['id']} ({task['func_name']}) under "
        "policy strict, as it can neither check nor record a file whose path is not (the ledger names a file "
        "by its path, as text); rename it" + (f" ({len(left) - 1} more such files)" if len(left) > 1 else ""))
    if not said:
        log.error("lineage-ledger: %s", refusal)
    ledger.not_recorded(left[0])  # the refusal cannot be recorded either
    raise refusal
