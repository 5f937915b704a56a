"""Index rows deleted behind the ledger's back: targeted reads notice, from the names kept
beside the verified tree, instead of answering from what is left (before, only a full
audit did: an edited file whose producer's rows were deleted passed as a source)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import IndexTampered, open_ledger
from lineage_ledger._log.names import RUN
from lineage_ledger._log.trust import TrustStore
from tests.conftest import made_once, run_cli
from tests.support.audit import KILLED_REFRESH
from tests.support.factories import artifact, make_record


def _edit(db, statement, *args):
    with sqlite3.connect(db) as conn:
        changed = conn.execute(statement, args).rowcount
    assert changed, statement


@pytest.fixture
def workdir(shared_workdir):
    """At one path for the module's tests: ``two_tasks`` is made once and put back there."""
    return shared_workdir


def _url(directory: Path) -> str:
    return f"sqlite:///{directory / 'ledger.db'}"


def _record_two_tasks(cli, workdir: Path) -> None:
    url = _url(workdir)
    (workdir / "raw.txt").write_text("raw\n")
    cli("run", "-i", "raw.txt", "-o", "mid.txt", "--ledger", url, "--", "sh", "-c", "cat raw.txt > mid.txt",
        check_rc=0)
    cli("run", "-i", "mid.txt", "-o", "final.txt", "--ledger", url, "--", "sh", "-c", "cat mid.txt > final.txt",
        check_rc=0)
    cli("--ledger", url, program="verify-lineage", check_rc=0)


#: raw.txt -> mid.txt -> final.txt in ``ledger.db``, recorded with the CLI, then audited once
#: (its head remembered): made once for the module's tests that start from it (three command
#: processes each), put back for each with the remembered state (conftest's made_once).
two_tasks = made_once(_record_two_tasks, "two_tasks")


@pytest.mark.parametrize("name", ["mid.txt", "raw.txt"])
def test_an_edited_file_whose_rows_were_deleted_is_not_taken_for_a_source(two_tasks, name):
    """The worst case: edit a file, then delete every index row that names it, so that no
    record seems to know it. An output (mid.txt) and a source only ever read (raw.txt)."""
    work, url = two_tasks, _url(two_tasks)
    (work / name).write_text("edited by hand\n")
    changed = run_cli(name, "--ledger", url, cwd=work, program="verify-lineage")
    assert changed.returncode == 1  # caught from the rows, before any were deleted
    _edit(work / "ledger.db", "DELETE FROM ll_artifacts WHERE path = ?", str(work / name))
    hidden = run_cli(name, "--ledger", url, cwd=work, program="verify-lineage")
    assert hidden.returncode == 1, hidden
    assert "IndexTampered" in hidden.stdout + hidden.stderr and "left out record" in hidden.stdout + hidden.stderr
    why = run_cli("why", name, "--ledger", url, cwd=work)
    assert why.returncode == 1 and "left out record" in why.stderr, why


@pytest.mark.parametrize("statement", ["DELETE FROM ll_artifacts WHERE seq = 1",
                                       "UPDATE ll_artifacts SET ended = '2000-01-01T00:00:00.000000Z' WHERE seq = 1"])
