"""A recorder (what the engine plugins ship through) whose ledger refuses writes for good
stops waiting at once when it closes, and says why.

Before, a process whose ledger it may not write (a PostgreSQL role that may only read, a
read-only SQLite file) waited out its whole exit timeout at the end of every workflow, then
said the records would be shipped when the ledger was next opened, as for a ledger that is
only locked or down. The records stay in the spool either way. A real SQLite file made
read-only, written by a process without root's power to ignore file modes; about 2 s.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

from tests.conftest import run_cli
from tests.support.faults import without_root_file_powers

SCRIPT = textwrap.dedent("""
    import logging, sys, time
    from lineage_ledger import Recorder, spool_first
    from tests.support.factories import make_record

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    recorder = Recorder(spool_first(sys.argv[1], spool=sys.argv[2]), exit_timeout=60.0, max_age=0.05)
    recorder.record(make_record(7))
    started = time.monotonic()
    done = recorder.close()
    print(f"closed done={done} after {time.monotonic() - started:.1f}s")
""")


def test_a_recorder_closes_at_once_on_a_ledger_that_refuses_writes_for_good(tmp_path):
    run_cli("run", "--", "true", cwd=tmp_path, check_rc=0)  # the ledger exists
    db = tmp_path / ".lineage" / "ledger.db"
    mode = stat.S_IMODE(db.stat().st_mode)
    os.chmod(db, 0o444)
    as_a_user = without_root_file_powers()
    try:
        result = subprocess.run(
            [*as_a_user, sys.executable, "-c", SCRIPT, f"sqlite:///{db}", str(tmp_path / ".lineage" / "spool")],
            cwd=os.getcwd(), capture_output=True, text=True, timeout=120,
            env={**os.environ, "LINEAGE_STATE_DIR": str(tmp_path / "state")})
    finally:
        os.chmod(db, mode)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "closed done=False" in out, out
    assert "refuses them for good" in out and "read-only" in out, out  # not "shipped when next opened"
    assert "within 60.0s" not in out, out
    seconds = float(out.split("closed done=False after ")[1].split("s")[0])
    assert seconds < 30, out  # it did not wait out the 60 s exit timeout
    shipped = run_cli("spool", "ship", cwd=tmp_path, check_rc=0)  # writable again: the record goes in
    assert "1" in shipped.stdout + shipped.stderr
