"""The verification model end to end: any stored byte changed is caught, readers answer
only from proved rows, a rewritten history fails against what was verified before or
against a checkpoint, and read commands never create or write a ledger."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import IndexTampered, LedgerError, VerificationError, open_ledger
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record
from tests.support.rollback import drop_last_block

TABLES = {  # table -> (its columns, a key that names one row)
    "ll_meta": (("key", "value"), ("key",)),
    "ll_blocks": (("height", "id", "first_seq", "count", "header"), ("height",)),
    "ll_records": (("seq", "id", "height", "pos", "run_id", "body"), ("seq",)),
    "ll_artifacts": (("path", "role", "seq", "digest", "ended"), ("seq", "role", "path")),
}


def _pipeline_records():
    """Three blocks of task-shaped records: each reads a shared source and its predecessor."""
    records, previous = [], artifact("/data/raw", "raw")
    for i in range(9):
        out = artifact(f"/data/step-{i}", f"out{i}")
        records.append(make_record(i, run_id=f"run-{i % 2}", inputs=[artifact("/data/ref", "ref"), previous],
                                   outputs=[out]))
        previous = out
    return records


def _build(db) -> str:
    url = f"sqlite:///{db}"
    with open_ledger(url, spool=str(db.parent / "spool")) as ledger:
        records = _pipeline_records()
        for start in range(0, 9, 3):
            ledger.append_records([r.stored() for r in records[start : start + 3]])
        ledger.audit()  # remembered: later checks are against this tree head
    return url


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A ledger and the state that remembers its verified head, copied for each example."""
    base = tmp_path_factory.mktemp("pristine")
    state = base / "state"
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(state)
    try:
        _build(base / "ledger.db")
    finally:
        if old is None:
            os.environ.pop("XDG_STATE_HOME")
        else:
            os.environ["XDG_STATE_HOME"] = old
    return base


def _mutations(draw_table, conn):
    columns, _key = TABLES[draw_table]
    return conn.execute(f"SELECT {', '.join(columns)} FROM {draw_table}").fetchall()  # noqa: S608


def _mutate(value, where: int):
    if isinstance(value, bytes):
        if not value:
            return b"x"
        i = where % len(value)
        return value[:i] + bytes([value[i] ^ 0x01]) + value[i + 1 :]
    if isinstance(value, str):
        if not value:
            return "x"
        i = where % len(value)
        return value[:i] + chr(ord(value[i]) ^ 0x01) + value[i + 1 :]
    return value + (1 if where % 2 else -1)


def _copy(pristine, work, monkeypatch):
    """The pristine ledger and its remembered head, as if this copy had been verified."""
    from lineage_ledger._log.trust import TrustStore

    db, state = work / "ledger.db", work / "state"
    shutil.copy(pristine / "ledger.db", db)
    # The remembered head is keyed by the ledger's path: move it to the copy's key.
    shutil.copytree(TrustStore.directory_for(f"sqlite:///{os.path.realpath(pristine / 'ledger.db')}",
                                             str(pristine / "state" / "lineage-ledger")),
                    TrustStore.directory_for(f"sqlite:///{os.path.realpath(db)}", str(state / "lineage-ledger")))
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return db


def test_the_untouched_copy_audits_clean(pristine, tmp_path, monkeypatch):
    """The control for the property below: only the change makes the audit fail."""
    db = _copy(pristine, tmp_path, monkeypatch)
    with open_ledger(f"sqlite:///{db}", read_only=True) as ledger:
        result = ledger.audit()
    assert result.summary.records == 9 and result.index_rows == 9


def _sweep():
    for table, (columns, _key) in sorted(TABLES.items()):
        for which in (0, -1):
            for column in [*columns, None]:
                yield table, which, column


