"""A process that records into one ledger, then another, through the default ledger URL.

A capture stamps each task with what this process had seen of the ledger it records into
(``extra["lineage_ledger.after"]``, the order of :mod:`lineage_ledger._order`). The ledger is
worked out once a process from the URL *as given*, so with no URL given (the default
``.lineage/ledger.db`` of the working directory, or ``LINEAGE_LEDGER_URL``) a process that
moved on to another project (a notebook's ``%cd``, a script's ``os.chdir``) went on stamping
its tasks with what it had seen of the first project's ledger, for as long as it ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from lineage_ledger import open_ledger
from lineage_ledger._order import AFTER_KEY, SEEN_KEY

# Run in a process of its own: what a process has seen is kept for the process (a test run's
# earlier tests would have set it already).
TWO_PROJECTS = textwrap.dedent("""
    import os, sys
    from datetime import timedelta
    from lineage_ledger import TaskCapture, TaskRun, utcnow

    def record_now(name, started):
        with TaskCapture(engine="test", run_id=name, raise_errors=True) as capture:  # the default ledger
            run = TaskRun(task_id=name, task_name=name, status="succeeded", started=started,
                          ended=started + timedelta(seconds=1))
            assert capture.record_now(run, straight_wait=30) is not None

    os.chdir(sys.argv[1])
    record_now("fast-host", utcnow() + timedelta(days=365))  # a host whose clock is a year fast
    os.chdir(sys.argv[2])
    record_now("here", utcnow() + timedelta(seconds=1))  # after the reading of a's ledger was taken
""")


def test_a_task_recorded_after_a_change_of_directory_is_stamped_from_its_own_ledger(tmp_path):
    """Project a's ledger gets a record a year ahead, shipped by this process, which then
    records a task into project b's new ledger. That task's stamp may only say what was seen
    of b's ledger (nothing yet); a's year-ahead time made it the latest record of b for a
    year, whatever b's later records say."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    subprocess.run([sys.executable, "-c", TWO_PROJECTS, str(first), str(second)], env=env, check=True,
                   timeout=120)
    with open_ledger(str(second / ".lineage" / "ledger.db")) as ledger:
        (entry,) = list(ledger.run("here"))
    assert AFTER_KEY not in entry.record.extra, entry.record.extra[AFTER_KEY]
    assert SEEN_KEY not in entry.record.extra, entry.record.extra[SEEN_KEY]