def test_a_hidden_newer_version_is_not_answered_by_an_older_one(tmp_path, statement):
    """A file written twice; its first content put back and the second writer's rows deleted
    (or its end time in the index moved back): the older record must not vouch for it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for text in ("first", "second"):
        run_cli("run", "-o", "out.txt", "--ledger", url, "--", "sh", "-c", f"echo {text} > out.txt",
                cwd=tmp_path, check_rc=0)
    run_cli("out.txt", "--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    (tmp_path / "out.txt").write_text("first\n")
    assert run_cli("out.txt", "--ledger", url, cwd=tmp_path, program="verify-lineage").returncode == 1
    _edit(tmp_path / "ledger.db", statement)
    result = run_cli("out.txt", "--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1 and "left out record" in result.stdout + result.stderr, result


def test_the_pre_run_check_refuses_under_strict(two_tasks):
    """What the plugins call before a task runs, with the strict policy."""
    from lineage_ledger import check_before_run

    work, url = two_tasks, _url(two_tasks)
    (work / "mid.txt").write_text("edited by hand\n")
    _edit(work / "ledger.db", "DELETE FROM ll_artifacts WHERE path = ? AND role = 1", str(work / "mid.txt"))
    with open_ledger(url, spool=str(work / "spool"), replay=False) as ledger, pytest.raises(IndexTampered):
        check_before_run(ledger, [str(work / "mid.txt")], policy="strict")


@pytest.mark.parametrize("earlier", [None, 1, 2])
def test_a_state_kept_before_names_audits_once_then_checks(two_tasks, earlier):
    """A head remembered by an earlier version (no names kept, or names without counts): the
    next command reads the ledger once and keeps the names, then deleted rows are noticed as
    for any other head."""
    from lineage_ledger._log.names import FORMAT

    work, url = two_tasks, _url(two_tasks)
    with open_ledger(url, spool=str(work / "spool"), replay=False) as ledger:
        ledger.tree_head()
        directory = ledger.verifier.store.directory
    head_file = os.path.join(directory, "head.json")
    with open(head_file) as handle:
        raw = json.load(handle)
    assert raw["names"] == FORMAT == 3
    if earlier is None:
        del raw["names"]
        for name in os.listdir(directory):
            if name.startswith("names-"):
                os.unlink(os.path.join(directory, name))
    else:
        raw["names"] = earlier
    with open(head_file, "w") as handle:
        json.dump(raw, handle)
    verified = raw["verified"]
    run_cli("why", "mid.txt", "--ledger", url, cwd=work, check_rc=0)
    with open(head_file) as handle:
        again = json.load(handle)
    assert again["names"] == FORMAT and again["audited"] > verified  # read once more, whole
    assert any(name.startswith("names-") for name in os.listdir(directory))
    _edit(work / "ledger.db", "DELETE FROM ll_artifacts WHERE path = ? AND role = 1", str(work / "mid.txt"))
    result = run_cli("why", "mid.txt", "--ledger", url, cwd=work)
    assert result.returncode == 1 and "left out record" in result.stderr, result


# -- the property: any set of deleted rows is noticed, or changes no answer ------------------

def _pipeline():
    records, previous = [], artifact("/data/raw", "raw")
    for i in range(12):
        out = artifact(f"/data/step-{i % 5}", f"out{i}")  # five files, each rewritten
        records.append(make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref"), previous], outputs=[out]))
        previous = out
    return records


PATHS = ["/data/raw", "/data/ref", *[f"/data/step-{i}" for i in range(5)]]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("pristine")
    url = f"sqlite:///{base / 'ledger.db'}"
    state = str(base / "state")
    with open_ledger(url, spool=str(base / "spool")) as ledger:
        records = _pipeline()
        for start in range(0, len(records), 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
    with open_ledger(url, spool=str(base / "spool"), state_dir=state) as ledger:
        ledger.audit()
        answers = _answers(ledger)
    with sqlite3.connect(base / "ledger.db") as conn:
        rows = conn.execute("SELECT seq, role, path FROM ll_artifacts ORDER BY seq, role, path").fetchall()
    return base, answers, rows


def _answers(ledger):
    found = {}
    for path in PATHS:
        seen = ledger.last_seen(path)
        found[path] = (None if seen is None else (seen[0].id, seen[1]),
                       [e.id for e in ledger.producers(path)], [e.id for e in ledger.consumers(path)])
    return found


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_deleted_rows_are_noticed_or_change_no_answer(pristine, tmp_path_factory, data):
    base, answers, rows = pristine
    work = tmp_path_factory.mktemp("work")
    shutil.copy(base / "ledger.db", work / "ledger.db")
    # The remembered head is keyed by the ledger's path: move it to the copy's key.
    shutil.copytree(TrustStore.directory_for(f"sqlite:///{os.path.realpath(base / 'ledger.db')}", str(base / "state")),
                    TrustStore.directory_for(f"sqlite:///{os.path.realpath(work / 'ledger.db')}", str(work / "state")))
    gone = data.draw(st.lists(st.sampled_from(rows), min_size=1, max_size=6, unique=True))
    with sqlite3.connect(work / "ledger.db") as conn:
        for seq, role, path in gone:
            conn.execute("DELETE FROM ll_artifacts WHERE seq = ? AND role = ? AND path = ?", (seq, role, path))
    url = f"sqlite:///{work / 'ledger.db'}"
    with open_ledger(url, spool=str(work / "spool"), state_dir=str(work / "state"), replay=False) as ledger:
        for path in PATHS:
            try:
                seen = ledger.last_seen(path)
                latest = None if seen is None else (seen[0].id, seen[1])
                assert latest == answers[path][0], (path, gone)
            except IndexTampered:
                pass
            # Every writer and every reader, as `why` and `depends --all` list them: a row
            # deleted anywhere in the list is noticed, not only the latest of a batch's.
            try:
                assert [e.id for e in ledger.producers(path)] == answers[path][1], (path, gone)
            except IndexTampered:
                pass
            try:
                assert [e.id for e in ledger.consumers(path)] == answers[path][2], (path, gone)
            except IndexTampered:
                pass
        assert not ledger.verifier.audited_now  # answered from the copied head, not by an audit


def test_names_the_audit_workers_gather_serve_the_readers(tmp_path):
    """The audit in worker processes (five ranges of eight records) keeps the names too."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        records = [make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref")],
                               outputs=[artifact(f"/data/step-{i % 5}", f"out{i}")]) for i in range(40)]
        for start in range(0, 40, 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
    state = tmp_path / "state"
    parallel = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "8", "LINEAGE_AUDIT_WORKERS": "2",
                "XDG_STATE_HOME": str(state)}
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=parallel, check_rc=0)
    with open_ledger(url, read_only=True, state_dir=str(state / "lineage-ledger")) as ledger:
        ledger.tree_head()
        assert not ledger.verifier.audited_now
        readers = [c for c in (ledger.verifier.store.names("/data/ref") or []) if not c.output]
        producers = [c.leaf for c in (ledger.verifier.store.names("/data/step-3") or []) if c.output]
    assert sorted(c.leaf for c in readers) == [7, 15, 23, 31, 39]  # the last reader of each range
    assert sorted(producers) == [3, 13, 23, 28, 38]  # the last writer of each range
    _edit(db, "DELETE FROM ll_artifacts WHERE seq = 38 AND role = 1")
    result = run_cli("why", "/data/step-3", "--ledger", url, cwd=tmp_path, env={"XDG_STATE_HOME": str(state)})
    assert result.returncode == 1 and "left out record" in result.stderr, result


