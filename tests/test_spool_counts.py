"""What the spool commands count: records, said as the tasks and directory manifests they are.

A task whose input or output is a directory is kept with the directory's manifest record, so
a 9-job run with three directory outputs leaves 12 records; users count tasks. Every count of
records a user reads from ``spool status`` and ``spool ship`` says how many are tasks and how
many directory manifests. Through the real CLI, a real SQLite ledger whose write lock another
real process holds while the records wait.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from lineage_ledger import verify_before_run
from tests.support.faults import hold_write_lock


def _run(cli, name: str, output: str, make: str) -> None:
    result = cli("run", "--ship-wait", "0", "-n", name, "-o", output, "--", "sh", "-c", make)
    assert result.returncode == 0 and "waits" in result.stderr, result.stderr


def test_spool_status_and_ship_say_tasks_and_directory_manifests(cli, workdir, caplog):
    cli("run", "--", "true", check_rc=0)  # the ledger exists
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        for name in ("a", "b", "c"):  # three tasks that write a directory each
            _run(cli, name, f"out-{name}", f"mkdir -p out-{name} && echo {name} > out-{name}/x")
        _run(cli, "d", "d.txt", "echo d > d.txt")  # and one that writes a file
        text = cli("spool", "status", check_rc=0).stdout
        assert "7 record(s) wait for " in text and "(4 tasks, 3 directory manifests)" in text, text
        waiting, = json.loads(cli("spool", "status", "--json", check_rc=0).stdout)
        assert (waiting["records"], waiting["tasks"], waiting["manifests"]) == (7, 4, 3), waiting
        # verify-lineage's note on what waits counts the same way (a file whose record waits
        # is not in the ledger yet: UNRECORDED, exit 1, and the note says why).
        verified = cli("out-a", program="verify-lineage")
        assert verified.returncode == 1, verified.stdout + verified.stderr
        assert ("note: 7 record(s) (4 tasks, 3 directory manifests) of this ledger wait in the spool"
                in verified.stdout), verified.stdout
        told = json.loads(cli("out-a", "--json", program="verify-lineage").stdout)["waiting_in_spool"]
        assert (told["records"], told["tasks"], told["manifests"]) == (7, 4, 3), told
        assert told["naming"] == [str(workdir / "out-a")], told
        # And the plugins' pre-run check, which compares out-a with the record that waits.
        with caplog.at_level(logging.INFO):
            assert verify_before_run(f"sqlite:///{workdir}/.lineage/ledger.db", [str(workdir / "out-a")], "strict") == []
        assert any("7 record(s) (4 tasks, 3 directory manifests) of this ledger wait in the spool" in r.getMessage()
                   for r in caplog.records), caplog.text
        locked = cli("spool", "ship", "--timeout", "1")
        assert locked.returncode == 2, locked.stderr
        assert "7 record(s) wait in the spool" in locked.stderr and "(4 tasks, 3 directory manifests)" in locked.stderr
    finally:
        holder.communicate("")
    shipped = cli("spool", "ship", check_rc=0)
    assert "shipped 7 record(s) (4 tasks, 3 directory manifests)" in shipped.stderr, shipped.stderr
    # Run again with out-a unchanged: its manifest is journaled again, and is in the ledger already.
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        _run(cli, "a", "out-a", "mkdir -p out-a && echo a > out-a/x")
        text = cli("spool", "status", check_rc=0).stdout
        assert "2 record(s) wait for " in text and "(1 task, 1 directory manifest)" in text, text
    finally:
        holder.communicate("")
    shipped = cli("spool", "ship", check_rc=0)
    assert "shipped 1 record(s) (1 task)" in shipped.stderr, shipped.stderr  # the manifest was there
    again = cli("spool", "ship", check_rc=0)
    assert "shipped 0 record(s)" in again.stderr, again.stderr


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime (libfaketime) is not installed")
def test_a_record_from_a_clock_ahead_counts_as_waiting_since_it_was_journaled(cli, workdir):
    """A host whose clock was an hour ahead left its record in the spool (the ledger locked):
    that record "ended" in the future, and ``spool status --json`` gave a negative
    ``oldest_age_s`` for as long as it waited, so an alert on stuck records never fired. It is
    waiting since its segment was written, at the latest."""
    cli("run", "--", "true", check_rc=0)  # the ledger exists
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        ahead = cli("run", "--ship-wait", "0", "-n", "fast", "-o", "f.txt", "--", "sh", "-c", "echo f > f.txt",
                    prefix=(shutil.which("faketime"), "-f", "+1h"))
        assert ahead.returncode == 0 and "waits" in ahead.stderr, ahead.stderr
        waiting, = json.loads(cli("spool", "status", "--json", check_rc=0).stdout)
        assert waiting["tasks"] == 1 and 0 <= waiting["oldest_age_s"] < 600, waiting
    finally:
        holder.communicate("")


def test_a_record_journaled_twice_counts_once(cli, workdir):
    """A record can be journaled twice: the recording process and its engine's both keep one
    that was not acknowledged when the back-end went down (tests/test_capture_process.py).
    ``spool status`` said "6 record(s) wait (6 tasks)" for 3 distinct records, and ``spool
    ship`` then "shipped 3". Here the second copy is the same segment under another name."""
    cli("run", "--", "true", check_rc=0)  # the ledger exists
    holder = hold_write_lock(workdir / ".lineage" / "ledger.db")
    try:
        _run(cli, "a", "a.txt", "echo a > a.txt")
        _run(cli, "b", "b.txt", "echo b > b.txt")
    finally:
        holder.communicate("")
    waiting, = json.loads(cli("spool", "status", "--json", check_rc=0).stdout)
    segments = sorted(p for p in Path(waiting["directory"]).iterdir() if p.suffix == ".log")
    assert waiting["records"] == 2 and segments, waiting
    copy = segments[0].with_name("zz-" + segments[0].name)
    shutil.copy2(segments[0], copy)
    copy.chmod(0o600)
    again, = json.loads(cli("spool", "status", "--json", check_rc=0).stdout)
    assert (again["records"], again["tasks"]) == (2, 2), again
    shipped = cli("spool", "ship", check_rc=0)
    assert "shipped 2 record(s) (2 tasks)" in shipped.stderr, shipped.stderr
