"""`spool ship` after a long outage: the segments dead processes left are shipped one at a
time, in bounded memory.

Replay read and parsed every orphaned segment before shipping any (100,000 records, 56 MB
of spool: 352 MB peak; a million records after a week's outage would need gigabytes, and a
`spool ship` killed for memory ships nothing, ever). Found by helper-83's fault review.

The peak RSS is measured by a fresh parent of the one `spool ship` process (its children's
ru_maxrss), not by the test process, whose earlier children would count. The records are few
and fat (4,000 of 25 KB, 100 MB of spool): what replay holds is bytes, and 100,000 small records
(56 MB) took 17 s of CPU to leave and ship here against 4 s.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.support.spool import leave_segments

RECORDS, PER_SEGMENT, PARAMETER_BYTES = 4000, 40, 25_000

MEASURED = textwrap.dedent("""
    import resource, subprocess, sys
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr)
    sys.exit(done.returncode)
""")


@pytest.mark.slow
def test_spool_ship_holds_one_segment_at_a_time(tmp_path):
    url, spool = f"sqlite:///{tmp_path / 'ledger.db'}", str(tmp_path / "spool")
    leave_segments(url, spool, RECORDS, PER_SEGMENT, parameter_bytes=PARAMETER_BYTES)
    assert len(list(Path(spool).rglob("*.log"))) >= RECORDS // PER_SEGMENT

    script = Path(sys.executable).parent / "lineage-ledger"
    shipped = subprocess.run([sys.executable, "-c", MEASURED, str(script), "spool", "ship", "--ledger", url,
                              "--spool", spool], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert shipped.returncode == 0, (shipped.stdout, shipped.stderr)
    peak_mib = int(shipped.stderr.strip().splitlines()[-1])
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "state")) as ledger:
        assert ledger.tree_head().size == RECORDS
    assert not list(Path(spool).rglob("*.log")), "every segment shipped and deleted"
    # All 4,000 records at once (the code before 21e7d2e) took 190 MiB here; one segment at a time,
    # 94 MiB, most of it SQLite's page cache, which stops growing at its limit. (With 100,000
    # records of make_record's size: 149 MiB against 81; helper-83 measured 352 MB with its records.)
    assert peak_mib < 120, peak_mib