def test_a_file_every_task_reads_or_rewrites_keeps_a_bounded_number_of_entries(tmp_path):
    """Each refresh keeps the latest reader and writer of what its records name: a reference
    file read by every task, or a summary every task rewrites, one task a refresh, would gain
    an entry a task. The older ones, proved to name it, are dropped past sixteen; the latest
    stays, and still catches a hidden record."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        for i in range(40):
            ledger.append_records([make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref")],
                                               outputs=[artifact(f"/data/out-{i}", f"out{i}"),
                                                        artifact("/data/summary.txt", f"sum{i}")]).stored()])
            ledger.tree_head()
        readers = sorted(c.leaf for c in (ledger.verifier.store.names("/data/ref") or []) if not c.output)
        writers = sorted(c.leaf for c in (ledger.verifier.store.names("/data/summary.txt") or []) if c.output)
    assert len(readers) <= 17 and readers[-1] == 39, readers
    assert len(readers) < 40  # the control: without the upkeep there would be one a task
    assert len(writers) <= 17 and writers[-1] == 39, writers  # a file every task rewrites, likewise
    with open_ledger(url, read_only=True, state_dir=state) as ledger:
        for path, output in (("/data/ref", False), ("/data/summary.txt", True)):
            # The dropped entries' counts went to the ones kept: they still add up to 40.
            assert sum(c.records for c in ledger.verifier.store.names(path) or [] if c.output is output) == 40
        run = [c for c in ledger.verifier.store.names("run") or [] if c.role == RUN]  # a run, likewise
        assert len(run) <= 17 and sum(c.records for c in run) == 40 and len(ledger.run("run")) == 40, run
    _edit(db, "DELETE FROM ll_artifacts WHERE seq = 10 AND path = '/data/ref'")  # an entry long dropped
    with open_ledger(url, read_only=True, state_dir=state) as ledger, pytest.raises(IndexTampered,
                                                                                     match="left out 1"):
        ledger.consumers("/data/ref")
    _edit(db, "DELETE FROM ll_artifacts WHERE seq = 39")
    for path in ("/data/ref", "/data/summary.txt"):
        with open_ledger(url, read_only=True, state_dir=state) as ledger, pytest.raises(IndexTampered,
                                                                                         match="left out record"):
            ledger.last_seen(path)


APPENDER = """
import sys
from lineage_ledger import open_ledger
from tests.support.factories import artifact, make_record
with open_ledger(sys.argv[1], spool=sys.argv[2]) as ledger:
    for i in range(100, 400):
        ledger.append_records([make_record(i, run_id="busy", inputs=[artifact("/data/ref", "ref")],
                                           outputs=[artifact("/data/step-0", f"busy{i}")]).stored()])
