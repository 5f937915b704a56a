"""The latest record to read or to write a file, when the one that ended last did not see it
last (``Ledger._last_in_role``): the index answers the record that ended last, and the records
that ended at or after the time that one saw the file are then read, newest end first, each
proved and checked against its index row.

A source edited while a long task read it: a short task that started after the edit read the
new version and ended first. The long task ended last; the short one saw the file last, so the
file as it is verifies and the version only the long task read, put back, does not
(tests/test_time_order_attack_readers.py). Here: the rows read past the latest are checked as
the latest is (an end time in the index that its record does not say is a failure, exit 1);
a row deleted there leaves the answer the latest gives, which the audit then finds; and a
file read by many short tasks during a long one is answered from a few rows.

About 10 s.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow
from lineage_ledger._capture.files import entries_of
from lineage_ledger._files.hashing import hash_file
from tests.conftest import run_cli


def _source_edited_while_a_long_task_read_it(base: Path, shorts: int = 1) -> tuple[str, Path]:
    """``s.txt``: read as v0 by an early task and by a long one, edited to v1, then read by
    ``shorts`` short tasks that end before the long one does. Returns the ledger's URL."""
    url, spool = f"sqlite:///{base}/ledger.db", str(base / "spool")
    s = base / "s.txt"
    s.write_text("v0\n")
    early = utcnow() - timedelta(seconds=5)
    long_started = utcnow()
    read = entries_of([hash_file(str(s))])
    s.write_text("v1\n")
    capture = TaskCapture(url, engine="test", spool=spool, raise_errors=True)
    try:
        capture.record_now(TaskRun(task_id="early", task_name="early", status="succeeded", started=early,
                                   ended=early + timedelta(seconds=1), inputs=[str(s)], known=read))
        for i in range(shorts):
            capture.record_now(TaskRun(task_id=f"short-{i}", task_name="short", status="succeeded",
                                       started=utcnow(), ended=utcnow(), inputs=[str(s)]))
        capture.record_now(TaskRun(task_id="long", task_name="long", status="succeeded", started=long_started,
                                   ended=utcnow(), inputs=[str(s)], known=read))
    finally:
        capture.close()
    return url, s


def last_seen_counting(url: str, path: str, monkeypatch) -> tuple:
    """``last_seen(path)`` of a read-only ledger at ``url``, and (offset, limit, rows) of each
    look-up past the latest by end (``find_ended_since``) it made."""
    asked: list[tuple[int, int, int]] = []
    with open_ledger(url, read_only=True) as ledger:
        original = type(ledger.backend).find_ended_since

        def counting(self, role, path, since, offset, limit):
            rows = original(self, role, path, since, offset, limit)
            asked.append((offset, limit, len(rows)))
            return rows

        monkeypatch.setattr(type(ledger.backend), "find_ended_since", counting)
        return ledger.last_seen(path), asked


def _env(base: Path, url: str) -> dict[str, str]:
    return {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(base / "state")}


def _reader_rows(base: Path) -> dict[str, tuple[int, str]]:
    """task id -> (seq, ended) of the index rows that say a task read ``s.txt``."""
    with open_ledger(f"sqlite:///{base}/ledger.db", read_only=True) as ledger:
        by_id = {entry.id: entry.record.task_id for entry in ledger.consumers(str(base / "s.txt"))}
    db = sqlite3.connect(base / "ledger.db")
    try:
        rows = db.execute("SELECT a.seq, a.ended, r.id FROM ll_artifacts a JOIN ll_records r ON r.seq = a.seq"
                          " WHERE a.path = ? AND a.role = 0", (str(base / "s.txt"),)).fetchall()
    finally:
        db.close()
    return {by_id[record_id]: (seq, ended) for seq, ended, record_id in rows}


def _edit(base: Path, statement: str, params: tuple) -> None:
    db = sqlite3.connect(base / "ledger.db")
    try:
        db.execute(statement, params)
        db.commit()
    finally:
        db.close()


