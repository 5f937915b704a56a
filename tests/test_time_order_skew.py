"""Which record saw a file last, when the clocks that timed the tasks disagree.

The ledger answers "the last record that read or wrote PATH" (what ``verify-lineage`` and
the plugins' pre-run checks compare a file with) by the tasks' end times, ledger order
breaking ties (``docs/design-notes.md``, Verification semantics): a crashed process's spool,
replayed later, must not pose as the newest observation of a file. End times come from the
clock of whatever host ran the recorder, so two hosts whose clocks differ, or one clock that
NTP stepped back between two tasks, order the tasks wrongly. Found, end to end:

1. A host whose clock is 10 minutes fast writes ``out.txt`` (v1); a minute later, by the
   wall, a host with a right clock writes it again (v2), and its record reaches the ledger
   after the first. ``verify-lineage out.txt`` compares the file with v1: the correct file
   (v2) is reported MODIFIED (exit 1), and the file put back to the old version v1 passes,
   "verified", exit 0. The second is a check that passes when it should fail: a restore of
   an old backup, or a stale copy from another machine, goes unnoticed, and a ``strict``
   pre-run check lets a workflow run on it.
2. The same on one host whose clock NTP stepped back two minutes between the two tasks.

The clocks are real: the CLI runs under ``faketime`` (libfaketime) where it is installed,
and the Python API records the same tasks with the end times such hosts would give them,
into SQLite and into a PostgreSQL server the tests start.

Fixed by the ledger's own order (``lineage_ledger._order``): a recorder notes, before a task
starts, the latest record it has seen in the ledger (a verified head, its own shipments, the
hint its account's earlier processes left), and the record says it started after that. A
record that had seen another is later than it, whatever the clocks say; between records that
could not have seen each other the clocks still decide (tests/test_time_order_late_ship.py).

About 10 s (the PostgreSQL case starts a server once per session).
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow
from lineage_ledger._capture.files import entries_of, manifest_records_of
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from lineage_ledger._order import AFTER_KEY
from tests.conftest import run_cli

FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(FAKETIME is None, reason="faketime (libfaketime) is not installed")


def _run(base: Path, env: dict[str, str], text: str, clock: str | None) -> None:
    """``lineage-ledger run -o out.txt`` writing ``text``, under a clock ``clock`` away from
    the system's (faketime's offset, ``+10m``), or the system's own."""
    prefix: tuple[str, ...] = (FAKETIME or "faketime", "-f", clock) if clock else ()
    run_cli("run", "-o", "out.txt", "--", "sh", "-c", f"printf '{text}' > out.txt", cwd=base, env=env,
            prefix=prefix, check_rc=0)


def _verify(base: Path, env: dict[str, str]):
    return run_cli("verify", "out.txt", cwd=base, env=env)


@needs_faketime
@pytest.mark.parametrize("first_clock, second_clock", [
    pytest.param("+10m", None, id="first-host-10-minutes-fast"),
    pytest.param(None, "-2m", id="clock-stepped-back-2-minutes"),
])
def test_an_old_version_put_back_fails_whatever_the_clocks(tmp_path, first_clock, second_clock):
    """Two ``lineage-ledger run``s write ``out.txt``, one after the other, the first under a
    clock ahead of the second's. The file as the second run left it verifies; put back to
    the first run's version, it fails (exit 1, MODIFIED). Before the fix: the other way round."""
    env = {"LINEAGE_LEDGER_URL": f"sqlite:///{tmp_path}/ledger.db", "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    _run(tmp_path, env, "v1\\n", first_clock)
    _run(tmp_path, env, "v2\\n", second_clock)
    log = run_cli("log", cwd=tmp_path, env=env, check_rc=0).stdout
    assert log.count("-> out.txt") == 2, log
    # The file the second run wrote is the file the ledger last saw written.
    current = _verify(tmp_path, env)
    (tmp_path / "out.txt").write_text("v1\n")
    restored = _verify(tmp_path, env)
    assert (current.returncode, restored.returncode) == (0, 1), (current.stdout, restored.stdout)
    assert "MODIFIED" in restored.stdout, restored.stdout


def _skewed_ledger_verdicts(base: Path, url: str, fast: timedelta, monkeypatch) -> tuple[int, int]:
    """Host A, whose clock is ``fast`` ahead, writes ``out.txt`` (v1), and its record reaches
    the ledger at ``url``. Then host B, with a right clock, checks the ledger before its task
    (as a pre-run check does: the verified head, in its own state) and writes ``out.txt`` (v2)
    through the engines' recording path (TaskCapture). Returns the exit status of
    ``verify-lineage out.txt`` of the file as B left it, and of it put back to A's version."""
    out = base / "out.txt"
    out.write_text("v1\n")
    written = [hash_file(str(out))]
    a_time = utcnow() + fast
    with open_ledger(url, spool=str(base / "spool-a"), state_dir=str(base / "state-a")) as ledger:
        ledger.append_records([r.stored() for r in [*manifest_records_of(written), Record(
            engine="test", run_id="run-host-a", task_id="write", task_name="write", status="succeeded",
            started=a_time, ended=a_time + timedelta(seconds=1), outputs=entries_of(written),
            environment={"host": "host-a"})]])
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(base / "state-b"))
    with open_ledger(url, spool=str(base / "spool-b"), state_dir=str(base / "state-b")) as ledger:
        ledger.tree_head()  # host B's check before its task
    started = utcnow()
    out.write_text("v2\n")
    with TaskCapture(url, engine="test", spool=str(base / "spool-b"), run_id="run-host-b") as capture:
        capture.record_now(TaskRun(task_id="write", task_name="write", status="succeeded", started=started,
                                   ended=utcnow(), outputs=[str(out)]))
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(base / "state")}
    shown = run_cli("log", "--json", "--run", "run-host-b", cwd=base, env=env, check_rc=0)
    assert AFTER_KEY in shown.stdout, shown.stdout  # B's record says what it had seen
    current = _verify(base, env)
    out.write_text("v1\n")
    restored = _verify(base, env)
    assert "out.txt" in current.stdout and "out.txt" in restored.stdout, (current.stdout, restored.stdout)
    return current.returncode, restored.returncode


# A year ahead (a clock set to the wrong year, a guest restored with a stale offset): the
# record stayed "the latest" for that year, whatever was written and recorded after it.
FAST = [pytest.param(timedelta(minutes=10), id="10-minutes-fast"), pytest.param(timedelta(days=365), id="a-year-fast")]


@pytest.mark.parametrize("fast", FAST)
def test_sqlite_a_fast_clock_on_another_host_does_not_pass_an_old_version(tmp_path, fast, monkeypatch):
    assert _skewed_ledger_verdicts(tmp_path, f"sqlite:///{tmp_path}/ledger.db", fast, monkeypatch) == (0, 1)


@pytest.mark.postgres
def test_postgresql_a_fast_clock_on_another_host_does_not_pass_an_old_version(tmp_path, postgres_url, monkeypatch):
    assert _skewed_ledger_verdicts(tmp_path, postgres_url, timedelta(minutes=10), monkeypatch) == (0, 1)