@pytest.mark.parametrize(("table", "which", "column"), list(_sweep()))
def test_every_column_of_every_table_is_checked(pristine, tmp_path, monkeypatch, table, which, column):
    """The property below, swept: each column of the first and last row of each table
    changed (both directions for numbers), or the row deleted (``None``)."""
    for where in (1, 2):
        work = tmp_path / f"w{where}"
        work.mkdir()
        db = _copy(pristine, work, monkeypatch)
        columns, key = TABLES[table]
        with sqlite3.connect(db) as conn:
            rows = _mutations(table, conn)
            named = dict(zip(columns, rows[which], strict=True))
            condition = " AND ".join(f"{k} = ?" for k in key)
            try:
                if column is None:
                    conn.execute(f"DELETE FROM {table} WHERE {condition}", [named[k] for k in key])  # noqa: S608
                else:
                    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {condition}",  # noqa: S608
                                 [_mutate(named[column], where), *[named[k] for k in key]])
            except sqlite3.IntegrityError:
                continue
        with pytest.raises(LedgerError), open_ledger(f"sqlite:///{db}", read_only=True) as ledger:
            ledger.audit()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(sorted(TABLES)), row=st.integers(0, 10_000), column=st.integers(0, 10),
       where=st.integers(0, 10_000), delete=st.booleans())
def test_any_changed_or_deleted_row_fails_the_audit(pristine, tmp_path_factory, monkeypatch,
                                                     table, row, column, where, delete):
    db = _copy(pristine, tmp_path_factory.mktemp("tamper"), monkeypatch)
    columns, key = TABLES[table]
    with sqlite3.connect(db) as conn:
        rows = _mutations(table, conn)
        old = rows[row % len(rows)]
        named = dict(zip(columns, old, strict=True))
        condition = " AND ".join(f"{k} = ?" for k in key)
        if delete:
            conn.execute(f"DELETE FROM {table} WHERE {condition}", [named[k] for k in key])  # noqa: S608
        else:
            name = columns[column % len(columns)]
            new = _mutate(named[name], where)
            try:
                conn.execute(f"UPDATE {table} SET {name} = ? WHERE {condition}",  # noqa: S608
                             [new, *[named[k] for k in key]])
            except sqlite3.IntegrityError:
                return  # the store itself refused the change
    with pytest.raises(LedgerError):  # VerificationError, or the store refused as unreadable
        with open_ledger(f"sqlite:///{db}", read_only=True) as ledger:
            ledger.audit()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(["ll_artifacts", "ll_blocks", "ll_records"]), row=st.integers(0, 10_000),
       column=st.integers(0, 10), where=st.integers(0, 10_000),
       place=st.sampled_from(["before", "inside", "past", "far past"]))
def test_any_added_row_fails_the_audit(pristine, tmp_path_factory, monkeypatch, table, row, column, where, place):
    """A row added to any table, anywhere (before the first record, among them, past the head
    where an append would put it), a copy of a stored row with one column changed."""
    db = _copy(pristine, tmp_path_factory.mktemp("added"), monkeypatch)
    columns, _key = TABLES[table]
    number = {"ll_blocks": "height"}.get(table, "seq")
    with sqlite3.connect(db) as conn:
        rows = _mutations(table, conn)
        named = dict(zip(columns, rows[row % len(rows)], strict=True))
        top = conn.execute(f"SELECT max({number}) FROM {table}").fetchone()[0]  # noqa: S608
        named[number] = {"before": -1, "inside": named[number], "past": top + 1, "far past": top + 1000}[place]
        name = columns[column % len(columns)]
        if name != number:
            named[name] = _mutate(named[name], where)
        try:
            conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",  # noqa: S608
                         [named[c] for c in columns])
        except sqlite3.IntegrityError:
            return  # the store itself refused the row
    with pytest.raises(LedgerError), open_ledger(f"sqlite:///{db}", read_only=True) as ledger:
        ledger.audit()


def _index_edit(db, statement, *args):
    with sqlite3.connect(db) as conn:
        changed = conn.execute(statement, args).rowcount
    assert changed, statement


