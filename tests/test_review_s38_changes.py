"""An outside review (an attacker's and a new user's) of what changed in session 38, by tests.

Looked at, with what passed (no test here): ``verify-lineage DIR`` of 1,231 and 12,031 files
(reports bounded past 1,000, caches trimmed between windows, the window's settled records,
``_inputs_walked``) against the same files checked ten at a time, on 23 tamperings of an
SQLite ledger and 8 of a PostgreSQL one (edited, deleted, added and moved index rows, a
record body, a row moved past the head, a file edited among those not shown, the input
12,000 outputs share, links, aliases): every exit status and failure agreed. ``show
--size`` and ``consistency`` refused every bad size and prefix with exit 2 and proved what
they printed (a tampered body, a moved position: exit 1).

The bugs found, each end to end through the CLI (each failed before its fix):

1. A report bounded past 1,000 files (``verify-lineage out/ emptyrec/``) called a recorded
   empty directory, or a directory holding only one, "nothing was checked" (exit 1).
2. An SQLite ledger file this user may not read (0600, another user's) was taken for one
   that is only locked: ``run`` said the record waits, exit 0, at every run.
3. ``-o /dev/shm/NAME`` (a world-writable directory under /dev) was written through: a
   link planted there was followed, and the export made under the umask (0644).
4. A PostgreSQL role that may not log in (NOLOGIN) was taken for a server that is down.
5. ``-o /proc/self/cwd/NEW`` was made under the umask (0644); an ``-o`` naming a directory,
   empty, or in a missing directory failed naming the hidden part file, not the path given.

About 10 s (the PostgreSQL case starts a server once per session).
"""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._capture.files import entries_of, manifest_records_of
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from tests.conftest import run_cli
from tests.support.faults import without_root_file_powers
from tests.support.recorded import one_task_recorded

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _task(name: str, ended: int, inputs: list[str], outputs: list[str]) -> list[Record]:
    ins, outs = [hash_file(p) for p in inputs], [hash_file(p) for p in outputs]
    record = Record(engine="test", run_id="r", task_id=name, task_name=name, status="succeeded",
                    started=T0 + timedelta(seconds=ended - 1), ended=T0 + timedelta(seconds=ended),
                    inputs=entries_of(ins), outputs=entries_of(outs))
    return [*manifest_records_of(outs), record]


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# -- 1. a bounded report and the directories under which nothing was checked -------------------
def test_a_recorded_empty_directory_given_after_1000_files_is_checked(tmp_path):
    """Bug: ``verify-lineage DIR...`` of more than 1,000 files keeps the first 1,000 targets
    and counts the rest (report.kept). ``render.unchecked_directories`` then decides whether a
    directory given was checked by looking on disk for a file in it (``_holds_a_file``), but
    a recorded directory is checked whole, as one target, whether or not it holds a file.
    Setup: 1,001 recorded files in ``out/``; a task's outputs also include ``emptyrec/``
    (recorded empty) and ``holder/inner/`` (recorded empty, in a directory no record names).
    ``verify-lineage emptyrec`` and ``verify-lineage holder`` alone: verified, exit 0.
    Impact: ``verify-lineage out emptyrec`` (or ``out holder``): "emptyrec: nothing was
    checked", FAILED, exit 1, though it was checked and verified: the answer for a directory
    depends on how many other files were given. Fix (core/_cli/render.py, trust.py): past
    the kept targets, ask the ledger whether the directory is, lies in, or holds a recorded
    artifact, as _expand's walk did (walk_tree with is_artifact)."""
    ref = _write(tmp_path / "ref.txt", "reference")
    records = []
    for i in range(1001):
        records += _task(f"t{i}", 10 + i, [ref], [_write(tmp_path / "out" / f"f{i:05d}.txt", f"out {i}")])
    (tmp_path / "emptyrec").mkdir()
    (tmp_path / "holder" / "inner").mkdir(parents=True)
    records += _task("mkdirs", 5000, [ref], [str(tmp_path / "emptyrec"), str(tmp_path / "holder" / "inner")])
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "build-state")) as ledger:
        ledger.append_records([r.stored() for r in records])
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    for given in ("emptyrec", "holder"):
        alone = run_cli("verify", given, cwd=tmp_path, env=env)
        assert alone.returncode == 0 and "nothing was checked" not in alone.stdout, alone.stdout
        many = run_cli("verify", "out", given, cwd=tmp_path, env=env)
        assert "nothing was checked" not in many.stdout, many.stdout[-600:]
        assert many.returncode == 0, many.stdout[-600:]
    # The other side: an empty directory no record names still fails after 1,000 files.
    (tmp_path / "empty").mkdir()
    empty = run_cli("verify", "out", "empty", cwd=tmp_path, env=env)
    assert empty.returncode == 1 and "empty: nothing was checked" in empty.stdout, empty.stdout[-600:]