"""


def test_records_appended_while_a_reader_looks_are_not_taken_for_hidden_ones(tmp_path):
    """A record appended after the index answered, and verified by the refresh that proves
    the answer, is newer than the answer without the index having hidden anything."""
    import subprocess
    import sys

    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([r.stored() for r in _pipeline()])
        ledger.audit()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, url, str(tmp_path / "spool-w")], cwd=root)
    answers = 0
    try:
        while writer.poll() is None or not answers:
            with open_ledger(url, read_only=True) as ledger:
                assert ledger.last_seen("/data/ref") is not None
                assert ledger.producers("/data/step-0")
            answers += 1
    finally:
        assert writer.wait(timeout=300) == 0
    assert answers > 1


VERIFYING_APPENDER = APPENDER.replace("outputs=[artifact(\"/data/step-0\", f\"busy{i}\")]).stored()])",
                                      "outputs=[artifact(\"/data/step-0\", f\"busy{i}\")]).stored()])\n"
                                      "        ledger.tree_head()")


def test_whole_lists_read_while_another_process_verifies_and_tidies_add_up(tmp_path):
    """Another process appends a reader of /data/ref and a record of run "busy" at a time and
    verifies each (its refresh keeps their names and tidies them past sixteen entries, adding
    counts to the latest): lists read meanwhile, whole, must add up every time, never be taken
    for an index that left records out, and only grow."""
    import subprocess
    import sys

    assert "ledger.tree_head()" in VERIFYING_APPENDER
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        ledger.append_records([r.stored() for r in _pipeline()])
        ledger.audit()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    os.makedirs(tmp_path / "xdg", exist_ok=True)
    os.symlink(state, tmp_path / "xdg" / "lineage-ledger")
    writer = subprocess.Popen([sys.executable, "-c", VERIFYING_APPENDER, url, str(tmp_path / "spool-w")], cwd=root,
                              env=env)
    seen = [0, 0]
    try:
        while writer.poll() is None or not seen[1]:
            with open_ledger(url, read_only=True, state_dir=state) as ledger:
                readers, busy = len(ledger.consumers("/data/ref")), len(ledger.run("busy"))
            assert readers >= seen[0] and busy >= seen[1], (readers, busy, seen)
            seen = [readers, busy]
    finally:
        assert writer.wait(timeout=300) == 0
    with open_ledger(url, read_only=True, state_dir=state) as ledger:
        assert len(ledger.consumers("/data/ref")) == 12 + 300 and len(ledger.run("busy")) == 300
        assert len([c for c in ledger.verifier.store.names("busy") or [] if c.role == RUN]) <= 17  # tidied


@pytest.mark.slow
def test_snakemake_strict_refuses_an_edited_intermediate_whose_rows_were_deleted(tmp_path):
    """As deployed: a workflow recorded and verified once; then b.txt is edited (its mtime
    kept, so Snakemake sees nothing) and every index row naming it deleted. The plugin's
    pre-run check must not take it for a source file it never saw."""
    from tests.support.snakemake import require_snakemake
    from tests.support.snakemake import run as snakemake_run
    from tests.test_snakemake import POLICY, tamper_keep_mtime

    require_snakemake()
    (tmp_path / "Snakefile").write_text(POLICY)
    (tmp_path / "src.txt").write_text("some text\n")
    first = snakemake_run("snakemake", "--cores", "1", "--logger", "ledger", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    verified = snakemake_run("verify-lineage", "--ledger", ".lineage/ledger.db", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    b = tmp_path / "b.txt"
    tamper_keep_mtime(b, "EDITED\n")
    _edit(tmp_path / ".lineage" / "ledger.db", "DELETE FROM ll_artifacts WHERE path = ?", str(b))
    strict = snakemake_run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-policy", "strict",
                           cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert "left out record" in strict.stderr and "refusing to run" in strict.stderr, strict.stderr[-3000:]


@pytest.mark.postgres
def test_postgresql_workers_keep_the_names_and_its_reader_notices(postgres_url, tmp_path):
    """PostgreSQL: the audit's workers (each a read-only session, the bulk check) keep the
    names; the CLI's psycopg-only reader fetches the records the index left out."""
    import psycopg

    with open_ledger(postgres_url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "unused")) as ledger:
        records = [make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref")],
                               outputs=[artifact(f"/data/step-{i % 5}", f"out{i}")]) for i in range(40)]
        ledger.append_records([r.stored() for r in records], block_size=4)
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "state"), "LINEAGE_AUDIT_PARALLEL_MIN": "0",
           "LINEAGE_AUDIT_TASK_RECORDS": "8", "LINEAGE_AUDIT_WORKERS": "2"}
    run_cli("--ledger", postgres_url, cwd=tmp_path, program="verify-lineage", env=env, check_rc=0)
    run_cli("why", "/data/step-3", "--ledger", postgres_url, cwd=tmp_path, env=env, check_rc=0)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("DELETE FROM ll_artifacts WHERE seq = 38 AND role = 1").rowcount == 1
    result = run_cli("why", "/data/step-3", "--ledger", postgres_url, cwd=tmp_path, env=env)
    assert result.returncode == 1 and "left out record" in result.stderr, result