@pytest.mark.parametrize(("statement", "command"), [
    # an artifact row that says record 3 wrote another file than it did
    ("UPDATE ll_artifacts SET path = '/data/step-5' WHERE path = '/data/step-3' AND role = 1",
     ("why", "/data/step-5")),
    ("UPDATE ll_artifacts SET role = 0 WHERE path = '/data/step-4' AND role = 1", ("depends", "/data/step-4")),
    # a record row moved to another place in the chain, or to another run
    ("UPDATE ll_records SET pos = 0 WHERE seq = 4", ("why", "/data/step-4")),
    ("UPDATE ll_records SET height = 2 WHERE seq = 1", ("why", "/data/step-1")),
    ("UPDATE ll_records SET run_id = 'run-0' WHERE seq = 3", ("log", "--run", "run-0")),
    # a row that names no stored record: it took the first page's only place (the answer was
    # "nothing was derived from it", exit 0), was left out of every answer, and a row past the
    # head passed the audit
    ("INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES ('/data/ref', 0, -1, 'x', '')",
     ("depends", "-n", "1", "/data/ref")),
    ("INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES ('/data/ref', 0, 99, 'x', '')",
     ("depends", "--all", "/data/ref")),
    ("INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES ('/data/step-3', 1, 99, 'x', '9999')",
     ("why", "/data/step-3")),
    # a reader row of an output moved to a record that did not read it, met where `depends --all`
    # reads a page's outputs' readers ahead
    ("UPDATE ll_artifacts SET seq = 7 WHERE role = 0 AND path = '/data/step-4'", ("depends", "--all", "/data/ref")),
])
def test_readers_refuse_an_index_row_that_disagrees_with_its_record(tmp_path, statement, command):
    db = tmp_path / "ledger.db"
    url = _build(db)
    _index_edit(db, statement)
    result = run_cli(*command, "--ledger", url, cwd=tmp_path)
    assert result.returncode == 1, result
    assert "IndexTampered" in result.stderr or "index" in result.stderr, result.stderr
    audit = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert audit.returncode == 1 and "IndexTampered" in audit.stdout, audit


def test_an_edited_digest_column_changes_no_answer_and_fails_the_audit(tmp_path):
    """Readers match digests against the proved record, never against the index column."""
    db = tmp_path / "ledger.db"
    url = _build(db)
    before = run_cli("why", "--json", "/data/step-3", "--ledger", url, cwd=tmp_path, check_rc=0).stdout
    _index_edit(db, "UPDATE ll_artifacts SET digest = (SELECT digest FROM ll_artifacts WHERE path = '/data/step-1'"
                    " AND role = 1) WHERE path = '/data/step-2' AND role = 1")
    after = run_cli("why", "--json", "/data/step-3", "--ledger", url, cwd=tmp_path, check_rc=0).stdout
    assert after == before and '"broken"' not in after
    audit = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert audit.returncode == 1 and "IndexTampered" in audit.stdout, audit


def test_readers_refuse_a_broken_ledger(tmp_path):
    db = tmp_path / "ledger.db"
    url = _build(db)
    _index_edit(db, "UPDATE ll_records SET body = replace(body, 'step', 'stop') WHERE seq = 2")
    with sqlite3.connect(db) as conn:
        (record_id,) = conn.execute("SELECT id FROM ll_records WHERE seq = 2").fetchone()
    for command in (("why", "/data/step-2"), ("depends", "/data/step-1"), ("log",), ("show", record_id[:12])):
        result = run_cli(*command, "--ledger", url, cwd=tmp_path)
        assert result.returncode == 1, (command, result)


def _rewrite_last_block(db, url):
    """What a careful attacker does: replace the last block with one whose ids, Merkle root and
    block id are all recomputed, so that the chain verifies on its own."""
    drop_last_block(db)
    forged = _pipeline_records()[6:]
    forged[0] = make_record(6, run_id="run-0", inputs=[artifact("/data/ref", "ref")],
                            outputs=[artifact("/data/step-6", "forged")])
    with open_ledger(url, spool=str(db.parent / "spool2")) as ledger:
        ledger.append_records([r.stored() for r in forged])


