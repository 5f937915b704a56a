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
    import dataclasses, os, sys
    from lineage_ledger import open_ledger
    from lineage_ledger._ledger.spool import SpoolWriter
    from tests.support.factories import make_record
    url, spool, records, per, pad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    with open_ledger(url, spool=spool) as ledger:
        directory = ledger.spool_dir
    writer = SpoolWriter(directory)
    for i in range(records):
        record = make_record(i)
        if pad:  # a parameter of about `pad` bytes, its own in each record
            record = dataclasses.replace(record, parameters={**record.parameters, "pad": f"{i:08d}" * (pad // 8)})
        stored = record.stored()
        writer.append(record, stored.id, stored.body)
        if (i + 1) % per == 0:
            writer.rotate()
    os._exit(0)  # dies without shipping: every segment is an orphan
""")


def leave_segments(url: str, spool: str, records: int, per: int, *, parameter_bytes: int = 0,
                   timeout: float = 600) -> None:
    """``records`` records (``make_record(0..records-1)``) for the ledger at ``url``, in
    segments of ``per`` records under ``spool``, left by a process that is gone. With
    ``parameter_bytes``, each record also has a parameter of that many bytes (a test of what
    replay holds in memory gets the same megabytes from fewer records)."""
    subprocess.run([sys.executable, "-c", LEAVE_SEGMENTS, url, spool, str(records), str(per), str(parameter_bytes)],
                   cwd=ROOT, check=True, timeout=timeout)
