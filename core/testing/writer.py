"""A recording process for the suite's concurrency tests.

usage: python -m lineage_ledger.testing.writer URL SPOOL RUN_ID COUNT [PROGRESS_FILE]

Records COUNT records through a Recorder and exits 0 once the ledger has them all (3 if
they could not be shipped within two minutes). After each ``record()`` returns, the number
of calls that returned is written to PROGRESS_FILE (8 bytes, little-endian), so a test that
kills this process knows exactly which records it must find afterwards.
"""

from __future__ import annotations

import os
import struct
import sys

from .. import open_ledger
from .records import make_record


def main(argv: list[str]) -> int:
    url, spool, run_id, count = argv[0], argv[1], argv[2], int(argv[3])
    progress = os.open(argv[4], os.O_RDWR | os.O_CREAT, 0o600) if len(argv) > 4 else None
    ledger = open_ledger(url, spool=spool)
    recorder = ledger.recorder(batch_size=200, max_age=0.05, max_pending=count + 1)
    for i in range(count):
        recorder.record(make_record(i, run_id=run_id))
        if progress is not None:
            os.pwrite(progress, struct.pack("<Q", i + 1), 0)
    if not recorder.close(timeout=120):
        return 3
    ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
