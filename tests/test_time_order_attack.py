"""Attacks on the ledger's own order (``lineage_ledger._order``, ``_ledger/seen.py``): ways a
record's ``after`` made a task count as later than a record that landed while it ran.

1. Several hosts, one state directory (a home directory on NFS, the default place of the
   trusted state and the spool on a cluster). A verification on the login node, whose clock is
   behind the compute node's, leaves its reading (``head.json``, the ``latest-seen`` hint)
   dated by its own clock. A long-lived recorder on the compute node (a Parsl DataFlowKernel,
   Airflow's scheduler: they read those files again each minute) took the reading as dated
   before a task that was already running when the reading was taken, and stamped the task
   as later than a record that landed while it ran. The task read the old version of a file
   that record then rewrote: ``verify-lineage`` of the correct file fails (MODIFIED, exit 1)
   and the old version put back passes (exit 0). ``seen.py`` said of this: "a failure to
   check, never a pass".
2. One host with a right clock, and one record from a host whose clock is 10 minutes fast
   (``g.txt``; the premise of the feature). A short task starts after that record landed and
   reads ``f.txt``; its ``after`` moves it 10 minutes on. Meanwhile a longer task, which had
   started before the fast record landed (so it did not see it, and its ``after`` says so),
   rewrites ``f.txt``. The two never saw each other, so "the clocks decide" (``_order.py``):
   they say the writer ended after the reader started; but the reader's moved time wins, and
   ``verify-lineage f.txt`` fails on the right file and passes the old one put back. Before
   the ledger's order the clocks got this right. Fixed in the twenty-third stop: a record
   says how many records its recorder had verified (``lineage_ledger.seen``); the writer is
   past that count, so the two never saw each other and the reader's own start is compared
   with the writer's end (tests/test_time_order_attack_readers.py shows why the start may not
   simply stay unmoved).
3. The same with two writers of ``f.txt`` at once: the short one saw the fast record and is
   moved past the long one, which really ended last. Fixed in the twenty-fourth stop where the
   short writer's recorder had verified the ledger (as every engine's pre-run check does): its
   count of records seen does not cover the long writer, so each counts from its own end, and
   the look-up of the latest writer reads the writers that ended after the moved one's own end
   (``Ledger._last_in_role``). A recorder that never verified (it only shipped records) knows
   no count, and its writer is still ordered by its moved end (a strict xfail). The count its
   own appends leave was tried (the twenty-fifth stop) and withdrawn: by the time its next
   task starts other processes may have appended more, and a count that old orders a reader
   by its own start, before a writer from a fast clock that it saw, where the time alone moved
   it past (tests/test_attack_s47.py).

About 4 s.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow
from lineage_ledger._capture.files import entries_of
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from tests.conftest import run_cli

FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(FAKETIME is None, reason="faketime (libfaketime) is not installed")


def _write(base: Path, text: str, run_id: str, ref: Path | None = None) -> list:
    ref = ref or base / "ref.txt"
    ref.write_text(text)
    now = utcnow()
    return [Record(engine="test", run_id=run_id, task_id="write", task_name="write", status="succeeded",
                   started=now - timedelta(milliseconds=10), ended=now,
                   outputs=entries_of([hash_file(str(ref))])).stored()]


def _append_fast_record(ledger, g: Path) -> None:
    """A record of ``g.txt`` from a host whose clock is ten minutes fast."""
    fast = utcnow() + timedelta(minutes=10)
    g.write_text("g\n")
    ledger.append_records([Record(engine="test", run_id="fast", task_id="g", task_name="g", status="succeeded",
                                  started=fast - timedelta(seconds=1), ended=fast,
                                  outputs=entries_of([hash_file(str(g))])).stored()])


def _passes_and_fails_put_back(base: Path, env: dict[str, str], path: Path, old: str) -> None:
    """``verify-lineage`` passes ``path`` as it is, and fails it with ``old`` put back."""
    current = run_cli("verify", path.name, cwd=base, env=env)
    path.write_text(old)
    restored = run_cli("verify", path.name, cwd=base, env=env)
    assert (current.returncode, restored.returncode) == (0, 1), current.stdout + restored.stdout


@needs_faketime
def test_a_reading_from_a_host_whose_clock_is_behind_does_not_reorder_a_running_reader(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/ledger.db"
    spool, state = str(tmp_path / "spool"), str(tmp_path / "state")  # shared by both "hosts"
    monkeypatch.setenv("LINEAGE_STATE_DIR", state)
    monkeypatch.setenv("LINEAGE_SPOOL", spool)
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": state, "LINEAGE_SPOOL": spool}
    with open_ledger(url, spool=spool, state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records(_write(tmp_path, "v1\n", "write-v1"))
        # The compute node: a long task starts and reads ref.txt (v1), its recorder open.
        started = utcnow()
        read = hash_file(str(tmp_path / "ref.txt"))
        # While it runs, another task on the compute node rewrites ref.txt (v2).
        ledger.append_records(_write(tmp_path, "v2\n", "write-v2"))
    # ... and the user verifies the ledger on the login node, whose clock is 5 minutes behind.
    run_cli("verify", cwd=tmp_path, env=env, prefix=(FAKETIME or "faketime", "-f", "-5m"), check_rc=0)
    # The long task ends; its recorder (a long-lived engine process) reads the account's files.
    capture = TaskCapture(url, engine="test", spool=spool, raise_errors=True)
    try:
        capture.record_now(TaskRun(task_id="long-read", task_name="long-read", status="succeeded",
                                   started=started, ended=utcnow(), inputs=[str(tmp_path / "ref.txt")],
                                   known={str(tmp_path / "ref.txt"): entries_of([read])[str(tmp_path / "ref.txt")]}))
    finally:
        capture.close()
    _passes_and_fails_put_back(tmp_path, env, tmp_path / "ref.txt", "v1\n")


def test_a_record_from_a_fast_clock_does_not_reorder_two_tasks_with_right_clocks(tmp_path):
    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    f, g = tmp_path / "f.txt", tmp_path / "g.txt"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    with open_ledger(url, spool=spool, state_dir=str(tmp_path / "writer")) as ledger:
        f.write_text("v1\n")
        ledger.append_records(_write(tmp_path, "v1\n", "write-v1", f))
        writer_started = utcnow()  # the writer of v2 starts: the fast record is not in the ledger yet
        _append_fast_record(ledger, g)
        # The reader's pre-run check verifies the ledger, the fast record included (how a
        # recorder learns of another host's records: a verified head, which says how many
        # records it holds; a recorder that only shipped records itself knows no count, and
        # its readers are ordered by the time alone, as before).
        ledger.tree_head()
        reader_started = utcnow()  # the reader starts, after the fast record landed, and reads v1
        read = entries_of([hash_file(str(f))])
        f.write_text("v2\n")  # the writer rewrites f.txt and ends
        capture = TaskCapture(url, engine="test", spool=spool, raise_errors=True)
        try:
            capture.record_now(TaskRun(task_id="write-v2", task_name="write-v2", status="succeeded",
                                       started=writer_started, ended=utcnow(), outputs=[str(f)]))
            capture.record_now(TaskRun(task_id="read", task_name="read", status="succeeded", started=reader_started,
                                       ended=utcnow(), inputs=[str(f)], known=read))
        finally:
            capture.close()
    _passes_and_fails_put_back(tmp_path, env, f, "v1\n")


@pytest.mark.parametrize("verified", [
    True,
    pytest.param(False, marks=pytest.mark.xfail(
        strict=True, reason="a recorder that never verified the ledger (it only shipped records) knows no count "
                            "of records seen: its writer is ordered by its moved end (see the module's 3)")),
])
def test_a_record_from_a_fast_clock_does_not_reorder_two_concurrent_writers_with_right_clocks(tmp_path, verified):
    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    f, g = tmp_path / "f.txt", tmp_path / "g.txt"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    with open_ledger(url, spool=spool, state_dir=str(tmp_path / "writer")) as ledger:
        f.write_text("v1\n")
        ledger.append_records(_write(tmp_path, "v1\n", "write-v1", f))
        long_started = utcnow()  # a long writer starts: the fast record is not in the ledger yet
        _append_fast_record(ledger, g)
        if verified:  # as an engine's pre-run check does before the short writer starts
            ledger.tree_head()
        short_started = utcnow()  # a short writer starts after it landed, writes f.txt and ends
        f.write_text("short\n")
        capture = TaskCapture(url, engine="test", spool=spool, raise_errors=True)
        try:
            capture.record_now(TaskRun(task_id="short", task_name="short", status="succeeded",
                                       started=short_started, ended=utcnow(), outputs=[str(f)]))
            f.write_text("long\n")  # the long writer rewrites f.txt last, and ends
            capture.record_now(TaskRun(task_id="long", task_name="long", status="succeeded",
                                       started=long_started, ended=utcnow(), outputs=[str(f)]))
        finally:
            capture.close()
    _passes_and_fails_put_back(tmp_path, env, f, "short\n")
