"""Issue #14's acceptance, re-run as its author would (helper-153, forty-eighth session).

Everything goes through the commands a user runs (``tests.conftest.run_cli``) on real SQLite
ledgers recorded with ``lineage-ledger run``. Each test edits what an attacker who can write
the database file edits (the index tables, or the tail of the chain, rewritten consistently
by the product's own append), after the user's account verified the ledger once, and
requires what the issue requires: an index row that disagrees with its record is a failure
(exit 1), never an answer; a rewritten history fails in every command.

Findings of this session, each failing on the code before 92862e1 (which fixed all but one:
``verify-lineage DIR`` of a gone output whose index row was deleted, fixed in the fifty-second
session by counting the directory's listing against the names kept): ``depends -n N`` hid a
reader of a walked file version, or of a full first page, whose index row was edited, deleted
or moved past the head; ``show`` of a verified record gone from the store said "no record";
``lineage-ledger migrate`` refused the schema-2 ledger it is named to migrate.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import run_cli

#: The readers of ``v.txt``: five tasks (r1..r5), each writing its own ``o<i>.txt``.
READERS = 5


def _record(cwd: Path, name: str, inputs: list[str], outputs: list[str], *, env: dict | None = None,
            command: str | None = None) -> str:
    """One task recorded by ``lineage-ledger run``; returns its record id (12 hex digits)."""
    args = ["run", "-n", name]
    for path in inputs:
        args += ["-i", path]
    for path in outputs:
        args += ["-o", path]
    shell = command or "; ".join(f"cat {' '.join(inputs)} > {out}; echo {out} >> {out}" for out in outputs)
    result = run_cli(*args, "--", "sh", "-c", shell, cwd=cwd, env=env, check_rc=0)
    return result.stderr.split("recorded ", 1)[1].split()[0]


def _readers_of_one_version(work: Path, env: dict) -> dict[str, str]:
    """``src.txt -> w -> v.txt``, then five readers of ``v.txt``: a file version with more
    readers than ``depends -n 3`` shows. Returns the record ids by task."""
    (work / "src.txt").write_text("source\n")
    ids = {"w": _record(work, "w", ["src.txt"], ["v.txt"], env=env)}
    for i in range(1, READERS + 1):
        ids[f"r{i}"] = _record(work, f"r{i}", ["v.txt"], [f"o{i}.txt"], env=env)
    return ids


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The SQLite ledger of :func:`_readers_of_one_version`, in ``.lineage/`` of its directory."""
    work = tmp_path_factory.mktemp("acceptance-s48")
    state = tmp_path_factory.mktemp("acceptance-s48-builder-state")
    return work, _readers_of_one_version(work, {"LINEAGE_STATE_DIR": str(state)})


def _verified_copy(work: Path, directory: Path, env: dict | None = None) -> str:
    database = directory / "ledger.db"
    shutil.copyfile(work / ".lineage" / "ledger.db", database)
    url = f"sqlite:///{database}"
    run_cli("--ledger", url, cwd=work, env=env, program="verify-lineage", check_rc=0)
    return url


@pytest.fixture
def ledger(recorded, tmp_path) -> tuple[Path, str, dict[str, str]]:
    """A copy of the recorded ledger that this test's account has verified once (its head is
    remembered): the state a workstation is in when someone edits the database."""
    work, ids = recorded
    return work, _verified_copy(work, tmp_path), ids


def _edit(url: str, sql: str) -> None:
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    with connection:
        connection.executescript(sql)
    connection.close()


def _seq_of(url: str, record_prefix: str) -> int:
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        (seq,) = connection.execute("SELECT seq FROM ll_records WHERE id LIKE ?", (record_prefix + "%",)).fetchone()
    finally:
        connection.close()
    return int(seq)


# -- index rows of one reader, edited: depends must not drop it -------------------------------
EDITS_OF_A_READERS_ROW = {
    "digest": "UPDATE ll_artifacts SET digest = '{zeros}' WHERE seq = {seq} AND role = 0",
    "path": "UPDATE ll_artifacts SET path = path || '.moved' WHERE seq = {seq} AND role = 0",
    "deleted": "DELETE FROM ll_artifacts WHERE seq = {seq} AND role = 0",
    "seq past the head": "UPDATE ll_artifacts SET seq = 1000000 WHERE seq = {seq} AND role = 0",
}


