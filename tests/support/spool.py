"""Spool segments left behind, as a task process killed by its engine leaves them: a real
process journals records with the spool's writer and dies (``os._exit``) without shipping
them, so each segment is an orphan that ``spool ship`` (or a later run's replay) takes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

LEAVE_SEGMENTS = textwrap.dedent("""
    import os, sys
    from lineage_ledger import open_ledger
    from lineage_ledger._ledger.spool import SpoolWriter
    from tests.support.factories import make_record
    url, spool, records, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open_ledger(url, spool=spool) as ledger:
        directory = ledger.spool_dir
    writer = SpoolWriter(directory)
    for i in range(records):
        record = make_record(i)
        stored = record.stored()
        writer.append(record, stored.id, stored.body)
        if (i + 1) % per == 0:
            writer.rotate()
    os._exit(0)  # dies without shipping: every segment is an orphan
""")


def leave_segments(url: str, spool: str, records: int, per: int, *, timeout: float = 600) -> None:
    """``records`` records (``make_record(0..records-1)``) for the ledger at ``url``, in
    segments of ``per`` records under ``spool``, left by a process that is gone."""
    subprocess.run([sys.executable, "-c", LEAVE_SEGMENTS, url, spool, str(records), str(per)], cwd=ROOT,
                   check=True, timeout=timeout)
