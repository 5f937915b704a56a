"""Attacks on two changes of the twenty-fifth stop (helper-149).

1. The count of records an append leaves (``Backend.append`` returns it, ``Ledger.append_records``
   notes it as a reading and writes it into the ``latest-seen`` hint).
2. Paths behind a symbolic link pointed at another folder (``Ledger._through_link``).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
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


def _filler(base: Path, count: int) -> list:
    """``count`` records of unrelated files, on a right clock."""
    now = utcnow()
    records = []
    for n in range(count):
        path = base / "filler" / f"{n}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"{n}\n")
        records.append(Record(engine="test", run_id="filler", task_id=str(n), task_name="filler",
                              status="succeeded", started=now - timedelta(milliseconds=5), ended=now,
                              outputs=entries_of([hash_file(str(path))])).stored())
    return records


@needs_faketime
def test_a_hint_count_capped_by_an_older_remembered_head_does_not_order_a_reader_by_its_start(tmp_path):
    spool = str(tmp_path / "spool")
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"), "LINEAGE_SPOOL": spool}
    run_cli("run", "-o", "first.txt", "--", "sh", "-c", "echo 0 > first.txt", cwd=tmp_path, env=env, check_rc=0)
    run_cli("verify", cwd=tmp_path, env=env, check_rc=0)  # this account remembers a head
    # Another of the account's processes ships many blocks since (one record each) and never
    # verifies: the remembered head falls behind.
    with open_ledger(url, spool=spool, state_dir=str(tmp_path / "shipper")) as ledger:
        ledger.append_records(_filler(tmp_path, 70), block_size=1)
    run_cli("run", "-o", "d", "--", "sh", "-c", "mkdir d && echo 1 > d/x && echo 1 > d/y", cwd=tmp_path, env=env,
            check_rc=0)
    run_cli("run", "-o", "d/x", "--", "sh", "-c", "echo 2 > d/x", cwd=tmp_path, env=env, check_rc=0)
    # A reader of d on a host 5 minutes behind, which saw both records through the hint.
    run_cli("run", "-i", "d", "-o", "out.txt", "--", "sh", "-c", "cat d/x d/y > out.txt", cwd=tmp_path, env=env,
            prefix=(FAKETIME or "faketime", "-f", "-5m"), check_rc=0)
    (tmp_path / "d" / "x").write_text("1\n")  # d put back as the first task left it
    restored = run_cli("verify", "d", cwd=tmp_path, env=env)
    assert restored.returncode == 1 and "MODIFIED" in restored.stdout, restored.stdout


def _record_at(clock_ahead: timedelta, name: str, path: Path, text: str) -> Record:
    """A record of ``path`` (written now with ``text``) from a host whose clock is ``clock_ahead``."""
    path.write_text(text)
    at = utcnow() + clock_ahead
    return Record(engine="test", run_id=name, task_id=name, task_name=name, status="succeeded",
                  started=at - timedelta(seconds=1), ended=at, outputs=entries_of([hash_file(str(path))]))


@pytest.mark.xfail(strict=True, reason=(
    "new with the append's count (passed before it): a shipping-only recorder's count, taken at its append, is "
    "older than the time it came with (a record from a host 20 minutes fast); the reader, ordered by its own start, "
    "falls before a writer on a host 10 minutes fast that landed after the append and before the reader started: "
    "f.txt as the long writer left it fails, the fast writer's version put back passes, and g.txt passes with it"))
def test_an_append_count_older_than_its_time_does_not_put_a_reader_before_a_writer_it_saw(tmp_path):
    """A process that only ships records (no verification) appends a record from a host 20
    minutes fast (a spool of that host replayed; the account's spool and state on NFS): its
    reading is that record's time with the count through it. A writer of ``f.txt`` on a host
    10 minutes fast lands after, and a long writer on a right clock rewrites ``f.txt`` last
    (the two never saw each other: the fast one is ordered last, as documented). Then the
    process's next task starts, reads ``f.txt`` (the long writer's) and writes ``g.txt``. Its
    ``after`` (20 minutes on) says it saw both writers; its count covers neither. Before the
    append's count, a shipping-only recorder's reader had no count and was ordered by its moved
    start (right). (A recorder that verifies keeps its count fresh after each append of its
    own, ``Ledger._remember_appended``; where the other writers ship from other processes it
    would meet the same.)"""
    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    f, g = tmp_path / "f.txt", tmp_path / "g.txt"
    with open_ledger(url, spool=spool, state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records([_record_at(timedelta(0), "v1", f, "v1\n").stored()])
        long_started = utcnow()  # the long writer starts
        ledger.append_records([_record_at(timedelta(minutes=20), "x", tmp_path / "h.txt", "h\n").stored()])
        fast = _record_at(timedelta(minutes=10), "fast", f, "fast\n")
        ledger.append_records([fast.stored()])
        long = replace(_record_at(timedelta(0), "long", f, "long\n"), started=long_started)  # f.txt rewritten last
        ledger.append_records([long.stored()])
        capture = TaskCapture(url, engine="test", spool=spool, raise_errors=True)
        try:
            read_started = utcnow()  # every record above is in the ledger
            g.write_text(f.read_text())
            capture.record_now(TaskRun(task_id="read", task_name="read", status="succeeded", started=read_started,
                                       ended=utcnow(), inputs=[str(f)], outputs=[str(g)]))
        finally:
            capture.close()
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    verdicts = [run_cli("verify", "f.txt", cwd=tmp_path, env=env), run_cli("verify", "g.txt", cwd=tmp_path, env=env)]
    f.write_text("fast\n")  # the fast writer's version put back: g.txt was not made from it
    verdicts += [run_cli("verify", "f.txt", cwd=tmp_path, env=env), run_cli("verify", "g.txt", cwd=tmp_path, env=env)]
    assert [v.returncode for v in verdicts] == [0, 0, 1, 1], "\n".join(v.stdout for v in verdicts)