# -- found by review: spellings, collisions, a reader behind another process's compaction ------

def test_a_file_reached_through_a_symlink_is_checked_under_the_spelling_records_name(tmp_path):
    """Recorded as real/mid.txt, read as link/mid.txt (link -> real): with every row naming
    it deleted, the look-up fell back to the link's spelling, for which nothing was kept,
    and the edited file passed as a source."""
    from lineage_ledger import check_before_run

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        ledger.append_records([make_record(0, outputs=[artifact(str(tmp_path / "real" / "mid.txt"), "made\n")])
                               .stored()])
        ledger.audit()
    (tmp_path / "real" / "mid.txt").write_text("EDITED\n")
    _edit(tmp_path / "ledger.db", "DELETE FROM ll_artifacts WHERE path = ?", str(tmp_path / "real" / "mid.txt"))
    for spelling in ("real", "link"):
        with open_ledger(url, state_dir=state, read_only=True) as ledger, pytest.raises(IndexTampered):
            check_before_run(ledger, [str(tmp_path / spelling / "mid.txt")], policy="strict")


def test_a_newer_writer_under_the_other_spelling_is_not_hidden(tmp_path):
    """task-0 wrote real/f.txt, the newer task-1 wrote link/f.txt; task-1's row deleted:
    the look-up must not fall back to real/f.txt and answer task-0."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        ledger.append_records([make_record(0, outputs=[artifact(str(tmp_path / "real" / "f.txt"), "one")]).stored(),
                               make_record(1, outputs=[artifact(str(tmp_path / "link" / "f.txt"), "two")]).stored()])
        ledger.audit()
    _edit(tmp_path / "ledger.db", "DELETE FROM ll_artifacts WHERE seq = 1")
    with open_ledger(url, state_dir=state, read_only=True) as ledger, pytest.raises(IndexTampered):
        ledger.last_seen(str(tmp_path / "link" / "f.txt"))


def _one_by_one(ledger, records) -> None:
    """Each record appended, then verified: a refresh each, as a plugin's pre-run checks do."""
    for record in records:
        ledger.append_records([record.stored()])
        ledger.tree_head()