# -- 2. a ledger this user may not read is refused for good -------------------------------------
def test_run_into_an_sqlite_ledger_this_user_may_not_read_exits_1(workdir):
    """Bug: ``permanent_refusal`` knows a read-only SQLite file (0444) and directory (0555),
    but not a file this user may not read at all: SQLite says only "unable to open database
    file" (SQLITE_CANTOPEN), which is taken for a ledger that is locked or down. Setup: the
    ledger is another user's 0600 file (what ``run`` makes: here chmod 000, run without
    root's powers). Impact: every ``run`` says "it waits there", exit 0, after the whole
    --ship-wait, and ``spool ship`` says "try again" (2): the records never reach the
    ledger and nothing says why (a misconfiguration hidden). Fix (core/_ledger/refusal.py):
    a CANTOPEN whose file exists and that this user may not read (or whose directory this
    user may not search) is "permission denied"; others stay transient."""
    # `run` waits 2 s by default (--ship-wait) for the ledger to take the record, then leaves it
    # in the spool and exits 0: on a loaded machine it could still be on its way when the ledger file is
    # made unreadable (then two records waited).
    # The wait is generous, below run_cli's 120 s so that a failure shows `run`'s own message.
    made = run_cli("run", "--ship-wait", "90", "--", "true", cwd=workdir, check_rc=0)  # the ledger exists
    assert "did not take it within" not in made.stderr, made.stderr
    db = workdir / ".lineage" / "ledger.db"
    os.chmod(db, 0)
    try:
        result = run_cli("run", "--ship-wait", "2", "--", "true", cwd=workdir, prefix=without_root_file_powers())
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert "waiting will not" in result.stderr and "lineage-ledger spool ship" in result.stderr, result.stderr
        shipped = run_cli("spool", "ship", cwd=workdir, prefix=without_root_file_powers())
        assert shipped.returncode == 1 and "waiting will not" in shipped.stderr, shipped.stderr
    finally:
        os.chmod(db, 0o600)
    run_cli("spool", "ship", cwd=workdir, check_rc=0)  # readable again: the record goes in
    listed = run_cli("log", "--json", cwd=workdir, check_rc=0)
    assert listed.stdout.count('"task_name"') == 2, listed.stdout


