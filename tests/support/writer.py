"""A recording process for the concurrency and kill -9 tests.

usage: writer.py URL SPOOL RUN_ID COUNT [PROGRESS_FILE]

Records COUNT records through a Recorder. After each ``record()`` returns, the number
of calls that returned is written to PROGRESS_FILE (8 bytes), so a test that kills this
process knows exactly which records it must find afterwards.
"""

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lineage_ledger import open_ledger  # noqa: E402
from tests.support.factories import make_record  # noqa: E402


def main() -> None:
    url, spool, run_id, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    progress = os.open(sys.argv[5], os.O_RDWR | os.O_CREAT, 0o644) if len(sys.argv) > 5 else None
    ledger = open_ledger(url, spool=spool)
    recorder = ledger.recorder(batch_size=200, max_age=0.05, max_pending=count + 1)
    for i in range(count):
        recorder.record(make_record(i, run_id=run_id))
        if progress is not None:
            os.pwrite(progress, struct.pack("<Q", i + 1), 0)
    if not recorder.close(timeout=120):
        sys.exit(3)
    ledger.close()


if __name__ == "__main__":
    main()
