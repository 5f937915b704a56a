"""A repeated full audit starts from the names its remembered head keeps and names only the
records appended since (:meth:`~lineage_ledger._log.tree_head.TreeWriter.carry_names`):
readers must find every record named exactly once, old and new, and notice a deleted row
of either; names a killed writer left past that head must not be carried."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from lineage_ledger import HistoryRewritten, IndexTampered, open_ledger
from lineage_ledger._log.names import FORMAT as NAMES_FORMAT
from tests.support.audit import KILLED_REFRESH, state_files, watch_workers
from tests.support.factories import artifact, make_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "4", "LINEAGE_AUDIT_WORKERS": "2"}
IN_PROCESS = {"LINEAGE_AUDIT_WORKERS": "1"}  # the workers' bulk check, run in the auditing process


def _records(first: int, count: int):
    """Tasks that each read /data/ref and write an output of their own."""
    return [make_record(i, inputs=[artifact("/data/ref", "r")], outputs=[artifact(f"/data/out-{i}", f"o{i}")]).stored()
            for i in range(first, first + count)]


def _append(ledger, first: int, count: int) -> None:
    for at in range(first, first + count, 2):  # blocks of two: several ranges to audit
        ledger.append_records(_records(at, min(2, first + count - at)))


def _audited(tmp_path, monkeypatch, count: int):
    """A ledger of ``count`` records, audited once through the workers: (file, URL, state
    root, its state directory)."""
    for name, value in WORKERS.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "ledger.db"
    url, state = f"sqlite:///{db}", str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        _append(ledger, 0, count)
    with open_ledger(url, state_dir=state, read_only=True) as ledger:
        ledger.audit()
        return db, url, state, ledger.verifier.store.directory


def _counts(ledger, path: str) -> int:
    return sum(c.records for c in ledger.verifier.store.names(path) or [])


@pytest.mark.parametrize("how", [WORKERS, IN_PROCESS], ids=["workers", "in-process"])
def test_a_repeated_audit_names_old_and_new_records_once(tmp_path, monkeypatch, how):
    for name, value in how.items():
        monkeypatch.setenv(name, value)
    calls = watch_workers(monkeypatch)
    db = tmp_path / "ledger.db"
    url, state = f"sqlite:///{db}", str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        _append(ledger, 0, 10)
    with open_ledger(url, state_dir=state, read_only=True) as ledger:
        ledger.audit()
        assert _counts(ledger, "/data/ref") == 10
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        _append(ledger, 10, 5)
    with open_ledger(url, state_dir=state, read_only=True) as ledger:
        head = ledger.audit().head
        assert head.size == 15 and head.names == NAMES_FORMAT  # every record named: the carried ones too
        # Carried and named again would count 25; not carried, 5.
        assert _counts(ledger, "/data/ref") == 15
        assert len(ledger.consumers("/data/ref")) == 15
        assert _counts(ledger, "/data/out-3") == 1 and _counts(ledger, "/data/out-12") == 1
    assert len(calls) == (2 if how is WORKERS else 0)  # the way asked for was the way taken
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM ll_artifacts WHERE seq IN (3, 12) AND role = 0")
    with open_ledger(url, state_dir=state, read_only=True) as ledger, \
            pytest.raises(IndexTampered, match="left out"):
        ledger.consumers("/data/ref")


def test_names_a_killed_refresh_left_past_the_head_are_not_carried(tmp_path, monkeypatch):
    """A refresh killed after appending its names, before its head: the audit's copy of the
    names is cut back to the remembered head, so those records are counted once (9, not 6,
    without the cut), and a deleted row of one of them is noticed."""
    for name, value in WORKERS.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "ledger.db"
    url, state = f"sqlite:///{db}", str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        ledger.append_records(_records(0, 3))
        ledger.tree_head()
        directory = ledger.verifier.store.directory
    # Appended by another account's process: the head remembered here stays at 3 records
    # (a writer extends only its own account's head), for the refresh below to extend.
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "other")) as ledger:
        ledger.append_records(_records(3, 3))
    killed = subprocess.run([sys.executable, "-c", KILLED_REFRESH, url, state], cwd=ROOT, capture_output=True,
                            text=True)
    assert killed.returncode == -9, killed.stderr
    assert os.path.exists(os.path.join(directory, "names-pending"))  # the control: it did append
    with open_ledger(url, state_dir=state, read_only=True) as ledger:
        assert ledger.audit().head.size == 6
        assert _counts(ledger, "/data/ref") == 6
    assert not os.path.exists(os.path.join(directory, "names-pending"))
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM ll_artifacts WHERE seq = 4 AND role = 0")
    with open_ledger(url, state_dir=state, read_only=True) as ledger, \
            pytest.raises(IndexTampered, match="left out 1"):
        ledger.consumers("/data/ref")


def test_a_rewritten_record_below_the_head_is_caught_and_its_names_are_not_adopted(tmp_path, monkeypatch):
    """The names carried are those of the remembered records: a history rewritten below the
    head fails the audit, and the remembered state (names included) stays as it was."""
    db, url, state, directory = _audited(tmp_path, monkeypatch, 8)
    kept = state_files(directory)
    os.unlink(db)
    with open_ledger(url, spool=str(tmp_path / "spool2"), state_dir=state + "-other") as ledger:
        ledger.append_records([*_records(0, 2), *_records(100, 7)])  # same first two, then others
    with open_ledger(url, state_dir=state, read_only=True) as ledger, pytest.raises(HistoryRewritten):
        ledger.audit()
    assert state_files(directory) == kept




def test_names_that_cannot_be_carried_are_gathered_afresh(tmp_path, monkeypatch):
    """A bucket file of the remembered state that cannot be read (here a symbolic link,
    which is never followed): the audit names every record again, none twice."""
    db, url, state, directory = _audited(tmp_path, monkeypatch, 6)
    bucket = sorted(n for n in os.listdir(directory) if n.startswith("names-") and n.endswith(".bin"))[-1]
    os.rename(os.path.join(directory, bucket), os.path.join(tmp_path, bucket))
    os.symlink(os.path.join(tmp_path, bucket), os.path.join(directory, bucket))
    with open_ledger(url, state_dir=state, read_only=True) as ledger:
        assert ledger.audit().head.names == NAMES_FORMAT
        assert _counts(ledger, "/data/ref") == 6 and len(ledger.consumers("/data/ref")) == 6
    assert not os.path.islink(os.path.join(directory, bucket))


def test_a_pending_note_cut_short_in_its_first_line_is_no_error(tmp_path, monkeypatch):
    """A writer killed while writing the first line of ``names-pending`` ("extends " and no
    size): the next writer treats the note as one that may have grown files (it raised
    IndexError out of the audit and out of every refresh)."""
    db, url, state, directory = _audited(tmp_path, monkeypatch, 6)
    with open(os.path.join(directory, "names-pending"), "w") as note:
        note.write("extends ")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        _append(ledger, 6, 2)
    with open_ledger(url, state_dir=state, read_only=True) as ledger:
        assert ledger.audit().head.size == 8
        assert _counts(ledger, "/data/ref") == 8
    assert not os.path.exists(os.path.join(directory, "names-pending"))
