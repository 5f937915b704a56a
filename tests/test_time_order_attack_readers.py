"""Attacks on the order of *readers* (``lineage_ledger._order``, ``Ledger.last_seen``) after the
twenty-third stop made a reader's order start its own start, never moved by the
``extra["lineage_ledger.after"]`` its recorder stamped (4b3f850).

The argument for that change: a reader ordered too early (its clock behind) falls behind the
writer of the version it read, whose digest is the same bytes. That holds only where the
file held, when the reader read it, what the latest writer *in the ledger's order* left. It
fails where it did not, and a record the reader had seen (``after``) said so:

1. **The ledger's order of two writers is wrong, and a reader after both no longer puts it
   right.** A long writer of ``f.txt`` on a right clock runs while a short writer on a host
   ten minutes fast writes ``f.txt`` and ends; the long one rewrites it last. The two never
   saw each other, so their clocks decide, wrongly (documented: a host whose clock is wrong
   orders its records wrongly against records it never saw). Then a reader on a right clock,
   which had seen both records, reads ``f.txt`` as the long writer left it and writes
   ``g.txt``. Before 4b3f850 that reader counted after both (its start moved past the fast
   record it saw) and ``f.txt`` was compared with what it read; now its start is compared
   with the fast record's end, which is ten minutes on. ``verify-lineage f.txt`` of the right
   file fails (MODIFIED), the fast writer's version put back passes (exit 0), and
   ``verify-lineage g.txt`` passes with ``f.txt`` holding bytes ``g.txt`` was never made from
   (its tree shows ``f.txt`` with the long writer's digest, "OK"). A false pass of a
   downstream output; the code before 4b3f850 got all four right.
2. **A reader of a directory, on a clock behind, after a writer of a file inside it.**
   ``lineage-ledger run -o d`` writes a directory, ``run -o d/x`` rewrites one file in it, and
   ``run -i d`` on a host five minutes behind (it had seen both records, through the hint
   its account's processes leave) reads ``d``. The latest writer of ``d`` is the first task,
   and the reader's unmoved start falls before its end: ``d`` is compared with the first
   task's manifest. ``d/x`` put back to what the first task wrote: ``verify-lineage d``
   passes (exit 0), where before 4b3f850 (and with right clocks) it failed against what the
   reader read. The same holds for a plain file edited by hand (under ``warn``) and then read
   by a task on a clock behind: the version before the edit, put back, passes.
3. **Several readers of a source (not a regression: right clocks, one host; before 4b3f850
   too).** Within the readers, the latest is the one that *ended* last (what the index
   answers), yet each reader's digest is the file as it *started*. A long task reads a source
   (v0); the user edits it (v1); a short task reads v1 and ends; the long one ends. v1 (what
   the last task to read it saw) fails ``verify-lineage`` and a ``strict`` pre-run check; v0
   put back passes both.

1 and 2 needed what the reader had seen *by place*, which times alone cannot tell from the
case 4b3f850 fixed (``tests/test_time_order_attack.py``'s 2: the reader's ``after`` also lies
past the writer's end and its start before it, but the writer landed after the reader
started). Fixed the same stop: a record says how many records its recorder had verified
(``extra["lineage_ledger.seen"]``), and a reader counts after a writer whose place in the ledger
is below that count (``Ledger._later_of``). 3 fixed in the twenty-fourth stop: the look-up of
the latest reader also reads the readers whose order end is at or after the latest one's start
(``Ledger._last_in_role``; tests/test_time_order_latest_in_role.py).

About 6 s.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow
from lineage_ledger._capture.files import entries_of
from lineage_ledger._errors import ArtifactMismatch
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from lineage_ledger._verification.prerun import check_before_run
from tests.conftest import run_cli

FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(FAKETIME is None, reason="faketime (libfaketime) is not installed")


def _env(base: Path, url: str) -> dict[str, str]:
    return {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(base / "state")}


def test_a_reader_after_two_writers_one_on_a_fast_clock_is_the_last_to_see_the_file(tmp_path):
    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    f, g = tmp_path / "f.txt", tmp_path / "g.txt"
    with open_ledger(url, spool=spool, state_dir=str(tmp_path / "writer")) as ledger:
        long_started = utcnow()  # the long writer starts on a right clock: nothing of the fast host seen
        fast = utcnow() + timedelta(minutes=10)
        f.write_text("fast\n")  # the short writer, on a host 10 minutes fast, writes f.txt and ends
        ledger.append_records([Record(engine="test", run_id="fast", task_id="w", task_name="w", status="succeeded",
                                      started=fast - timedelta(seconds=1), ended=fast,
                                      outputs=entries_of([hash_file(str(f))])).stored()])
        f.write_text("long\n")  # the long writer rewrites f.txt last, and ends
        capture = TaskCapture(url, engine="test", spool=spool, raise_errors=True)
        try:
            capture.record_now(TaskRun(task_id="long", task_name="long", status="succeeded",
                                       started=long_started, ended=utcnow(), outputs=[str(f)]))
            # The reader starts once both records are in the ledger (its recorder saw them).
            read_started = utcnow()
            g.write_text(f.read_text())
            capture.record_now(TaskRun(task_id="read", task_name="read", status="succeeded", started=read_started,
                                       ended=utcnow(), inputs=[str(f)], outputs=[str(g)]))
        finally:
            capture.close()
    env = _env(tmp_path, url)
    verdicts = [run_cli("verify", "f.txt", cwd=tmp_path, env=env), run_cli("verify", "g.txt", cwd=tmp_path, env=env)]
    f.write_text("fast\n")  # the fast writer's version put back: g.txt was not made from it
    verdicts += [run_cli("verify", "f.txt", cwd=tmp_path, env=env), run_cli("verify", "g.txt", cwd=tmp_path, env=env)]
    assert [v.returncode for v in verdicts] == [0, 0, 1, 1], "\n".join(v.stdout for v in verdicts)


@needs_faketime
def test_a_directory_put_back_under_a_reader_on_a_clock_behind_fails(tmp_path):
    env = _env(tmp_path, f"sqlite:///{tmp_path}/ledger.db")
    run_cli("run", "-o", "d", "--", "sh", "-c", "mkdir d && echo 1 > d/x && echo 1 > d/y", cwd=tmp_path, env=env,
            check_rc=0)
    run_cli("run", "-o", "d/x", "--", "sh", "-c", "echo 2 > d/x", cwd=tmp_path, env=env, check_rc=0)
    run_cli("run", "-i", "d", "-o", "out.txt", "--", "sh", "-c", "cat d/x d/y > out.txt", cwd=tmp_path, env=env,
            prefix=(FAKETIME or "faketime", "-f", "-5m"), check_rc=0)
    (tmp_path / "d" / "x").write_text("1\n")  # d put back as the first task left it
    restored = run_cli("verify", "d", cwd=tmp_path, env=env)
    assert restored.returncode == 1 and "MODIFIED" in restored.stdout, restored.stdout


def test_the_reader_that_started_last_saw_a_source_last(tmp_path, monkeypatch):
    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    s = tmp_path / "s.txt"
    s.write_text("v0\n")
    long_started = utcnow()  # a long task starts and reads s.txt (v0)
    read = entries_of([hash_file(str(s))])
    s.write_text("v1\n")  # the user edits the source meanwhile
    capture = TaskCapture(url, engine="test", spool=spool, raise_errors=True)
    try:  # a short task reads v1 and ends; then the long one ends
        capture.record_now(TaskRun(task_id="short", task_name="short", status="succeeded", started=utcnow(),
                                   ended=utcnow(), inputs=[str(s)]))
        capture.record_now(TaskRun(task_id="long", task_name="long", status="succeeded", started=long_started,
                                   ended=utcnow(), inputs=[str(s)], known=read))
    finally:
        capture.close()
    env = _env(tmp_path, url)
    current = run_cli("verify", "s.txt", cwd=tmp_path, env=env)
    with open_ledger(url, read_only=True) as ledger:
        refused_now = _refused(ledger, s)
        s.write_text("v0\n")  # the version only the long task read, put back
        refused_old = _refused(ledger, s)
    restored = run_cli("verify", "s.txt", cwd=tmp_path, env=env)
    assert (current.returncode, restored.returncode, refused_now, refused_old) == (0, 1, False, True), \
        current.stdout + restored.stdout


def _refused(ledger, path: Path) -> bool:
    try:
        check_before_run(ledger, [str(path)], "strict")
    except ArtifactMismatch:
        return True
    return False