def test_dropping_old_entries_keeps_another_paths_entry_under_the_same_key(tmp_path):
    """Two paths with one CRC-32: the upkeep that drops P's older readers must not drop the
    record that is Q's only reader."""
    import zlib

    p, q = "/data/uablaijhsa", "/data/pfcxpytzcn"
    assert zlib.crc32(p.encode()) == zlib.crc32(q.encode())
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        _one_by_one(ledger, [make_record(0, outputs=[artifact("/data/x", "x")]),
                             make_record(1, inputs=[artifact(p, "p"), artifact(q, "q")]),
                             # later readers of p, a refresh each: the upkeep runs
                             *(make_record(i, inputs=[artifact(p, "p")]) for i in range(2, 22))])
        kept = sorted(c.leaf for c in ledger.verifier.store.names(q) or [] if not c.output)
    assert 1 in kept and len(kept) <= 18, kept
    _edit(db, "DELETE FROM ll_artifacts WHERE path = ?", q)
    with open_ledger(url, state_dir=state, read_only=True) as ledger, pytest.raises(IndexTampered):
        ledger.last_seen(q)


def test_a_reader_whose_head_is_behind_another_process_upkeep_looks_again(tmp_path):
    """A long-lived reader verified 6 records; another process then verified 24 more readers
    of the same file, one refresh each, and dropped the older entries. The reader's rows of
    interest are then deleted: it must notice, not answer from its older head."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as writer:
        _one_by_one(writer, [make_record(0, outputs=[artifact("/x", "x")]),
                             *(make_record(i, inputs=[artifact("/data/ref", "r")]) for i in range(1, 6))])
    reader = open_ledger(url, state_dir=state, read_only=True)
    try:
        assert reader.tree_head().size == 6
        with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as writer:
            _one_by_one(writer, [make_record(i, inputs=[artifact("/data/ref", "r")]) for i in range(6, 30)])
        _edit(db, "DELETE FROM ll_artifacts WHERE path = '/data/ref' AND role = 0 AND seq >= 5")
        with pytest.raises(IndexTampered):
            reader.last_seen("/data/ref")
    finally:
        reader.close()


def test_a_row_deleted_from_the_middle_of_a_list_is_noticed_by_why_and_depends(tmp_path):
    """Ten tasks of one batch read a reference and rewrite a summary: the names keep one
    entry for each (the latest), with how many records named it. A row deleted from the
    middle of the list (not the latest's) used to pass `depends` and `why` with exit 0,
    one record short; the count catches it, whether the list is read whole, as one short
    page (`depends`'s default) or page by page (`depends --all`)."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref")],
                                           outputs=[artifact(f"/data/out-{i}", f"out{i}"),
                                                    artifact("/data/summary.txt", f"sum{i}")]).stored()
                               for i in range(10)])
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=state, check_rc=0)
    for args in (["depends", "/data/ref", "--all"], ["depends", "/data/ref"], ["why", "/data/summary.txt"]):
        clean = run_cli(*args, "--ledger", url, cwd=tmp_path, env=state)
        assert clean.returncode == 0, clean
    assert run_cli("depends", "/data/ref", "--all", "--ledger", url, cwd=tmp_path, env=state).stdout.count("out-") == 10
    _edit(db, "DELETE FROM ll_artifacts WHERE seq = 4 AND role = 0")
    for args in (["depends", "/data/ref", "--all"], ["depends", "/data/ref"]):
        hidden = run_cli(*args, "--ledger", url, cwd=tmp_path, env=state)
        assert hidden.returncode == 1 and "lists 9 of the 10 verified records that read /data/ref" in hidden.stderr, hidden
    _edit(db, "DELETE FROM ll_artifacts WHERE seq = 2 AND role = 1 AND path = '/data/summary.txt'")
    why = run_cli("why", "/data/summary.txt", "--ledger", url, cwd=tmp_path, env=state)
    assert why.returncode == 1 and "lists 9 of the 10 verified records that wrote /data/summary.txt" in why.stderr, why


