"""The second process of :mod:`.verify_ahead`: what it runs (``_verify_part.py`` calls
:func:`serve`). Apart from :mod:`.verify_ahead`, which :mod:`.verify` imports, because it
runs :mod:`.verify`'s own window of checks.
"""

from __future__ import annotations

import os
from typing import Any

from .verify_ahead import PACKAGE

__all__ = ["serve"]

_FLUSH_EVERY = 256  # verdicts the child writes at once


def serve(task: dict[str, Any]) -> None:
    """The child's work (run by ``_verify_part.py``): verify ``task["paths"]`` as
    :func:`.verify.verify_lineage` verifies a directory's files, writing ``head`` once the
    tree head is the parent's, then ``+`` or ``-`` a path, in their order."""
    from .._ledger.ledger import open_ledger
    from .report import Report
    from .verify import _WINDOW, _fewer_collections, _verify_window

    if PACKAGE != task["package"]:
        return  # another copy of the package than the parent's: no answer
    # The verdicts through a descriptor of their own; anything printed goes where the
    # parent sends the child's errors, never into them.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    paths: list[str] = task["paths"]
    plain = {paths[i] for i in task["plain"]}
    with open_ledger(task["url"], spool=task["spool"], read_only=True, state_dir=task["state_dir"]) as ledger:
        head = ledger.tree_head()
        if [head.size, head.root] != task["head"]:
            return  # not the head the parent verifies against: no answer
        answers.write(b"head\n")
        answers.flush()
        report = Report()
        report.bound()
        pending = [0]

        def answer(_path: str, verified: bool) -> None:
            answers.write(b"+\n" if verified else b"-\n")
            pending[0] += 1
            if pending[0] >= _FLUSH_EVERY:
                answers.flush()
                pending[0] = 0

        with _fewer_collections():
            for start in range(0, len(paths), _WINDOW):
                _verify_window(ledger, paths[start : start + _WINDOW], report, files=True, audit=False,
                               plain=plain, bounded=True, hash_files_ahead=False, answer=answer)
                answers.flush()
    answers.close()
