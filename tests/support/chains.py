"""A ledger of a chain of tasks, each making the next file from the one before, with every
file still on disk: what the checkpoint, trusted-state and tampering tests rewrite, roll back
or verify (tests/test_outside_review_s36.py, tests/test_outside_review_s37.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lineage_ledger import open_ledger
from lineage_ledger._files.hashing import hash_file
from tests.support.factories import make_record

__all__ = ["task_chain"]


def task_chain(base: Path, url: str, blocks: Sequence[int] = (2, 2)) -> None:
    """``in.txt`` -> step0 -> ``out0.txt`` -> step1 -> ``out1.txt`` ... under ``base``, every
    file on disk, the records (run ``r``) appended to the ledger at ``url`` (any back-end) in
    ``blocks``: one append, so one block, of each size given. Spool and state are
    ``base/spool`` and ``base/build-state``, not the state the tests look at."""
    (base / "in.txt").write_text("input")
    previous, i = hash_file(str(base / "in.txt")), 0
    for count in blocks:
        records = []
        for _ in range(count):
            (base / f"out{i}.txt").write_text(f"out {i}")
            made = hash_file(str(base / f"out{i}.txt"))
            records.append(make_record(i, run_id="r", inputs=[previous], outputs=[made]))
            previous, i = made, i + 1
        with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "build-state")) as ledger:
            ledger.append_records([r.stored() for r in records])