def test_a_consistent_rewrite_of_the_tail_fails_against_what_was_verified(tmp_path):
    db = tmp_path / "ledger.db"
    url = _build(db)
    checkpoint = tmp_path / "checkpoint"
    run_cli("checkpoint", "--ledger", url, "-o", checkpoint, cwd=tmp_path, check_rc=0)
    _rewrite_last_block(db, url)
    result = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1 and "HistoryRewritten" in result.stdout, result
    assert "record 6 (block 2, position 0)" in result.stdout  # the first rewritten record, named
    # Another account, which never verified this ledger, has only the checkpoint to go by.
    fresh = {"XDG_STATE_HOME": str(tmp_path / "other-user-state")}
    alone = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=fresh)
    assert alone.returncode == 0, alone  # a rewritten chain is internally consistent
    against = run_cli("--ledger", url, "--against", checkpoint, cwd=tmp_path, program="verify-lineage", env=fresh)
    assert against.returncode == 1 and "not an extension of the checkpoint" in against.stdout, against


def test_signed_checkpoints(tmp_path):
    db = tmp_path / "ledger.db"
    url = _build(db)
    run_cli("keygen", tmp_path / "key", "--name", "lab.example/ledger", cwd=tmp_path, check_rc=0)
    run_cli("keygen", tmp_path / "other", cwd=tmp_path, check_rc=0)
    assert oct(os.stat(tmp_path / "key").st_mode & 0o777) == "0o600"
    note = tmp_path / "cp"
    run_cli("checkpoint", "--ledger", url, "--key", tmp_path / "key", "-o", note, cwd=tmp_path, check_rc=0)
    text = note.read_text()
    assert text.splitlines()[1] == "9" and "\u2014 lab.example/ledger " in text
    assert "PRIVATE" not in text
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:  # the ledger grows: still an extension
        ledger.append_records([make_record(50).stored()])
    ok = run_cli("--ledger", url, "--against", note, "--pubkey", tmp_path / "key.pub", cwd=tmp_path,
                 program="verify-lineage", check_rc=0)
    assert "extends checkpoint" in ok.stdout
    wrong_key = run_cli("--ledger", url, "--against", note, "--pubkey", tmp_path / "other.pub", cwd=tmp_path,
                        program="verify-lineage")
    assert wrong_key.returncode == 1 and "signature" in wrong_key.stderr + wrong_key.stdout, wrong_key
    note.write_text(text.replace("\n9\n", "\n8\n"))  # an edited size breaks the signature
    edited = run_cli("--ledger", url, "--against", note, "--pubkey", tmp_path / "key.pub", cwd=tmp_path,
                     program="verify-lineage")
    assert edited.returncode == 1, edited


@pytest.mark.parametrize("command", [("verify-lineage",), ("verify-lineage", "x.txt"), ("log",), ("why", "x"),
                                     ("depends", "x"), ("show", "abcd"), ("checkpoint",)])
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_read_commands_never_create_a_ledger(tmp_path, command, kind):
    path = tmp_path / "typo" / "ledger.db" if kind == "missing" else tmp_path / "empty.db"
    if kind == "empty":
        path.write_bytes(b"")
    (tmp_path / "x.txt").write_text("x")
    program, args = (command[0], command[1:]) if command[0] == "verify-lineage" else ("lineage-ledger", command)
    result = run_cli(*args, "--ledger", path, cwd=tmp_path, program=program)
    assert result.returncode == 2, result
    assert f"no ledger at {path}" in result.stderr, result.stderr
    assert (not path.parent.exists()) if kind == "missing" else path.stat().st_size == 0


def test_read_only_copy_with_its_wal_verifies_every_record(tmp_path):
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    keep = sqlite3.connect(db)  # keeps the WAL from being checkpointed into the file on close
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        keep.execute("PRAGMA wal_autocheckpoint = 0")
        keep.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a reader: the WAL stays
        for start in range(0, 9, 3):
            ledger.append_records([r.stored() for r in _pipeline_records()[start : start + 3]])
    copy = tmp_path / "archive"
    copy.mkdir()
    for name in os.listdir(tmp_path):
        if name.startswith("ledger.db"):
            shutil.copy(tmp_path / name, copy / name)
    keep.close()
    assert (copy / "ledger.db-wal").stat().st_size > 0
    for name in os.listdir(copy):
        os.chmod(copy / name, 0o444)
    os.chmod(copy, 0o555)
    try:
        before = sorted((n, (copy / n).stat().st_mtime_ns) for n in os.listdir(copy))
        result = run_cli("--ledger", copy / "ledger.db", cwd=tmp_path, program="verify-lineage", check_rc=0)
        assert "9 records" in result.stdout
        assert sorted((n, (copy / n).stat().st_mtime_ns) for n in os.listdir(copy)) == before
    finally:
        os.chmod(copy, 0o755)