def test_the_short_reader_that_started_after_the_edit_saw_the_source_last(tmp_path):
    url, s = _source_edited_while_a_long_task_read_it(tmp_path)
    env = _env(tmp_path, url)
    current = run_cli("verify", "s.txt", cwd=tmp_path, env=env)
    s.write_text("v0\n")
    restored = run_cli("verify", "s.txt", cwd=tmp_path, env=env)
    assert (current.returncode, restored.returncode) == (0, 1), current.stdout + restored.stdout


def test_an_end_time_the_index_moved_into_the_range_read_past_the_latest_fails(tmp_path):
    """The early reader's row claims it ended just before the long one: it is read past the
    latest, and its record says otherwise: exit 1, naming the index."""
    url, _s = _source_edited_while_a_long_task_read_it(tmp_path)
    rows = _reader_rows(tmp_path)
    long_ended = rows["long"][1]
    forged = long_ended[:-2] + ("00" if long_ended[-2:] != "00" else "01")  # within the same second
    assert forged < long_ended
    _edit(tmp_path, "UPDATE ll_artifacts SET ended = ? WHERE seq = ? AND role = 0", (forged, rows["early"][0]))
    result = run_cli("verify", "s.txt", cwd=tmp_path, env=_env(tmp_path, url))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "index" in (result.stdout + result.stderr).lower(), result.stdout + result.stderr


def test_a_row_deleted_past_the_latest_leaves_the_latest_s_answer_and_the_audit_finds_it(tmp_path):
    url, s = _source_edited_while_a_long_task_read_it(tmp_path)
    env = _env(tmp_path, url)
    first = run_cli("verify", cwd=tmp_path, env=env)  # the audit: its head is remembered
    assert first.returncode == 0, first.stdout + first.stderr
    rows = _reader_rows(tmp_path)
    _edit(tmp_path, "DELETE FROM ll_artifacts WHERE seq = ? AND role = 0", (rows["short-0"][0],))
    s.write_text("v0\n")  # the version the long task read, which the latest by end vouches for
    targeted = run_cli("verify", "s.txt", cwd=tmp_path, env=env)
    audit = run_cli("verify", cwd=tmp_path, env=env)
    assert targeted.returncode == 0, targeted.stdout + targeted.stderr  # the answer before this lookup existed
    assert audit.returncode == 1 and "index" in audit.stdout.lower(), audit.stdout + audit.stderr


def test_many_short_readers_during_a_long_one_are_read_a_page_or_two_at_most(tmp_path, monkeypatch):
    url, s = _source_edited_while_a_long_task_read_it(tmp_path, shorts=40)
    from lineage_ledger._ledger import proved

    found, asked = last_seen_counting(url, str(s), monkeypatch)
    assert found is not None and found[1] == "in" and found[0].record.task_id == "short-39", found
    # The newest short reader is the second row (after the long one): its start is past every
    # other's end, so the first page settles it.
    assert [(offset, limit) for offset, limit, _rows in asked] == [(0, proved._SINCE_PAGE)], asked


def test_readers_that_all_started_and_ended_at_one_time_are_not_read_past_the_latest(tmp_path, monkeypatch):
    """A scatter step's records, stamped with one time (bench/bench_verify_files.py's): every
    reader of the source ended when the latest one saw it, but none later in the ledger, so
    none is read past the first page."""
    from lineage_ledger import Record
    from lineage_ledger._ledger import proved

    source = tmp_path / "input.txt"
    source.write_text("source")
    read = entries_of([hash_file(str(source))])
    now = utcnow()
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([Record(engine="bench", run_id="r", task_id=f"t{i}", task_name="split",
                                      status="succeeded", started=now, ended=now, inputs=read).stored()
                               for i in range(200)])
    found, asked = last_seen_counting(url, str(source), monkeypatch)
    assert found is not None and found[0].record.task_id == "t199", found
    assert [(offset, limit) for offset, limit, _rows in asked] == [(0, proved._SINCE_PAGE)], asked
