"""The second process of :mod:`.verify_ahead`, run by its path (``python .../_verify_part.py``).

It reads its task from standard input (JSON: the parent's ``sys.path``, the package's file,
the ledger, the tree head, the paths) and imports the package only from the parent's
``sys.path``, put in place before any import of it: the package it runs is the parent's own
(it says so, by file, or answers nothing), never one found in the working directory.
"""

import json
import sys

if __name__ == "__main__":
    try:
        task = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
        sys.path[:] = [p for p in task["sys_path"] if isinstance(p, str)]
        from lineage_ledger._verification.verify_child import serve

        serve(task)
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the parent went away or stopped: nothing to say to anyone