def _reader_hidden(ledger, edit: str, *args: str):
    work, url, ids = ledger
    before = run_cli("depends", "--ledger", url, *args, cwd=work, check_rc=0)
    assert ids["r2"] in before.stdout  # r2 is among the oldest readers shown
    _edit(url, EDITS_OF_A_READERS_ROW[edit].format(zeros="0" * 64, seq=_seq_of(url, ids["r2"])))
    return run_cli("depends", "--ledger", url, *args, cwd=work), ids["r2"]


@pytest.mark.parametrize("edit", sorted(EDITS_OF_A_READERS_ROW))
def test_depends_of_a_source_lists_every_oldest_reader_of_the_version_it_walks_to(ledger, edit):
    # The page of one version's readers was looked up by (path, digest) and checked by nothing.
    result, hidden = _reader_hidden(ledger, edit, "-n", "3", "src.txt")
    assert result.returncode == 1 or (result.returncode == 0 and hidden in result.stdout), (
        result.returncode, result.stdout, result.stderr)


@pytest.mark.postgres
def test_depends_on_postgres_lists_every_oldest_reader_of_the_version_it_walks_to(tmp_path, postgres_url):
    import psycopg

    env = {"LINEAGE_LEDGER_URL": postgres_url}
    ids = _readers_of_one_version(tmp_path, env)
    run_cli("--ledger", postgres_url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    before = run_cli("depends", "-n", "3", "src.txt", cwd=tmp_path, env=env, check_rc=0)
    assert ids["r2"] in before.stdout
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE ll_artifacts SET digest = %s WHERE role = 0 AND seq = "
                           "(SELECT seq FROM ll_records WHERE id LIKE %s)", ("0" * 64, ids["r2"] + "%"))
    result = run_cli("depends", "-n", "3", "src.txt", cwd=tmp_path, env=env)
    assert result.returncode == 1 or (result.returncode == 0 and ids["r2"] in result.stdout), (
        result.returncode, result.stdout, result.stderr)


def test_depends_full_first_page_of_a_file_hides_no_reader_whose_row_moved_past_the_head(ledger):
    # The row past the head was left out as appended meanwhile, yet counted in the rest.
    result, hidden = _reader_hidden(ledger, "seq past the head", "-n", "3", "v.txt")
    assert result.returncode == 1 or (result.returncode == 0 and hidden in result.stdout), (
        result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("edit", ["path", "deleted"])
def test_depends_full_first_page_of_a_file_refuses_a_readers_row_deleted_or_moved(ledger, edit):
    # The same page as above with the row gone from the path: the count of the rest catches it.
    result, _ = _reader_hidden(ledger, edit, "-n", "3", "v.txt")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "IndexTampered" in result.stderr or "index" in result.stderr.lower()


@pytest.mark.parametrize("edit", ["deleted", "id edited"])
def test_show_of_a_verified_record_removed_from_the_store_is_a_failure_not_no_such_record(ledger, edit):
    """Found by helper-153 (s48): `show` answered 'no record with id ...', exit 2, as for an id
    never recorded, where log/why/depends exit 1; fixed in 92862e1 for a full id (a prefix's
    'no record' now says the stored ids were not checked)."""
    work, url, ids = ledger
    seq = _seq_of(url, ids["r2"])
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    (full_id,) = connection.execute("SELECT id FROM ll_records WHERE seq = ?", (seq,)).fetchone()
    connection.close()
    _edit(url, f"DELETE FROM ll_artifacts WHERE seq = {seq}; DELETE FROM ll_records WHERE seq = {seq}"
          if edit == "deleted" else f"UPDATE ll_records SET id = 'ffff' || substr(id, 5) WHERE seq = {seq}")
    assert run_cli("log", "--ledger", url, "-n", "0", cwd=work).returncode == 1  # the others say so
    result = run_cli("show", "--ledger", url, full_id, cwd=work)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)