def test_counts_a_killed_refresh_had_written_are_not_kept_twice(tmp_path):
    """A refresh killed (SIGKILL) after appending its names, before its head: the next
    writer cuts them back, so the records it had named are counted once when verified
    again, and the honest list still adds up (a count kept twice would fail it)."""
    import subprocess
    import sys

    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        ledger.append_records([make_record(i, inputs=[artifact("/data/ref", "r")]).stored() for i in range(3)])
        ledger.tree_head()
        directory = ledger.verifier.store.directory
    # Appended by another account's process: the head remembered here stays at 3 records
    # (a writer extends only its own account's head), for the refresh below to extend.
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "other")) as ledger:
        ledger.append_records([make_record(i, inputs=[artifact("/data/ref", "r")]).stored() for i in range(3, 6)])
    before = _names_files(directory)
    killed = subprocess.run([sys.executable, "-c", KILLED_REFRESH, url, state], cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    grown = [name for name, data in _names_files(directory).items() if data != before.get(name, b"")]
    assert grown and os.path.exists(os.path.join(directory, "names-pending"))  # the control: it did append
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        assert len(ledger.consumers("/data/ref")) == 6  # refreshed (after the cut), then counted
        assert not os.path.exists(os.path.join(directory, "names-pending"))
        counts = sum(c.records for c in ledger.verifier.store.names("/data/ref") or [])
    assert counts == 6
    _edit(db, "DELETE FROM ll_artifacts WHERE seq = 4")
    with open_ledger(url, state_dir=state, read_only=True) as ledger, pytest.raises(IndexTampered, match="left out 1"):
        ledger.consumers("/data/ref")


def _names_files(directory):
    found = {}
    for name in os.listdir(directory):
        if name.startswith("names-") and name.endswith(".bin"):
            with open(os.path.join(directory, name), "rb") as handle:
                found[name] = handle.read()
    return found


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_record_row_whose_run_id_was_edited_is_not_left_out_of_its_run(tmp_path):
    """`log --run R` reads the records' run-id column. A row moved to another run by an edit
    of that column used to vanish from its run's list, exit 0. The names keep a count per
    run as per path: the whole list (`-n 0`) and the last page (`-n 3`, whose total comes
    from the index) both notice, and a record hidden among the last shown does too."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([make_record(i, run_id="run-a" if i % 4 else "run-b",
                                           outputs=[artifact(f"/data/out-{i}", f"out{i}")]).stored()
                               for i in range(12)])
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=state, check_rc=0)
    for limit in ("0", "3"):
        clean = run_cli("log", "--run", "run-a", "-n", limit, "--ledger", url, cwd=tmp_path, env=state)
        assert clean.returncode == 0 and clean.stdout.count("out-") == (9 if limit == "0" else 3), clean
    _edit(db, "UPDATE ll_records SET run_id = 'run-z' WHERE seq = 2")  # an old record of run-a
    for limit in ("0", "3"):
        moved = run_cli("log", "--run", "run-a", "-n", limit, "--ledger", url, cwd=tmp_path, env=state)
        assert moved.returncode == 1 and "lists 8 of the 9 verified records that belong to run run-a" in moved.stderr, \
            (limit, moved)
    _edit(db, "UPDATE ll_records SET run_id = 'run-a' WHERE seq = 2")
    _edit(db, "UPDATE ll_records SET run_id = 'run-z' WHERE seq = 11")  # the latest: hidden from the last page
    latest = run_cli("log", "--run", "run-a", "-n", "3", "--ledger", url, cwd=tmp_path, env=state)
    assert latest.returncode == 1 and "left out record" in latest.stderr and "belongs to run run-a" in latest.stderr, \
        latest


def test_a_first_page_of_readers_notices_a_row_deleted_on_it_or_after_it(tmp_path):
    """`depends -n 3` of a file ten tasks of one batch read shows the oldest three and counts
    the rest from the index: a row deleted among those shown, or among the rest, used to
    pass with exit 0 (a page was never checked)."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([make_record(i, run_id="run", inputs=[artifact("/data/ref", "ref")],
                                           outputs=[artifact(f"/data/out-{i}", f"out{i}")]).stored()
                               for i in range(10)])
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=state, check_rc=0)
    clean = run_cli("depends", "/data/ref", "-n", "3", "--ledger", url, cwd=tmp_path, env=state, check_rc=0)
    assert clean.stdout.count("out-") == 3 and "7 more" in clean.stdout + clean.stderr, clean
    pristine = tmp_path / "pristine.db"
    shutil.copy(db, pristine)
    for seq, said in ((7, "lists 9 of the 10 verified records that read /data/ref"), (1, "left out")):
        shutil.copy(pristine, db)
        _edit(db, "DELETE FROM ll_artifacts WHERE seq = ? AND role = 0", seq)
        hidden = run_cli("depends", "/data/ref", "-n", "3", "--ledger", url, cwd=tmp_path, env=state)
        assert hidden.returncode == 1 and said in hidden.stderr, (seq, hidden)
