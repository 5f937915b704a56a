"""The command line as users meet it: real subprocesses, a real SQLite ledger, real files."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from tests.conftest import made_once, run_cli


def _pipeline(cli, workdir):
    (workdir / "raw.txt").write_text("pear\napple\nfig\n")
    cli("run", "-i", "raw.txt", "-o", "sorted.txt", "-n", "sort", "--run-id", "r1", "-p", "order=asc",
        "--", "sh", "-c", "sort raw.txt > sorted.txt", check_rc=0)
    cli("run", "-i", "sorted.txt", "-o", "top.txt", "-n", "head", "--run-id", "r1",
        "--", "sh", "-c", "head -n 1 sorted.txt > top.txt", check_rc=0)


@pytest.fixture
def workdir(shared_workdir):
    """At one path for the module's tests: ``pipeline`` is made once and put back there."""
    return shared_workdir


#: The two recorded steps most tests here start from, made once per module and put back for
#: each (conftest's made_once: 18 tests ran these two ``run`` processes each). The test of an
#: edit that keeps mtime and size runs them itself: the copies have new inodes and ctimes, on
#: which the stat cache it tests is keyed, so a copy would rehash whatever the cache did.
pipeline = made_once(_pipeline, "pipeline")


def test_run_records_and_verify_passes_with_the_tree(cli, workdir, pipeline):
    result = cli("top.txt", program="verify-lineage", check_rc=0)
    assert "verified" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("top.txt") and " OK " in line and "cli:head" in line for line in lines)
    assert any("sorted.txt" in line and "cli:sort" in line for line in lines)
    assert any("raw.txt" in line and "(source)" in line for line in lines)
    # the same through `lineage-ledger verify`, as JSON
    data = json.loads(cli("verify", "--json", "top.txt", check_rc=0).stdout)
    assert data["ok"] and data["chain"]["records"] == 2
    assert data["targets"][0]["lineage"]["inputs"][0]["inputs"][0]["kind"] == "source"


def test_edit_keeping_mtime_and_size_is_caught(cli, workdir):
    _pipeline(cli, workdir)
    sorted_file = workdir / "sorted.txt"
    before = os.stat(sorted_file)
    sorted_file.write_text(sorted_file.read_text().replace("apple", "APPLE"))  # same size
    os.utime(sorted_file, ns=(before.st_atime_ns, before.st_mtime_ns))  # like touch -r
    assert os.stat(sorted_file).st_size == before.st_size
    result = cli("top.txt", program="verify-lineage")
    assert result.returncode == 1, result.stdout
    assert "sorted.txt: MODIFIED" in result.stdout
    data = json.loads(cli("verify", "--json", check_rc=1).stdout)  # the whole-ledger audit too
    assert any(f["path"].endswith("sorted.txt") for f in data["failures"])


def test_tampered_database_row_is_detected(cli, workdir, pipeline):
    db = sqlite3.connect(workdir / ".lineage" / "ledger.db")
    db.execute("UPDATE ll_records SET body = replace(body, 'asc', 'dsc')")
    db.commit()
    db.close()
    result = cli("verify", check_rc=1)
    assert "RecordTampered" in result.stdout or "does not hash" in result.stdout + result.stderr


@pytest.mark.parametrize("statement", [
    "DELETE FROM ll_records WHERE seq = 0",
    # (an id that already starts with "ab" gets "cd": the statement must change the row)
    "UPDATE ll_records SET id = (CASE WHEN id LIKE 'ab%' THEN 'cd' ELSE 'ab' END) || substr(id, 3) WHERE seq = 1",
    "UPDATE ll_blocks SET header = replace(header, 'merkle_root', 'merkle_rooT')",
    "UPDATE ll_records SET seq = seq + 100 WHERE seq = 0",
])
def test_rows_removed_or_rewritten_are_detected(cli, workdir, statement, pipeline):
    db = sqlite3.connect(workdir / ".lineage" / "ledger.db")
    db.execute(statement)
    db.commit()
    db.close()
    result = cli("verify", "--json")
    assert result.returncode == 1, (result.stdout, result.stderr)
    failure = json.loads(result.stdout)["failures"][0]
    assert failure["height"] == 0 or statement.startswith("UPDATE ll_records SET id")
    assert failure["error"] in {"ChainBroken", "MerkleMismatch", "RecordTampered"}


