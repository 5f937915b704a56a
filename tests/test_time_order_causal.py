"""The ledger's own order (``lineage_ledger._order``) kept everywhere a record's end time is.

A record whose recorder had seen another in the ledger before its task started says so
(``extra["lineage_ledger.after"]``), and its end in the ledger's order is then just after the
latest it saw. tests/test_time_order_skew.py shows the answer it fixes; here, that the same
order is what the index keeps, what the audit and the targeted reads compare, what
``repair-index`` rebuilds, what the trusted head remembers, and that an index row edited back to
the record's own end time is caught. About 20 s.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lineage_ledger import open_ledger, utcnow
from lineage_ledger._canonical import format_time
from lineage_ledger._capture.files import entries_of
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from lineage_ledger._order import AFTER_KEY, SEEN_KEY, just_after, order_end, seen_of
from tests.conftest import run_cli

FAST = timedelta(minutes=10)


def _write(base: Path, text: str, when, extra=None, run_id="run") -> Record:
    out = base / "out.txt"
    out.write_text(text)
    return Record(engine="test", run_id=run_id, task_id="write", task_name="write", status="succeeded",
                  started=when, ended=when + timedelta(seconds=1), outputs=entries_of([hash_file(str(out))]),
                  extra=extra or {})


@pytest.fixture
def skewed(tmp_path):
    """A ledger where a fast host wrote ``out.txt`` v1 and a host that had seen its record
    then wrote v2 (its record says so); ``out.txt`` as v2 left it. (url, env, v2's record)"""
    url = f"sqlite:///{tmp_path}/ledger.db"
    fast = _write(tmp_path, "v1\n", utcnow() + FAST, run_id="fast")
    later = _write(tmp_path, "v2\n", utcnow(), {AFTER_KEY: fast.order_end_text}, run_id="later")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records([fast.stored()])
        ledger.append_records([later.stored()])
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    return url, env, later


def test_the_index_keeps_the_end_in_the_ledgers_order_and_the_audit_agrees(tmp_path, skewed):
    url, env, later = skewed
    assert later.order_end_text == just_after(later.extra[AFTER_KEY]) > later.ended_text
    with sqlite3.connect(f"{tmp_path}/ledger.db") as conn:
        kept = conn.execute("SELECT ended FROM ll_artifacts WHERE seq = 1").fetchone()[0]
    assert kept == later.order_end_text
    audit = run_cli("verify", "--json", cwd=tmp_path, env=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    head = json.loads(next((tmp_path / "state").rglob("head.json")).read_text())
    assert head["latest"] == later.order_end_text  # the trusted head remembers the latest it verified
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 0


@pytest.mark.parametrize("workers", [{"LINEAGE_AUDIT_WORKERS": "1"},
                                     {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "1",
                                      "LINEAGE_AUDIT_WORKERS": "2"}], ids=["in-process", "workers"])
def test_an_index_row_edited_back_to_the_records_own_end_is_caught(tmp_path, skewed, workers):
    """The row says the task ended when its clock said: the index would then answer v1's
    record as the latest. The audit names the row, and the targeted read refuses it."""
    url, env, later = skewed
    with sqlite3.connect(f"{tmp_path}/ledger.db") as conn:
        conn.execute("UPDATE ll_artifacts SET ended = ? WHERE seq = 1", (later.ended_text,))
    audit = run_cli("verify", cwd=tmp_path, env={**env, **workers})
    assert audit.returncode == 1 and "index" in audit.stdout.lower(), audit.stdout + audit.stderr
    repaired = run_cli("repair-index", cwd=tmp_path, env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    with sqlite3.connect(f"{tmp_path}/ledger.db") as conn:
        assert conn.execute("SELECT ended FROM ll_artifacts WHERE seq = 1").fetchone()[0] == later.order_end_text
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "out.txt").write_text("v1\n")
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 1


def test_a_targeted_read_refuses_the_edited_row(tmp_path, skewed):
    url, env, later = skewed
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 0  # the state: verified once
    with sqlite3.connect(f"{tmp_path}/ledger.db") as conn:
        conn.execute("UPDATE ll_artifacts SET ended = ? WHERE seq = 1", (later.ended_text,))
    refused = run_cli("verify", "out.txt", cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "index" in refused.stdout.lower(), refused.stdout + refused.stderr


def test_an_adoption_after_a_fast_clocks_record_is_the_latest(tmp_path):
    """``adopt`` accepts a file as it is now; a record from a clock a year ahead stayed "the
    latest" past it, and the adopted file kept failing for that year."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records([_write(tmp_path, "v1\n", utcnow() + timedelta(days=365)).stored()])
    (tmp_path / "out.txt").write_text("fixed by hand\n")
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 1
    adopted = run_cli("adopt", "out.txt", cwd=tmp_path, env=env)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 0


_TIMES = st.datetimes(min_value=utcnow().replace(year=2000, tzinfo=None),
                      max_value=utcnow().replace(year=2100, tzinfo=None)).map(
    lambda moment: format_time(moment.replace(tzinfo=utcnow().tzinfo)))


@given(ended=_TIMES, after=_TIMES | st.none() | st.integers() | st.text(max_size=30))
def test_the_end_in_the_ledgers_order(ended, after):
    """Never before the record's own end; after what it saw where it saw a time; else its own."""
    moved = order_end(ended, {} if after is None else {AFTER_KEY: after})
    assert moved >= ended
    if isinstance(after, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", after, re.ASCII):
        assert moved == max(ended, just_after(after)) > after
    else:
        assert moved == ended


def test_run_after_a_verification_in_another_process_is_later(tmp_path):
    """The account verified the ledger (its trusted state remembers the fast record), but has
    never recorded into it (no spool, no hint): ``lineage-ledger run`` still starts from what
    the state remembers, and its output is the latest whatever the fast host's clock said."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"),
           "LINEAGE_SPOOL": str(tmp_path / "fresh-spool")}
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records([_write(tmp_path, "v1\n", utcnow() + FAST).stored()])
    assert run_cli("verify", cwd=tmp_path, env=env).returncode == 0
    assert not (tmp_path / "fresh-spool").exists()
    run_cli("run", "-o", "out.txt", "--", "sh", "-c", "printf 'v2\\n' > out.txt", cwd=tmp_path, env=env, check_rc=0)
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "out.txt").write_text("v1\n")
    restored = run_cli("verify", "out.txt", cwd=tmp_path, env=env)
    assert restored.returncode == 1 and "MODIFIED" in restored.stdout, restored.stdout


def test_a_child_forked_while_the_readings_lock_was_held_still_records():
    """Airflow's scheduler forks its task processes while its recorder's worker may hold the
    readings' lock: the child must not wait on a lock no thread of it will release."""
    import os
    import signal
    import time

    from lineage_ledger._ledger import seen

    seen.note_seen("fork-test", format_time(utcnow()))
    with seen._lock:
        pid = os.fork()
        if pid == 0:  # the child: one look-up, then out, whatever happens
            try:
                os._exit(0 if seen.seen_before("fork-test", utcnow() + timedelta(seconds=1)) else 3)
            finally:
                os._exit(4)
    deadline = time.monotonic() + 30  # the child's work is one look-up; a busy machine's margin
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child waited on the readings' lock")


@pytest.mark.parametrize("value", ["2026-12-32T00:00:00.000000Z", "2026-02-30T12:00:00.000000Z",
                                   "2026-12-06T24:00:00.000000Z"])
def test_a_time_the_calendar_does_not_have_is_ignored(value):
    """The pattern alone let such a value through: the index and the trusted head held it."""
    assert order_end("2026-12-06T12:00:00.000000Z", {AFTER_KEY: value}) == "2026-12-06T12:00:00.000000Z"


def test_run_after_a_verification_says_how_many_records_it_had_seen(tmp_path):
    """The count beside the time (``lineage_ledger.seen``): the trusted state's head gives it to
    ``lineage-ledger run``, and the hint the run leaves carries it to the account's next process."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"),
           "LINEAGE_SPOOL": str(tmp_path / "spool")}
    with open_ledger(url, spool=str(tmp_path / "other-spool"), state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records([_write(tmp_path, "v1\n", utcnow(), run_id="a").stored()])
        ledger.append_records([_write(tmp_path, "v2\n", utcnow(), run_id="b").stored()])
    assert run_cli("verify", cwd=tmp_path, env=env).returncode == 0
    run_cli("run", "-o", "out.txt", "--", "sh", "-c", "printf 'v3\\n' > out.txt", cwd=tmp_path, env=env, check_rc=0)
    run_cli("run", "-o", "out.txt", "--", "sh", "-c", "printf 'v4\\n' > out.txt", cwd=tmp_path, env=env, check_rc=0)
    with open_ledger(url, spool=str(tmp_path / "other-spool"), state_dir=str(tmp_path / "writer")) as ledger:
        runs = [r.record for r in ledger.recent(10) if r.record.engine == "cli"]
    assert sorted(r.extra[SEEN_KEY] for r in runs) == [2, 3]  # the second saw the first, shipped and verified
    hint = next((tmp_path / "spool").rglob("latest-seen")).read_text().split()
    assert len(hint) == 4 and int(hint[3]) >= 3, hint


def test_a_count_past_the_records_own_place_is_no_count(tmp_path):
    """A reader whose record claims to have seen records after its own place (forged, or a
    recorder's error) gains nothing by it: a later writer of its file, whose end the clocks put
    after the reader's start, is still the last to have seen the file."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    now = utcnow()
    first = _write(tmp_path, "v1\n", now - timedelta(seconds=30), run_id="first")
    read = Record(engine="test", run_id="reader", task_id="read", task_name="read", status="succeeded",
                  started=now - timedelta(seconds=20), ended=now - timedelta(seconds=19),
                  inputs=entries_of([hash_file(str(tmp_path / "out.txt"))]), extra={SEEN_KEY: 10**6})
    second = _write(tmp_path, "v2\n", now - timedelta(seconds=10), run_id="second")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
        for record in (first, read, second):
            ledger.append_records([record.stored()])
    assert run_cli("verify", "out.txt", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "out.txt").write_text("v1\n")
    restored = run_cli("verify", "out.txt", cwd=tmp_path, env=env)
    assert restored.returncode == 1 and "MODIFIED" in restored.stdout, restored.stdout


@given(st.one_of(st.integers(-5, 12), st.booleans(), st.text(max_size=3), st.none(), st.floats(0, 12)), st.integers(0, 10))
def test_a_count_is_an_integer_above_zero_and_at_most_the_records_place(value, leaf):
    found = seen_of({SEEN_KEY: value}, leaf)
    assert found == (value if type(value) is int and 0 < value <= leaf else None)