# -- 3. -o under /dev, in a directory anyone may write ------------------------------------------
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_an_export_to_dev_shm_is_private_and_never_follows_a_link(tmp_path):
    """Bug: ``open_output`` writes into any path under /dev or /proc (for ``-o /dev/stdout``),
    with ``open(path, "w")``. /dev/shm is a directory anyone may write (1777), where people
    put scratch files. Setup: a link ``/dev/shm/NAME.json -> victim`` planted there (by
    another user: followed where fs.protected_symlinks is 0, as on this machine; here our
    own, which that setting never stops); ``export -f prov-json -o /dev/shm/NAME.json``; and
    an export to a new ``/dev/shm/NAME2.json``. Impact: the victim is overwritten with the
    export; a new file is made under the umask (0644: any user reads the commands, users and
    hosts the ledger keeps 0600), and a failed export leaves a half file. Fix
    (core/exports/_output.py): only a path under /dev or /proc whose directory no one but
    root and this user may write (/dev, /dev/fd, /proc/self/fd) is written into; one in
    /dev/shm is made beside and renamed on, as anywhere else."""
    env = one_task_recorded(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    name = f"/dev/shm/lineage-review-{uuid.uuid4().hex[:8]}"
    link, fresh = Path(name + ".json"), Path(name + "-new.json")
    os.symlink(victim, link)
    try:
        run_cli("export", "out.txt", "-f", "prov-json", "-o", str(link), cwd=tmp_path, env=env, check_rc=0)
        run_cli("export", "out.txt", "-f", "prov-json", "-o", str(fresh), cwd=tmp_path, env=env, check_rc=0)
        assert victim.read_text() == "precious\n", "the export was written through the planted link"
        assert not link.is_symlink() and link.read_text().startswith("{")
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600, oct(os.stat(fresh).st_mode)
    finally:
        for path in (link, fresh):
            if os.path.lexists(path):
                os.unlink(path)


def test_dev_null_and_a_pipe_through_dev_fd_are_still_written_into(tmp_path):
    """The side kept: ``-o /dev/null`` (a device in /dev) and ``-o /dev/fd/1`` (a pipe the
    caller holds) are written into, never replaced."""
    env = one_task_recorded(tmp_path)
    run_cli("export", "out.txt", "-f", "prov-json", "-o", "/dev/null", cwd=tmp_path, env=env, check_rc=0)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    piped = run_cli("export", "out.txt", "-f", "prov-json", "-o", "/dev/fd/1", cwd=tmp_path, env=env,
                    check_rc=0, stdin=subprocess.DEVNULL)
    assert piped.stdout.lstrip().startswith("{"), piped.stdout[:200]


@pytest.mark.postgres
def test_run_as_a_postgres_role_that_may_not_log_in_exits_1(workdir, postgres_url):
    """Bug: ``permanent_refusal`` knows the server's refusals of a login that psycopg raises
    without a SQLSTATE (no such role or database, a failed password, no pg_hba entry) but not
    'role "x" is not permitted to log in' (a role made NOLOGIN, a group role named in the
    URL). Setup: such a role with every right on the ledger's tables. Impact: ``run`` said the
    record waits, exit 0, at every run, as for a server that is down: nothing ever reached the
    ledger and nothing said why. Fix (core/_ledger/refusal.py): that answer is a refusal for
    good, saying to check the user in the URL."""
    import psycopg

    # `run` waits 2 s by default (--ship-wait) for the ledger to take the record, then leaves it
    # in the spool and exits 0: on a loaded machine it could still be on its way when the role is
    # granted its rights on the ledger's tables (none made yet).
    # The wait is generous, below run_cli's 120 s so that a failure shows `run`'s own message.
    made = run_cli("run", "--ledger", postgres_url, "--ship-wait", "90", "--", "true", cwd=workdir,
                   check_rc=0)  # the owner makes it
    assert "did not take it within" not in made.stderr, made.stderr
    role = "nologin_" + uuid.uuid4().hex[:8]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    url = postgres_url.replace("ledger@", f"{role}@", 1)
    result = run_cli("run", "--ledger", url, "--ship-wait", "2", "--", "true", cwd=workdir)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "waiting will not" in result.stderr and "not permitted to log in" in result.stderr, result.stderr
    shipped = run_cli("spool", "ship", "--ledger", url, cwd=workdir)
    assert shipped.returncode == 1 and "waiting will not" in shipped.stderr, shipped.stderr


def test_a_new_export_through_proc_self_cwd_is_private(tmp_path):
    """Bug: a path under /proc whose directory only this user may write is written into
    with ``open(path, "w")`` even where no file is there yet: ``-o /proc/self/cwd/NAME``
    made NAME under the umask (0644), though every other new export is 0600 (the ledger's
    commands, users and hosts). Setup: ``export -f prov-json -o /proc/self/cwd/new.json``.
    Fix (core/exports/_output.py): only a name that is there (a device, /dev/stdout, a file
    the shell redirected to) is written into; a new one is made private and renamed on."""
    env = one_task_recorded(tmp_path)
    run_cli("export", "out.txt", "-f", "prov-json", "-o", "/proc/self/cwd/new.json", cwd=tmp_path, env=env,
            check_rc=0)
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o600


@pytest.mark.parametrize("where", ["adir", "nodir/x.json", ""])
def test_an_export_that_cannot_be_written_names_the_path_given(tmp_path, where):
    """Bug: since exports are made in a part file beside ``-o PATH``, an ``-o`` that names a
    directory, or lies in one that is not there, fails (exit 2) with
    "error: /abs/nodir/.lineage-export-9hiigam6.part: No such file or directory": a name
    the user never gave and cannot find. Fix (core/exports/_output.py): the error names PATH."""
    env = one_task_recorded(tmp_path)
    (tmp_path / "adir").mkdir()
    result = run_cli("export", "out.txt", "-f", "prov-json", "-o", where, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert ".part" not in result.stderr and where in result.stderr, result.stderr
    assert not [p for p in tmp_path.parent.rglob(".lineage-export-*")]