def test_a_gone_output_whose_index_row_was_deleted_is_still_named_by_verify_of_its_directory(tmp_path):
    (tmp_path / "src.txt").write_text("s\n")
    (tmp_path / "res").mkdir()
    ids = [_record(tmp_path, f"t{i}", ["src.txt"], [f"res/o{i}.txt"]) for i in range(3)]
    run_cli(cwd=tmp_path, program="verify-lineage", check_rc=0)
    (tmp_path / "res" / "o1.txt").unlink()  # a result deleted since
    before = run_cli("--json", "res", cwd=tmp_path, program="verify-lineage", check_rc=0)
    assert "o1.txt" in before.stdout and "absent" in before.stdout
    url = f"sqlite:///{tmp_path}/.lineage/ledger.db"
    _edit(url, f"DELETE FROM ll_artifacts WHERE role = 1 AND seq = {_seq_of(url, ids[1])}")
    after = run_cli("--json", "res", cwd=tmp_path, program="verify-lineage")
    assert after.returncode == 1 or (after.returncode == 0 and "o1.txt" in after.stdout), (
        after.returncode, after.stdout, after.stderr)


# Edits of the index row of an output below the directory verified, o1.txt (gone from disk).
DIRECTORY_EDITS = {
    "deleted": "DELETE FROM ll_artifacts WHERE role = 1 AND seq = {seq} AND path LIKE '%/o1.txt'",
    "moved out of the directory": "UPDATE ll_artifacts SET path = replace(path, '/res/', '/elsewhere/') "
                                  "WHERE role = 1 AND seq = {seq} AND path LIKE '%/o1.txt'",
    "renamed within the directory": "UPDATE ll_artifacts SET path = path || '.x' "
                                    "WHERE role = 1 AND seq = {seq} AND path LIKE '%/o1.txt'",
    "role flipped": "UPDATE ll_artifacts SET role = 0 WHERE role = 1 AND seq = {seq} AND path LIKE '%/o1.txt'",
    "a row added": "INSERT INTO ll_artifacts SELECT replace(path, 'o1.txt', 'ghost.txt'), role, seq, digest, ended "
                   "FROM ll_artifacts WHERE role = 1 AND seq = {seq} AND path LIKE '%/o1.txt'",
    "every row of the record deleted, its files gone": "DELETE FROM ll_artifacts WHERE seq = {seq}",
}


@pytest.mark.parametrize("edit", list(DIRECTORY_EDITS))
def test_an_edited_index_row_below_a_verified_directory_fails_or_the_gone_file_is_named(tmp_path, edit):
    """Each edit of the row that says a verified record wrote res/o1.txt, a file gone since:
    ``verify-lineage res`` exits 1 saying the index disagrees, or names o1.txt as not on disk;
    never exit 0 without it."""
    (tmp_path / "res" / "deep").mkdir(parents=True)
    (tmp_path / "res" / "src.txt").write_text("s\n")
    ids = [_record(tmp_path, f"t{i}", ["res/src.txt"], [f"res/o{i}.txt", f"res/deep/d{i}.txt"]) for i in range(3)]
    run_cli(cwd=tmp_path, program="verify-lineage", check_rc=0)
    (tmp_path / "res" / "o1.txt").unlink()
    if edit.startswith("every row"):
        (tmp_path / "res" / "deep" / "d1.txt").unlink()  # two levels down: counted at every depth
    url = f"sqlite:///{tmp_path}/.lineage/ledger.db"
    _edit(url, DIRECTORY_EDITS[edit].format(seq=_seq_of(url, ids[1])))
    after = run_cli("--json", "res", cwd=tmp_path, program="verify-lineage")
    if after.returncode == 1:
        assert "index" in after.stdout + after.stderr, (after.stdout, after.stderr)
    else:
        assert after.returncode == 0 and "o1.txt" in after.stdout, (after.returncode, after.stdout, after.stderr)