WRITER = """
import sys
from lineage_ledger import open_ledger
from tests.support.factories import make_records
with open_ledger(sys.argv[1], spool=sys.argv[2]) as ledger:
    for start in range(0, 600, 20):
        ledger.append_records([r.stored() for r in make_records(20, run_id="busy", start=start)])
"""


def test_verification_while_another_process_appends(tmp_path):
    url = _build(tmp_path / "ledger.db")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, str(tmp_path / "spool-w")], cwd=root)
    runs = []
    try:
        while writer.poll() is None or not runs:
            audit = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage")
            targeted = run_cli("/data/step-8", "--ledger", url, cwd=tmp_path, program="verify-lineage")
            runs.append((audit.returncode, targeted.returncode, audit.stdout + audit.stderr))
    finally:
        assert writer.wait(timeout=300) == 0
    for audit_rc, targeted_rc, text in runs:
        assert audit_rc == 0 and targeted_rc in (0, 1), text  # 1: /data/step-8 is not on disk
    with open_ledger(url, read_only=True) as ledger:
        assert ledger.audit().summary.records == 9 + 600


def test_verification_errors_name_their_kind(tmp_path):
    """A reader's failure is a VerificationError (exit 1), not a crash or an answer."""
    db = tmp_path / "ledger.db"
    url = _build(db)
    _index_edit(db, "UPDATE ll_artifacts SET path = '/data/elsewhere' WHERE path = '/data/step-0' AND role = 1")
    with open_ledger(url, read_only=True) as ledger, pytest.raises(VerificationError):
        ledger.producers("/data/elsewhere")