def test_failed_command_is_recorded_as_failed_with_its_exit_status(cli, workdir):
    (workdir / "in.txt").write_text("x")
    result = cli("run", "-i", "in.txt", "-o", "never.txt", "--", "sh", "-c", "exit 7")
    assert result.returncode == 7
    log = [json.loads(line) for line in cli("log", "--json", check_rc=0).stdout.splitlines()]
    assert log[-1]["status"] == "failed" and log[-1]["extra"]["returncode"] == 7
    assert log[-1]["outputs"] == {}


def test_log_show_why_depends_hash(cli, workdir, pipeline):
    log = cli("log", check_rc=0).stdout.splitlines()
    assert len(log) == 2 and "cli:sort" in log[0] and "cli:head" in log[1]
    entries = [json.loads(line) for line in cli("log", "--json", "--run", "r1", check_rc=0).stdout.splitlines()]
    assert [e["task_name"] for e in entries] == ["sort", "head"]
    assert entries[0]["parameters"] == {"order": "asc"}
    shown = json.loads(cli("show", entries[0]["id"][:10], check_rc=0).stdout)
    assert shown["id"] == entries[0]["id"]
    assert shown["record"]["outputs"][str(workdir / "sorted.txt")]["size"] == len("apple\nfig\npear\n")
    why = cli("why", "top.txt", check_rc=0).stdout
    assert "sorted.txt" in why and "raw.txt" in why
    depends = cli("depends", "raw.txt", check_rc=0).stdout
    assert "sorted.txt" in depends and "top.txt" in depends
    hashed = cli("hash", "raw.txt", check_rc=0).stdout.split()
    from lineage_ledger import hash_file

    assert hashed[0] == hash_file(workdir / "raw.txt").blake3


def test_hash_uses_the_stat_cache_and_rehash_forces(cli, workdir):
    (workdir / "tree").mkdir()
    for i in range(5):
        (workdir / "tree" / f"f{i}").write_text(str(i))
    first = cli("hash", "--json", "tree", check_rc=0).stdout
    assert len(first.splitlines()) == 5
    assert (workdir / ".lineage" / "statcache.db").exists()
    assert cli("hash", "--json", "tree", check_rc=0).stdout == first
    assert cli("hash", "--json", "--rehash", "tree", check_rc=0).stdout == first


def test_ledger_url_from_environment(cli, workdir):
    (workdir / "a").write_text("a")
    cli("run", "-o", "a2", "--", "cp", "a", "a2", env={"LINEAGE_LEDGER_URL": f"sqlite:///{workdir}/env.db"}, check_rc=0)
    assert (workdir / "env.db").exists() and not (workdir / ".lineage" / "ledger.db").exists()


