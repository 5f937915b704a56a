"""Attacks on the count of records seen (``extra["lineage_ledger.seen"]``, 3f766e7): between a
file's latest writer and latest reader, the one whose count covers the other's place in the
ledger is later (``Ledger._later_of``).

A count is a claim about *this* history: "the first N records of the ledger were there when my
task started". A ledger restored from a backup on purpose (the documented way: put the file
back, ``lineage-ledger reset-trust``) holds fewer records than the count its account's
processes remember, and the places past the backup are then taken again by other records,
ones that landed after the tasks that carry the count had started. ``reset-trust`` forgets the
trusted head, but the hint in the spool directory (``latest-seen``, 3f766e7's fourth field)
keeps the old count, and :func:`~lineage_ledger._ledger.seen.write_hint` only ever raises it.

1. **A long reader after a restore counts as later than a writer that rewrote its file while
   it ran.** The ledger held five records, the hint says 5; it is restored to the first one
   (``f.txt`` v0) and the trust reset. A long task reads ``f.txt`` (v0) and runs on; meanwhile
   a task rewrites ``f.txt`` (v1, place 1) and three others record (places 2-4); the long task
   ends and lands at place 5, carrying the count 5 from the hint: its count "covers" the
   writer's place, so it is the latest to have seen ``f.txt``. ``verify-lineage f.txt`` of the
   right file (v1) fails (MODIFIED), and v0 put back passes (exit 0): a false pass. Before
   3f766e7 (no count: the writer's end against the reader's start) both answers were right.
   Fixed in :mod:`lineage_ledger._ledger.seen`: the hint's count is the one last verified,
   even where lower, and a process takes it only where the trusted state remembers a head,
   and no more than that head's size (after ``reset-trust`` and before the next
   verification, none). Without the "verify again" the same sequence failed too, and passes.

2. **The same, where the restore is noticed while the long task runs.** The ledger restored but
   not yet noticed, a long task reads ``f.txt`` (v0) stamped with the count of the account's
   trusted head (5, of the history before); a task rewrites ``f.txt`` and three others run,
   and their records wait in the spool (the rewrite is found); the user runs ``reset-trust``
   and ``spool ship`` as the message says (places 1-4); the long task ends and lands at 5.
   Same false pass. Nothing in the process could know the count was of another history when
   it stamped it; what can tell is the record's own time: every record below a count was in
   a verified head whose ``latest`` is at least its order end, so a reader whose count covers
   a writer has an ``after`` at or past that writer's order end. Here the writer ended after
   the reader's ``after`` (the old history's latest): the count is of another history.
   Fixed in ``Ledger._later_of``: a count covers only a record whose order end is at or
   before the counting record's ``after``.

3. **A count older than the time beside it.** The hint is one line: a time and a count. An
   append (which knows no count) raised the time and kept the count of an older verified
   head. A host five minutes fast that only ships (its own state, no head remembered: the
   spool shared on an NFS home) rewrites ``f.txt`` (v1); a tool that records nothing
   changes it (v2); a task on a right clock reads v2, stamped with the fast record's end as
   ``after`` and the old count (1), which does not cover the writer's place: it is then
   ordered by its own start, before the fast writer's end, and ``f.txt`` is compared with
   v1. v1 put back passes ``verify-lineage`` (exit 0); before 3f766e7 the reader's start
   moved past the fast record and v1 put back failed (MODIFIED). Fixed in
   :mod:`lineage_ledger._ledger.seen`: the hint is one reading (a later time replaces it whole,
   count and all), and a task is stamped with the count of a reading as recent as its time.

About 7 s at load 10 (some thirty short ``lineage-ledger`` processes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._canonical import format_time, utcnow
from lineage_ledger._order import SEEN_KEY
from tests.conftest import run_cli

FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(FAKETIME is None, reason="faketime (libfaketime) is not installed")


@contextlib.contextmanager
def _long_reader(base: Path, env: dict[str, str]) -> Iterator[None]:
    """``lineage-ledger run -i f.txt -o g.txt``, a long task: f.txt's digest is taken before the
    command starts, which copies it to g.txt and runs on until the block ends; it must succeed."""
    script = Path(sys.executable).parent / "lineage-ledger"
    long_env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")} | env
    reader = subprocess.Popen(
        [str(script), "run", "-i", "f.txt", "-o", "g.txt", "--", "sh", "-c",
         "cp f.txt g.txt; while [ ! -e go ]; do sleep 0.05; done"],
        cwd=base, env=long_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (base / "g.txt").exists():
            assert reader.poll() is None and time.monotonic() < deadline, reader.communicate()
            time.sleep(0.05)
        yield
        (base / "go").touch()
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, (out, err)


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of an SQLite ledger (what a backup, and putting it back, do)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def _write(tmp_path: Path, env: dict[str, str], path: str, text: str) -> None:
    run_cli("run", "-o", path, "--", "sh", "-c", f"printf '{text}\\n' > {path}", cwd=tmp_path, env=env, check_rc=0)


def test_a_count_from_before_a_restore_does_not_order_a_reader_after_a_later_writer(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"),
           "LINEAGE_SPOOL": str(tmp_path / "spool")}
    _write(tmp_path, env, "f.txt", "v0")
    run_cli("verify", cwd=tmp_path, env=env, check_rc=0)  # the account verifies its ledger, as it does
    _copy_database(tmp_path / "ledger.db", tmp_path / "backup.db")  # one record: f.txt v0
    for n in range(4):
        _write(tmp_path, env, f"h{n}.txt", f"h{n}")
    hint = next((tmp_path / "spool").rglob("latest-seen")).read_text().split()
    remembered = int(hint[3])
    assert remembered >= 4, hint  # the hint carries the count of the five-record ledger

    # Restored on purpose, as docs/guide.md says: the file put back, then reset-trust.
    _copy_database(tmp_path / "backup.db", tmp_path / "ledger.db")
    run_cli("reset-trust", cwd=tmp_path, env=env, check_rc=0)
    run_cli("verify", cwd=tmp_path, env=env, check_rc=0)  # "and verify again": one record, trusted

    # A long task reads f.txt (v0: its digest is taken before the command starts) and runs on.
    with _long_reader(tmp_path, env):
        _write(tmp_path, env, "f.txt", "v1")  # place 1: the real last write of f.txt
        for n in range(remembered - 2):  # places 2 .. remembered-1: the long reader lands at `remembered`
            _write(tmp_path, env, f"x{n}.txt", f"x{n}")

    with open_ledger(url, spool=str(tmp_path / "other-spool"), state_dir=str(tmp_path / "other-state")) as ledger:
        cli = [r.record for r in ledger.recent(20) if r.record.engine == "cli"]
    long_task = next(r for r in cli if r.inputs)

    right = run_cli("verify", "f.txt", cwd=tmp_path, env=env)
    (tmp_path / "f.txt").write_text("v0\n")
    put_back = run_cli("verify", "f.txt", cwd=tmp_path, env=env)
    assert (right.returncode, put_back.returncode) == (0, 1), (right.stdout, put_back.stdout)
    # One record was in the ledger when it started (f.txt v0): the hint's count of the history
    # before the restore (`remembered`) covered the writer's place.
    assert long_task.extra.get(SEEN_KEY, 1) == 1, (remembered, long_task.extra)


def test_a_count_stamped_before_a_restore_was_noticed_does_not_order_a_reader_after_a_later_writer(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"),
           "LINEAGE_SPOOL": str(tmp_path / "spool")}
    _write(tmp_path, env, "f.txt", "v0")
    run_cli("verify", cwd=tmp_path, env=env, check_rc=0)
    _copy_database(tmp_path / "ledger.db", tmp_path / "backup.db")  # one record: f.txt v0
    for n in range(4):
        _write(tmp_path, env, f"h{n}.txt", f"h{n}")
    _copy_database(tmp_path / "backup.db", tmp_path / "ledger.db")  # restored; the account has not noticed yet

    # A long task reads f.txt (v0): stamped with the count its account's trusted head says (5).
    with _long_reader(tmp_path, env):
        # Meanwhile f.txt is rewritten (v1) and three more tasks record: the ledger's rewrite is
        # found and their records wait in the spool (exit 1), as docs/guide.md says; the user
        # then does what the message says: reset-trust, spool ship (places 1-4).
        refused = [run_cli("run", "-o", "f.txt", "--", "sh", "-c", "printf 'v1\\n' > f.txt", cwd=tmp_path, env=env)]
        refused += [run_cli("run", "-o", f"x{n}.txt", "--", "sh", "-c", f"printf x > x{n}.txt", cwd=tmp_path, env=env)
                    for n in range(3)]
        assert [r.returncode for r in refused] == [1] * 4, [r.stderr for r in refused]
        run_cli("reset-trust", cwd=tmp_path, env=env, check_rc=0)
        run_cli("spool", "ship", cwd=tmp_path, env=env, check_rc=0)
    # The long task ended and landed at place 5, its count 5 "covering" place 1.

    right = run_cli("verify", "f.txt", cwd=tmp_path, env=env)
    (tmp_path / "f.txt").write_text("v0\n")
    put_back = run_cli("verify", "f.txt", cwd=tmp_path, env=env)
    assert (right.returncode, put_back.returncode) == (0, 1), (right.stdout, put_back.stdout)


@needs_faketime
def test_a_count_older_than_the_time_beside_it_does_not_put_a_reader_behind_a_writer_it_saw(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"),
           "LINEAGE_SPOOL": str(tmp_path / "spool")}
    node = {**env, "LINEAGE_STATE_DIR": str(tmp_path / "node-state")}  # a host's own state, the spool shared
    _write(tmp_path, env, "f.txt", "v0")
    run_cli("verify", cwd=tmp_path, env=env, check_rc=0)  # the hint: the time of f.txt v0, count 1
    # A host five minutes fast that only ships (no head remembered there) rewrites f.txt: its
    # append raises the hint's time to its end, and knows no count.
    run_cli("run", "-o", "f.txt", "--", "sh", "-c", "printf 'v1\\n' > f.txt", cwd=tmp_path, env=node,
            prefix=(FAKETIME or "faketime", "-f", "+5m"), check_rc=0)
    (tmp_path / "f.txt").write_text("v2\n")  # a tool that records nothing changes it
    # A task on a right clock reads v2, after the fast writer's record (its hint says so).
    run_cli("run", "-i", "f.txt", "-o", "g.txt", "--", "cp", "f.txt", "g.txt", cwd=tmp_path, env=env, check_rc=0)
    (tmp_path / "f.txt").write_text("v1\n")  # the fast writer's version put back
    put_back = run_cli("verify", "f.txt", cwd=tmp_path, env=env)
    assert put_back.returncode == 1 and "MODIFIED" in put_back.stdout, put_back.stdout


@needs_faketime
def test_reset_trust_forgets_the_time_a_record_from_a_fast_clock_left_before_the_restore(tmp_path):
    """4. The hint's *time* outlived a restore too (its count was ignored without a remembered
    head): a record from a clock ten minutes fast, in the history the backup does not hold,
    left its end in the hint; after ``reset-trust`` (before any verification: no count) a task
    that read ``f.txt`` was stamped past it, so the write of ``f.txt`` by another host's task after it counted as earlier, and the
    right file failed while the version read put back passed. ``reset-trust`` now removes the
    hint of the default spool."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"),
           "LINEAGE_SPOOL": str(tmp_path / "spool")}
    _write(tmp_path, env, "f.txt", "v0")
    run_cli("verify", cwd=tmp_path, env=env, check_rc=0)
    _copy_database(tmp_path / "ledger.db", tmp_path / "backup.db")
    run_cli("run", "-o", "fast.txt", "--", "sh", "-c", "echo fast > fast.txt", cwd=tmp_path, env=env,
            prefix=(FAKETIME or "faketime", "-f", "+10m"), check_rc=0)
    [hint] = (tmp_path / "spool").rglob("latest-seen")
    assert hint.read_text().split()[0] > format_time(utcnow() + timedelta(minutes=5)), hint.read_text()

    _copy_database(tmp_path / "backup.db", tmp_path / "ledger.db")  # restored on purpose
    run_cli("reset-trust", cwd=tmp_path, env=env, check_rc=0)
    assert not hint.exists()  # and no verification since: no head remembered, no count
    run_cli("run", "-i", "f.txt", "-o", "g.txt", "--", "cp", "f.txt", "g.txt", cwd=tmp_path, env=env, check_rc=0)
    other = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "other-state"),
             "LINEAGE_SPOOL": str(tmp_path / "other-spool")}  # another host's task: no hint of ours
    _write(tmp_path, other, "f.txt", "v1")

    right = run_cli("verify", "f.txt", cwd=tmp_path, env=env)
    (tmp_path / "f.txt").write_text("v0\n")
    put_back = run_cli("verify", "f.txt", cwd=tmp_path, env=env)
    assert (right.returncode, put_back.returncode) == (0, 1), (right.stdout, put_back.stdout)
