"""``lineage-ledger log``: the last N tasks, or all of them with ``-n 0``, streamed.

``log -n 0`` of a 100,000-record ledger held every record decoded (645 MB, about 6 KB a
record), so at a million records it would have run out of memory; it now reads a few
blocks at a time (``Ledger.tail``, ``Ledger.records_from``). The listing must stay exactly
what it was, directory manifests left out, and a block the back-end no longer returns must
fail the listing, not shorten it."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._errors import IndexTampered
from lineage_ledger._files.manifest import MANIFEST_ENGINE, MANIFEST_RUN_PREFIX, is_manifest_record
from lineage_ledger._ledger.ledger import Ledger
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record

BLOCKS, PER_BLOCK = 25, 7


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    """175 records in blocks of 7, every fifth a directory manifest (not a task)."""
    root = tmp_path_factory.mktemp("log")
    records = []
    for i in range(BLOCKS * PER_BLOCK):
        manifest = i % 5 == 2
        records.append(make_record(i, engine=MANIFEST_ENGINE if manifest else "test",
                                   run_id=f"{MANIFEST_RUN_PREFIX}d{i}" if manifest else "run-1",
                                   outputs=[artifact(f"/data/out-{i}", str(i))]))
    with open_ledger(f"sqlite:///{root}/ledger.db", spool=str(root / "spool"), state_dir=str(root / "st")) as ledger:
        for start in range(0, len(records), PER_BLOCK):
            ledger.append_records([r.stored() for r in records[start : start + PER_BLOCK]], block_size=PER_BLOCK)
    tasks = [r.stored().id for r in records if not is_manifest_record(r)]
    return root, [r.stored().id for r in records], tasks


def _log(root, *args, rc=0):
    result = run_cli("log", "--ledger", f"sqlite:///{root}/ledger.db", "--json", *args, cwd=root,
                     env={"LINEAGE_STATE_DIR": str(root / "cli-state")}, check_rc=rc)
    return result


@pytest.mark.parametrize("limit", [1, 6, 20, 139, 140, 500])
def test_the_last_n_tasks_oldest_first(listed, limit):
    root, _all, tasks = listed
    result = _log(root, "-n", str(limit))
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == tasks[-limit:]
    assert ("showing the last" in result.stderr) == (limit < len(tasks)), result.stderr


def test_every_task_with_n_0(listed):
    root, _all, tasks = listed
    result = _log(root, "-n", "0")
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == tasks
    assert "showing" not in result.stderr


@pytest.mark.parametrize("held", [3, 10_000])
@pytest.mark.parametrize("limit", [0, 1, 5, 7, 8, 60, 175, 176])
def test_tail_holds_or_reads_again_with_the_same_answer(listed, monkeypatch, held, limit):
    """Past ``_HELD`` records the walk back keeps only counts and the records are read again."""
    root, every, _tasks = listed
    monkeypatch.setattr(Ledger, "_HELD", held)
    with open_ledger(f"sqlite:///{root}/ledger.db", read_only=True, state_dir=str(root / "st")) as ledger:
        count, before, entries = ledger.tail(limit)
        ids = [entry.id for entry in entries]
        assert ledger.recent(limit) == list(ledger.tail(limit)[2])
    assert ids == (every[-limit:] if limit else every)
    assert count == (None if not limit else min(limit, len(every)))
    assert before == (0 < limit < len(every))


def test_a_block_the_back_end_leaves_out_fails_the_listing(listed, tmp_path):
    root, _all, _tasks = listed
    copy = tmp_path / "ledger.db"
    with sqlite3.connect(root / "ledger.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    state = tmp_path / "state"
    env = {"LINEAGE_STATE_DIR": str(state)}
    url = f"sqlite:///{copy}"
    run_cli("verify", "--ledger", url, cwd=tmp_path, env=env, check_rc=0)  # remembered: 25 blocks
    with sqlite3.connect(copy) as conn:  # block 12 and its records, gone from the store
        conn.execute("DELETE FROM ll_artifacts WHERE seq IN (SELECT seq FROM ll_records WHERE height = 12)")
        conn.execute("DELETE FROM ll_records WHERE height = 12")
        conn.execute("DELETE FROM ll_blocks WHERE height = 12")
    result = run_cli("log", "--ledger", url, "-n", "0", cwd=tmp_path, env=env, check_rc=1)
    assert "block 12" in result.stderr and "Traceback" not in result.stderr, result.stderr
    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger, pytest.raises(IndexTampered):
        ledger.recent(0)


def test_the_last_few_prove_only_what_they_show(listed, monkeypatch):
    """``log`` (the last 20) of a million records proved the 8,000 around them (3.2 s; now 0.8)."""
    root, every, _tasks = listed
    proved: list[str] = []
    original = Ledger._proved

    def counting(self, located, **options):
        proved.append(located.record.id)
        return original(self, located, **options)

    monkeypatch.setattr(Ledger, "_proved", counting)
    with open_ledger(f"sqlite:///{root}/ledger.db", read_only=True, state_dir=str(root / "st")) as ledger:
        count, before, entries = ledger.tail(3)
        assert [entry.id for entry in entries] == every[-3:] and (count, before) == (3, True)
    assert proved == every[-4:][::-1]  # the three shown, and one to know that records come before


def test_a_run_streams_page_by_page_and_a_deleted_row_still_fails(listed, tmp_path, monkeypatch):
    root, every, _tasks = listed
    url = f"sqlite:///{root}/ledger.db"
    runs = run_cli("log", "--ledger", url, "--run", "run-1", "-n", "0", "--json", cwd=root,
                   env={"LINEAGE_STATE_DIR": str(root / "cli-state")}, check_rc=0)
    with open_ledger(url, read_only=True, state_dir=str(root / "st")) as ledger:
        whole = [entry.id for entry in ledger.run("run-1")]
        pages = list(ledger.run_pages("run-1", size=9))
    assert [json.loads(line)["id"] for line in runs.stdout.splitlines()] == whole == [e.id for p in pages for e in p]
    assert len(whole) == 140 and all(len(page) == 9 for page in pages[:-1])
    copy = tmp_path / "ledger.db"
    with sqlite3.connect(root / "ledger.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "state")}
    run_cli("verify", "--ledger", f"sqlite:///{copy}", cwd=tmp_path, env=env, check_rc=0)
    with sqlite3.connect(copy) as conn:  # one record's run id edited in its index row
        assert conn.execute("UPDATE ll_records SET run_id = 'elsewhere' WHERE seq = 50").rowcount == 1
    result = run_cli("log", "--ledger", f"sqlite:///{copy}", "--run", "run-1", "-n", "0", cwd=tmp_path, env=env,
                     check_rc=1)
    assert "run-1" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_back_end_without_run_pages_reads_the_run_once(tmp_path):
    """Where ``by_run_page`` would slice the whole run each time (BAASH, Fabric, memory), the
    run is read whole once and handed out in pages."""
    with open_ledger("memory://runs", spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "st")) as ledger:
        ledger.append_records([make_record(i, run_id="run-1").stored() for i in range(23)], block_size=5)
        assert not ledger.backend.pages_runs
        calls = []
        by_run = ledger.backend.by_run
        ledger.backend.by_run = lambda run_id: calls.append(run_id) or by_run(run_id)
        pages = list(ledger.run_pages("run-1", size=10))
    assert [len(page) for page in pages] == [10, 10, 3] and calls == ["run-1"]


def test_a_long_tail_read_again_stops_at_the_head_it_counted(listed, tmp_path, monkeypatch):
    """Past ``_HELD`` the records are read again from where they begin: records appended
    meanwhile are not listed (they were not counted)."""
    root, every, _tasks = listed
    copy = tmp_path / "ledger.db"
    with sqlite3.connect(root / "ledger.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    monkeypatch.setattr(Ledger, "_HELD", 3)
    with open_ledger(f"sqlite:///{copy}", spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "st")) as ledger:
        count, _before, entries = ledger.tail(10)
        ledger.append_records([make_record(1000 + i).stored() for i in range(7)], block_size=7)
        assert ledger.tree_head().size == len(every) + 7
        assert [entry.id for entry in entries] == every[-10:] and count == 10