# -- bad input: a clear message, exit 2, nothing lost -----------------------------------------
def _count(workdir) -> int:
    db = sqlite3.connect(workdir / ".lineage" / "ledger.db")
    try:
        return db.execute("SELECT count(*) FROM ll_records").fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize(
    "url, message",
    [("sqlite:/no-slashes.db", "malformed ledger URL"), ("nosuch://x", "no ledger back-end for scheme 'nosuch'"),
     ("", "empty ledger URL")],
)
def test_bad_urls(cli, url, message):
    result = cli("log", "--ledger", url)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_extra_gives_the_install_hint(workdir):
    import subprocess
    import sys

    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from lineage_ledger._cli.main import main; sys.argv = ['lineage-ledger', 'log', '--ledger',"
            " 'postgresql://u@127.0.0.1:1/db']; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 2
    assert "pip install 'lineage-ledger[postgres]'" in result.stderr


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_database(cli, workdir, damage, pipeline):
    db = workdir / ".lineage" / "ledger.db"
    if damage == "garbage":
        db.write_bytes(b"this is not a database at all" * 100)
    else:
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    result = cli("verify")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "corrupt or truncated" in result.stderr and "Traceback" not in result.stderr


def test_truncated_spool_is_reported_and_nothing_is_lost(cli, workdir, pipeline):
    from lineage_ledger import open_ledger

    # Another spelling of the same file must find the same spool (keyed by the store's identity).
    ledger = open_ledger(f"sqlite:///{workdir}/.lineage/../.lineage/ledger.db", spool=str(workdir / ".lineage" / "spool"))
    spool = ledger.spool_dir
    ledger.close()
    with open(os.path.join(spool, "4242-cafe0000-00000001.log"), "wb") as handle:
        handle.write(b"0123456789abcdef truncated in the middle of a rec")
    assert cli("verify", check_rc=0)  # reading the ledger neither replays nor needs the spool
    result = cli("spool", "ship")  # the writers' side reports what it set aside
    assert result.returncode == 2 and "quarantine" in result.stderr, result
    assert cli("spool", "ship", check_rc=0)
    assert cli("verify", check_rc=0)
    assert _count(workdir) == 2


def _without_root_file_powers() -> dict:
    """Root ignores file modes; without these two capabilities it must obey them."""
    if os.geteuid() != 0:
        return {}
    return {"prefix": ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")}


# A directory is an input like a file now (tests/test_directories.py); a FIFO is not.
@pytest.mark.parametrize("case", ["missing", "fifo", "symlink loop", "non-UTF-8 name", "permission denied"])
def test_unhashable_inputs_stop_before_running(cli, workdir, case, pipeline):
    extra: dict = {}
    if case == "missing":
        target, expected = "nope.txt", "no such file"
    elif case == "fifo":
        os.mkfifo(workdir / "afifo")
        target, expected = "afifo", "is not a regular file"
    elif case == "symlink loop":
        os.symlink("loop-b", workdir / "loop-a")
        os.symlink("loop-a", workdir / "loop-b")
        target, expected = "loop-a", "symbolic link loop"
    elif case == "non-UTF-8 name":
        target = os.fsencode(str(workdir)) + b"/caf\xe9.txt"
        with open(target, "wb") as handle:
            handle.write(b"latin-1 named file")
        expected = "not valid UTF-8"
    else:
        secret = workdir / "secret.txt"
        secret.write_text("s")
        secret.chmod(0)
        target, expected = "secret.txt", "permission denied"
        extra = _without_root_file_powers()
    marker = workdir / "ran"
    result = run_cli("run", "-i", target, "-o", "out", "--", "touch", str(marker), cwd=workdir, **extra)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()  # the command did not run on bad input
    assert _count(workdir) == 2  # and nothing recorded before was lost
    assert cli("top.txt", program="verify-lineage").returncode == 0


def test_directory_given_as_ledger_file(cli, workdir):
    (workdir / "dbdir").mkdir()
    result = cli("log", "--ledger", "sqlite:///dbdir")
    assert result.returncode == 2 and "is a directory" in result.stderr


def test_unrecorded_target_fails_verification(cli, workdir, pipeline):
    (workdir / "stray.txt").write_text("nobody made me")
    result = cli("stray.txt", program="verify-lineage")
    assert result.returncode == 1 and "UNRECORDED" in result.stdout


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, lineage_ledger\n"
            "heavy = [m for m in ('sqlalchemy', 'snakemake', 'parsl', 'airflow', 'mpi4py', 'grpc', 'psycopg')"
            " if m in sys.modules]\nprint(heavy)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_unknown_missing_target_is_a_usage_error(cli, workdir, pipeline):
    result = cli("reslts/final.txt", program="verify-lineage")
    assert result.returncode == 2 and "no record in the ledger mentions it" in result.stderr


def test_forged_row_outside_any_block_cannot_vouch_for_an_edited_file(cli, workdir, pipeline):
    """A self-consistent record slipped into the tables, outside the chain, is not trusted."""
    sorted_file = workdir / "sorted.txt"
    sorted_file.write_text("forged\n")
    from lineage_ledger import Record, hash_file, utcnow

    forged = Record(engine="cli", run_id="x", task_id="x", task_name="sort", status="succeeded",
                    started=utcnow(), ended=utcnow(), outputs=[hash_file(sorted_file)])
    stored = forged.stored()
    db = sqlite3.connect(workdir / ".lineage" / "ledger.db")
    db.execute("INSERT INTO ll_records VALUES (1000000000, ?, 99, 0, 'x', ?)", (stored.id, stored.body))
    db.execute("INSERT INTO ll_artifacts (path, role, seq, digest, ended) VALUES (?, 1, 1000000000, ?, ?)",
               (str(sorted_file), stored.outputs[0][1], stored.ended))
    db.commit()
    db.close()
    result = cli("verify", "--json", "sorted.txt")
    assert result.returncode == 1, result.stdout
    assert "outside the chain" in result.stdout


def test_deleted_block_row_is_a_gap_not_the_end_of_the_chain(workdir):
    from lineage_ledger import ChainBroken, open_ledger
    from tests.support.factories import make_records

    ledger = open_ledger(f"sqlite:///{workdir}/l.db", spool=str(workdir / "spool"))
    ledger.append_records([r.stored() for r in make_records(600)], block_size=1)
    db = sqlite3.connect(workdir / "l.db")
    db.execute("DELETE FROM ll_blocks WHERE height = 499")
    db.commit()
    db.close()
    with pytest.raises(ChainBroken) as caught:
        ledger.verify_chain()
    assert caught.value.height == 499


def test_output_of_a_failed_task_does_not_verify(cli, workdir):
    result = cli("run", "-o", "out.txt", "--", "sh", "-c", "echo partial > out.txt; exit 1")
    assert result.returncode == 1
    verify = cli("out.txt", program="verify-lineage")
    assert verify.returncode == 1 and "produced by a failed task" in verify.stdout


def test_file_edited_then_read_by_a_recorded_task_is_broken_lineage(cli, workdir, pipeline):
    (workdir / "sorted.txt").write_text("edited by hand\n")
    cli("run", "-i", "sorted.txt", "-o", "copy.txt", "--", "cp", "sorted.txt", "copy.txt", check_rc=0)
    result = cli("verify", "--json", "sorted.txt")
    assert result.returncode == 1
    assert any(f["error"] == "LineageBroken" for f in json.loads(result.stdout)["failures"])


def test_unrecordable_parameter_is_refused_before_running(cli, workdir):
    marker = workdir / "ran"
    result = run_cli("run", "-p", b"k=\xff", "--", "touch", str(marker), cwd=workdir)
    assert result.returncode == 2 and "--param" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_directory_target_skips_links_to_directories(cli, workdir, pipeline):
    os.symlink(workdir, workdir / "loop-to-self")
    os.symlink(workdir / "gone", workdir / "dangling")
    result = cli("verify", "--json", "raw.txt", "sorted.txt", "top.txt")
    assert result.returncode == 0
    (workdir / "out").mkdir()
    os.symlink(workdir / "out", workdir / "out" / "again")
    os.replace(workdir / "top.txt", workdir / "out" / "top.txt")
    result = cli("verify", "out")
    assert result.returncode == 1 and "UNRECORDED" in result.stdout  # a moved file is a new path


def test_last_seen_goes_by_task_time_not_arrival(workdir):
    from datetime import timedelta

    from lineage_ledger import open_ledger
    from tests.support.factories import BASE_TIME, artifact, make_record

    ledger = open_ledger(f"sqlite:///{workdir}/l.db", spool=str(workdir / "spool"))
    newer = make_record(2, outputs=[artifact("/data/f", "v2")])
    older = make_record(1, outputs=[artifact("/data/f", "v1")])  # a stale spool, replayed late
    ledger.record(newer)
    ledger.record(older)
    entry, role, seen = ledger.last_seen("/data/f")
    assert entry.record.task_id == "task-2" and seen == artifact("/data/f", "v2").entry()
    assert older.ended < newer.ended == BASE_TIME + timedelta(seconds=3)


def test_read_only_ledger_copy_verifies(cli, workdir, tmp_path_factory, pipeline):
    """An archived, read-only copy of a ledger (and a read-only directory) still verifies."""
    import shutil

    archive = tmp_path_factory.mktemp("archive")
    shutil.copy(workdir / ".lineage" / "ledger.db", archive / "ledger.db")
    os.chmod(archive / "ledger.db", 0o444)
    os.chmod(archive, 0o555)
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--") if os.geteuid() == 0 else ()
    try:
        result = run_cli(str(workdir / "top.txt"), "--ledger", f"sqlite:///{archive}/ledger.db", program="verify-lineage",
                         cwd=archive, prefix=prefix)
    finally:
        os.chmod(archive, 0o755)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "verified" in result.stdout


def test_migrate_of_a_mistyped_path_creates_nothing(cli, workdir):
    result = cli("migrate", "--ledger", "sqlite:///no/such/lejer.db")
    assert result.returncode == 2, result.stderr
    assert "no ledger at" in result.stderr
    assert not (workdir / "no").exists()
    empty = workdir / "empty.db"
    empty.touch()
    result = cli("migrate", "--ledger", str(empty))
    assert result.returncode == 2 and "no ledger at" in result.stderr, result.stderr
    assert empty.stat().st_size == 0