def test_a_record_waiting_in_the_spool_is_reported_not_passed_over(tmp_path):
    """#16: verification never says "verified" in silence while a record of a target waits."""
    (tmp_path / "in.txt").write_text("in")
    url = f"sqlite:///{tmp_path}/ledger.db"
    run_cli("run", "-i", "in.txt", "-o", "a.txt", "--ledger", url, "--", "cp", "in.txt", "a.txt",
            cwd=tmp_path, check_rc=0)
    locker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another writer holds the ledger as the next task ends
    try:
        result = run_cli("run", "-i", "a.txt", "-o", "b.txt", "--ledger", url, "--ship-wait", "0.5", "--",
                         "cp", "a.txt", "b.txt", cwd=tmp_path)
        assert result.returncode == 0 and "waits" in result.stderr, result
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    verified = run_cli("a.txt", "--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert verified.returncode == 0, verified
    assert "1 record(s) (1 task) of this ledger wait in the spool" in verified.stdout and "a.txt" in verified.stdout
    run_cli("spool", "ship", "--ledger", url, cwd=tmp_path, check_rc=0)
    again = run_cli("b.txt", "--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    assert "wait in the spool" not in again.stdout


def test_depends_pages_a_file_every_task_read_and_streams_all(tmp_path):
    url = _build(tmp_path / "ledger.db")
    paged = run_cli("depends", "-n", "2", "/data/ref", "--ledger", url, cwd=tmp_path, check_rc=0).stdout
    assert "... and 7 more (--all lists them)" in paged
    every = run_cli("depends", "--all", "/data/ref", "--ledger", url, cwd=tmp_path, check_rc=0).stdout
    assert sum("test:step" in line for line in every.splitlines()) == 9  # each consumer once


def test_pages_of_consumers_join_up_to_every_consumer_once(tmp_path):
    """Each next page starts past the last record of the one before (a step down the index,
    not a scan of the rows before it): the pages join up even when an earlier page's row
    goes away meanwhile, and a record appended meanwhile comes last."""
    db = tmp_path / "ledger.db"
    url = _build(db)
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        every = [c.id for c in ledger.consumers("/data/ref")]
        pages = [c.id for c in ledger.consumers("/data/ref", offset=0, limit=2)]
        with sqlite3.connect(db) as conn:  # a row of the first page, gone before the next
            conn.execute("DELETE FROM ll_artifacts WHERE path = '/data/ref' AND seq = 0")
        extra = make_record(9, inputs=[artifact("/data/ref", "ref")], outputs=[artifact("/data/extra", "x")]).stored()
        ledger.append_records([extra])
        for offset in range(2, 12, 2):
            pages += [c.id for c in ledger.consumers("/data/ref", offset=offset, limit=2)]
        # The whole list, counted against the names kept, tells of the row deleted.
        with pytest.raises(IndexTampered, match="left out 1"):
            ledger.consumers("/data/ref")
    assert len(every) == 9 and pages == [*every, extra.id]


def test_the_consumers_left_out_are_counted_only_so_far(tmp_path, monkeypatch):
    """A file ten million tasks read: the count of the rest stops at MORE_COUNTED."""
    from lineage_ledger._ledger import derived

    url = _build(tmp_path / "ledger.db")
    with open_ledger(url, read_only=True) as ledger:
        exact = ledger.derived("/data/ref", limit=2)[-1]
        monkeypatch.setattr(derived, "MORE_COUNTED", 3)
        capped = ledger.derived("/data/ref", limit=2)[-1]
        monkeypatch.setattr(derived, "MORE_COUNTED", 7)
        just = ledger.derived("/data/ref", limit=2)[-1]
    assert exact[0] is None and exact[1] == 7 and exact[1].exact and str(exact[1]) == "7"
    assert capped[0] is None and not capped[1].exact and str(capped[1]) == "more than 3"
    assert just[1] == 7 and just[1].exact


def test_a_directory_given_names_the_recorded_files_gone_from_it(tmp_path):
    """`verify-lineage DIR` walks the files on disk; the files records name below DIR that are
    gone (a temp() file, a result deleted by hand) are listed, each proved, and, as in an
    audit, are no failure. An index row that makes one up is refused."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    (tmp_path / "res" / "sub").mkdir(parents=True)
    (tmp_path / "raw.txt").write_text("raw\n")
    run_cli("run", "-i", "raw.txt", "-o", "res/kept.txt", "-o", "res/sub/tmp.sam", "--ledger", url, "--",
            "sh", "-c", "cat raw.txt > res/kept.txt; echo sam > res/sub/tmp.sam", cwd=tmp_path, check_rc=0)
    run_cli("run", "-i", "res/sub/tmp.sam", "-o", "res/final.txt", "--ledger", url, "--",
            "sh", "-c", "cat res/sub/tmp.sam > res/final.txt", cwd=tmp_path, check_rc=0)
    intact = run_cli("res", "--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    assert "not on disk" not in intact.stdout
    (tmp_path / "res" / "sub" / "tmp.sam").unlink()
    (tmp_path / "res" / "final.txt").unlink()
    gone = run_cli("res", "--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    assert "note: 2 file(s) that records name under res are not on disk" in gone.stdout, gone.stdout
    assert "  res/final.txt\n  res/sub/tmp.sam\n" in gone.stdout and "verified" in gone.stdout
    data = run_cli("--json", "res", "--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0).stdout
    import json

    assert json.loads(data)["absent"] == [{"directory": str(tmp_path / "res"), "more": 0, "paths": [
        str(tmp_path / "res" / "final.txt"), str(tmp_path / "res" / "sub" / "tmp.sam")]}]
    _index_edit(tmp_path / "ledger.db", "INSERT INTO ll_artifacts (path, role, seq, digest, ended)"
                " SELECT ?, role, seq, digest, ended FROM ll_artifacts WHERE seq = 0 AND role = 1 LIMIT 1",
                str(tmp_path / "res" / "made-up.txt"))
    forged = run_cli("res", "--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert forged.returncode == 1 and "IndexTampered" in forged.stdout + forged.stderr, forged


def test_gone_files_are_found_under_every_spelling_and_each_one_proved(tmp_path):
    """A directory given through a symbolic link: the files records name under its real
    path count too (once each). Past the ten listed, every file counted is proved as well:
    a made-up row among the rest is refused, not counted."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    (tmp_path / "real" / "res").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "raw.txt").write_text("raw\n")
    outputs = [f"res/out-{i:02d}.txt" for i in range(12)]
    for where, names in (("real", outputs[:6]), ("link", outputs[6:])):
        flags = [arg for name in names for arg in ("-o", f"{where}/{name}")]
        script = "; ".join(f"echo {name} > {where}/{name}" for name in names)
        run_cli("run", "-i", "raw.txt", *flags, "--ledger", url, "--", "sh", "-c", script, cwd=tmp_path, check_rc=0)
    for name in outputs:
        (tmp_path / "real" / name).unlink()
    for shown in ("real/res", "link/res"):
        gone = run_cli(shown, "--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
        assert f"note: 12 file(s) that records name under {shown} are not on disk" in gone.stdout, gone.stdout
        assert "  ... and 2 more\n" in gone.stdout
    _index_edit(tmp_path / "ledger.db", "INSERT INTO ll_artifacts (path, role, seq, digest, ended)"
                " SELECT ?, role, seq, digest, ended FROM ll_artifacts WHERE seq = 0 AND role = 1 LIMIT 1",
                str(tmp_path / "real" / "res" / "zz-made-up.txt"))
    forged = run_cli("real/res", "--ledger", url, cwd=tmp_path, program="verify-lineage")
    assert forged.returncode == 1 and "IndexTampered" in forged.stdout, forged


@pytest.mark.parametrize("read", ["find", "find_places", "find_page", "find_latest", "find_latest_many",
                                  "find_places_many"])
def test_every_index_read_refuses_a_row_that_names_no_record(tmp_path, read):
    """The back-end's reads themselves: a row naming no stored record is an error, never a gap."""
    from lineage_ledger import IndexTampered
    from lineage_ledger.backends import open_backend

    db = tmp_path / "ledger.db"
    url = _build(db)
    _index_edit(db, "INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES ('/data/ref', 0, 99, 'x', '9')")
    backend = open_backend(url, create=False)
    calls = {"find": lambda: backend.find("in", path="/data/ref"),
             "find_places": lambda: backend.find_places("in", path="/data/ref"),
             "find_page": lambda: backend.find_page("in", path="/data/ref", offset=8, limit=5),
             "find_latest": lambda: backend.find_latest("in", "/data/ref"),
             "find_latest_many": lambda: backend.find_latest_many("in", ["/data/ref", "/data/raw"]),
             "find_places_many": lambda: backend.find_places_many("in", ["/data/ref"])}
    try:
        with pytest.raises(IndexTampered, match="record number 99"):
            calls[read]()
    finally:
        backend.close()


def test_log_of_a_run_proves_only_the_records_it_shows(tmp_path):
    """`log --run RUN -n N` reads the run's last N records from the end of its index range (a
    run of 100,000 tasks is not proved whole to show 20), says how many there are, and
    refuses a shown record whose run the index misstates."""
    db = tmp_path / "ledger.db"
    url = _build(db)  # run-0: records 0, 2, 4, 6, 8
    shown = run_cli("log", "--run", "run-0", "-n", "2", "--json", "--ledger", url, cwd=tmp_path, check_rc=0)
    import json

    assert [json.loads(line)["task_id"] for line in shown.stdout.splitlines()] == ["task-6", "task-8"]
    assert "showing the last 2 of 5 records" in shown.stderr
    every = run_cli("log", "--run", "run-0", "-n", "0", "--json", "--ledger", url, cwd=tmp_path, check_rc=0)
    assert len(every.stdout.splitlines()) == 5 and "showing" not in every.stderr
    _index_edit(db, "UPDATE ll_records SET run_id = 'run-0' WHERE seq = 7")
    refused = run_cli("log", "--run", "run-0", "-n", "2", "--ledger", url, cwd=tmp_path)
    assert refused.returncode == 1 and "belongs to run 'run-1'" in refused.stderr, refused