# -- every read command on edited index rows: exit 1 or the answer of the intact ledger -------
EDITS = {
    "producer's output path": "UPDATE ll_artifacts SET path = path || '.x' WHERE seq = {w} AND role = 1",
    "reader's role flipped": "UPDATE ll_artifacts SET role = 1 WHERE seq = {r5} AND role = 0",
    "end time moved back": "UPDATE ll_artifacts SET ended = '2020-01-01T00:00:00.000000Z' WHERE seq = {r5}",
    "record's height": "UPDATE ll_records SET height = 0 WHERE seq = {r5}",
    "record's run id": "UPDATE ll_records SET run_id = (SELECT run_id FROM ll_records WHERE seq = {w}) "
                       "WHERE seq = {r5}",
    "producer's rows deleted": "DELETE FROM ll_artifacts WHERE seq = {w}",
    "a row added": "INSERT INTO ll_artifacts SELECT path, 1, {r5}, digest, ended FROM ll_artifacts "
                   "WHERE seq = {w} AND role = 1",
}


def _read(name: str, work: Path, url: str, ids: dict[str, str], env: dict | None = None):
    """One read command of the issue's list, as a user types it."""
    if name == "verify-lineage":
        return run_cli("--ledger", url, work / "o5.txt", work / "v.txt", cwd=work, env=env, program=name)
    if name == "pre-run check":  # what the plugins call before a task of three inputs runs
        inputs = [str(work / f) for f in ("v.txt", "o5.txt", "src.txt")]
        check = (f"import sys; from lineage_ledger import verify_before_run; "
                 f"problems = verify_before_run({url!r}, {inputs!r}, 'strict'); print(problems); "
                 f"sys.exit(1 if problems else 0)")
        return run_cli("-c", check, cwd=work, env=env, program="python")
    command, *args = {"why": ["why", "o5.txt"], "depends": ["depends", "src.txt"], "log": ["log", "-n", "0"],
                      "show": ["show", ids["r5"]]}[name]
    return run_cli(command, "--ledger", url, *args, cwd=work, env=env)


READS = ("why", "depends", "log", "show", "verify-lineage", "pre-run check")


@pytest.fixture(scope="module")
def answers_before(recorded, tmp_path_factory) -> dict[str, str]:
    """What each read command answers on the intact ledger (once for the module)."""
    work, ids = recorded
    env = {"LINEAGE_STATE_DIR": str(tmp_path_factory.mktemp("acceptance-s48-intact-state"))}
    url = _verified_copy(work, tmp_path_factory.mktemp("acceptance-s48-intact"), env)
    answers = {name: _read(name, work, url, ids, env) for name in READS}
    assert all(result.returncode == 0 for result in answers.values()), answers
    return {name: result.stdout for name, result in answers.items()}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_read_command_answers_as_before_or_refuses_an_edited_index(ledger, answers_before, edit):
    work, url, ids = ledger
    seqs = {name: _seq_of(url, record) for name, record in ids.items()}
    _edit(url, EDITS[edit].format(**seqs))
    for name in READS:
        after = _read(name, work, url, ids)
        assert after.returncode in (0, 1), (name, after.returncode, after.stderr)
        if after.returncode == 0:  # an answer: the intact ledger's, to the byte
            assert after.stdout == answers_before[name], (name, after.stdout, answers_before[name])


# -- a consistent rewrite of the tail -------------------------------------------------------
def test_a_tail_rewritten_by_the_products_own_append_fails_everywhere(tmp_path):
    """The last block deleted and a forged record appended by another account: a chain that is
    consistent in itself. The account that verified before fails in every command, exit 1,
    until reset-trust; a fresh account fails against a signed checkpoint published before."""
    work, user, other = tmp_path / "work", tmp_path / "user-state", tmp_path / "attacker-state"
    work.mkdir()
    (work / "a.txt").write_text("a\n")
    as_user, as_other = {"LINEAGE_STATE_DIR": str(user)}, {"LINEAGE_STATE_DIR": str(other)}
    for i in range(3):
        _record(work, f"t{i}", ["a.txt"], [f"b{i}.txt"], env=as_user)
    run_cli("keygen", "lab.key", cwd=work, env=as_user, check_rc=0)
    run_cli("checkpoint", "--key", "lab.key", "-o", "cp.txt", cwd=work, env=as_user, check_rc=0)

    _edit(f"sqlite:///{work}/.lineage/ledger.db",
          "DELETE FROM ll_artifacts WHERE seq = 2; DELETE FROM ll_records WHERE seq = 2; "
          "DELETE FROM ll_blocks WHERE height = 2")
    _record(work, "t2", ["a.txt"], ["b2.txt"], env=as_other, command="echo forged > b2.txt")
    _record(work, "t3", ["a.txt"], ["b3.txt"], env=as_other)  # and it grew past the checkpoint
    assert run_cli(program="verify-lineage", cwd=work, env=as_other).returncode == 0  # consistent in itself

    for args, program in ((["b2.txt"], "verify-lineage"), ([], "verify-lineage"), (["why", "b2.txt"], None),
                          (["log"], None)):
        result = run_cli(*args, cwd=work, env=as_user, program=program or "lineage-ledger")
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "rewritten" in result.stdout + result.stderr
    fresh = {"LINEAGE_STATE_DIR": str(tmp_path / "fresh-state")}
    against = run_cli("--against", "cp.txt", "--pubkey", "lab.key.pub", cwd=work, env=fresh, program="verify-lineage")
    assert against.returncode == 1, (against.stdout, against.stderr)
    assert "not an extension of the checkpoint" in against.stdout

    run_cli("reset-trust", cwd=work, env=as_user, check_rc=0)  # a deliberate restore, say
    assert run_cli(program="verify-lineage", cwd=work, env=as_user).returncode == 0
    assert run_cli("--against", "cp.txt", "--pubkey", "lab.key.pub", cwd=work, env=as_user,
                   program="verify-lineage").returncode == 1


# -- schema 2: the one command the refusal names --------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_migrate_command_that_readers_name_migrates_a_schema_2_ledger(tmp_path, request, backend):
    # It opened the ledger for reading first (to refuse a mistyped path), and readers refuse schema 2.
    from tests.backend_conformance import chain_of
    from tests.test_sql_store import build_schema_2, mixed_records

    url = f"sqlite:///{tmp_path}/old.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    build_schema_2(url, chain_of(mixed_records(), 7))
    refused = run_cli("log", "--ledger", url, cwd=tmp_path)
    assert refused.returncode == 2 and "lineage-ledger migrate --ledger" in refused.stderr
    migrated = run_cli("migrate", "--ledger", url, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage").returncode == 0


# -- a read-only mount of a copy taken with its -wal ------------------------------------------
def test_a_copy_with_its_wal_on_a_read_only_mount_verifies_every_record_and_writes_nothing(tmp_path):
    """Item 6: the copy is taken while another process holds the ledger open, so the last
    records are in ``ledger.db-wal`` only; the directory is then bind-mounted read-only (in a
    mount namespace of the command's own, so nothing outlives it)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux)")
    work, copy, mounted = tmp_path / "work", tmp_path / "copy", tmp_path / "mnt"
    for directory in (work, copy, mounted):
        directory.mkdir()
    (work / "a.txt").write_text("a\n")
    state = {"LINEAGE_STATE_DIR": str(tmp_path / "state")}
    _record(work, "t0", ["a.txt"], ["b0.txt"], env=state)
    holder = sqlite3.connect(work / ".lineage" / "ledger.db")  # keeps the WAL from being checkpointed away
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM ll_records").fetchall()
        for i in range(1, 4):
            _record(work, f"t{i}", ["a.txt"], [f"b{i}.txt"], env=state)
        for name in ("ledger.db", "ledger.db-wal"):
            shutil.copyfile(work / ".lineage" / name, copy / name)
    finally:
        holder.close()
    assert (copy / "ledger.db-wal").stat().st_size > 0
    before = {path.name: path.read_bytes() for path in copy.iterdir()}
    mount = f"mount --bind {copy} {mounted} && mount -o remount,ro,bind {mounted} && exec \"$0\" \"$@\""
    probe = run_cli("--version", cwd=tmp_path, prefix=("unshare", "--mount", "sh", "-c", mount))
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {probe.stderr.strip()[-200:]}")
    result = run_cli("--ledger", f"sqlite:///{mounted}/ledger.db", cwd=work, env={"LINEAGE_STATE_DIR": str(tmp_path / "s2")},
                     program="verify-lineage", prefix=("unshare", "--mount", "sh", "-c", mount))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "4 records" in result.stdout, result.stdout
    assert {path.name: path.read_bytes() for path in copy.iterdir()} == before  # no -shm, nothing changed
