"""An outside review of the engine plugins' pre-run checks, through the real ``snakemake``
command on the bioinformatics-shaped workflow (``tests/support/bio_workflow``: a
``directory()`` output, a ``temp()`` BAM, a rule with retries) and ``nextflow-ledger`` on
the Nextflow example, by an attacker who can write the ledger file (and, for a shared SQLite
ledger, its directory ``.lineage``) but not the user's state directory.

Each test names one bug found; a bug not fixed yet is a strict xfail whose reason says where
the fix lies. The Snakemake tests that start from the workflow's first recorded run share
it: made once for the module and put back before each (``tests/support/first_run.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from lineage_ledger import hash_file, open_ledger
from tests.support import bio_workflow
from tests.support.first_run import FirstRun, nextflow_example_run
from tests.support.snakemake import require_snakemake, run
from tests.support.tamper import tamper_keep_size_and_mtime

pytestmark = pytest.mark.slow

LOGGER = ("--logger", "ledger")


def _first_run(workflow: Path) -> None:
    bio_workflow.prepare(workflow, reads=200)
    first = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-run-id", "first", cwd=workflow)
    assert first.returncode == 0, first.stderr[-3000:]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    """The workflow's first recorded run, made once (tests/support/first_run.py)."""
    require_snakemake()
    bio_workflow.require_tools()
    return FirstRun(tmp_path_factory.mktemp("bio"), _first_run, project="wf")


@pytest.fixture
def workflow(first_run, monkeypatch) -> Path:
    """The workflow as its first run left it, its state included."""
    return first_run.put_back(monkeypatch)


def _rewrite_last_block(workflow: Path, tmp_path: Path, run_id: str, path: Path, digest: str) -> None:
    """The attacker's consistent rewrite of the last block: the same records of ``run_id``,
    with ``path`` given ``digest`` wherever they name it, appended again (ids, Merkle root and
    block id recomputed) after the block was deleted."""
    db = workflow / ".lineage" / "ledger.db"
    with open_ledger(f"sqlite:///{db}", read_only=True, state_dir=str(tmp_path / "forger-reads")) as ledger:
        records = [entry.record for entry in ledger.run(run_id)]
    forged = []
    for record in records:
        sides = {}
        for side in ("inputs", "outputs"):
            named = dict(getattr(record, side))
            if str(path) in named:
                named[str(path)] = {**named[str(path)], "blake3": digest}
            sides[side] = named
        forged.append(dataclasses.replace(record, **sides))
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        height, first = conn.execute("SELECT height, first_seq FROM ll_blocks ORDER BY height DESC LIMIT 1").fetchone()
        conn.execute("DELETE FROM ll_artifacts WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_records WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_blocks WHERE height = ?", (height,))
    with open_ledger(f"sqlite:///{db}", spool=str(tmp_path / "forger-spool"),
                     state_dir=str(tmp_path / "forger-state")) as ledger:
        ledger.append_records([record.stored() for record in forged])


def test_a_rewrite_of_the_block_the_last_run_appended_is_refused_by_strict(workflow, tmp_path):
    """Bug: a ``strict`` run checks the ledger (its head, block 0, is remembered), reruns the
    report and appends block 1 with the report's record. The attacker then edits
    ``results/report.txt`` (size and mtime kept) and rewrites block 1 consistently, the
    report's record giving the edited digest. The next ``strict`` run says "Nothing to be
    done", exit 0, and ``verify-lineage results/report.txt`` says "verified": the remembered
    head still ends on block 0, and block 1 is taken as a new extension, although this
    account's own run wrote it. docs/security.md promises detection only from a remembered
    head, and says anyone who may append can append a record claiming anything; but such a
    record shows in ``log``, while this rewrite replaces the user's own record without a
    trace. Fix: the appender (the
    recording process, under the state's lock) extends the remembered tree with the blocks
    it has just appended when they follow the remembered head; or, less tight, the plugin
    calls ``tree_head()`` on the ledger once its last records are shipped."""
    second = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict",
                 "--forcerun", "report", "--logger-ledger-run-id", "second", cwd=workflow)
    assert second.returncode == 0, second.stderr[-3000:]
    report = workflow / "results" / "report.txt"
    tamper_keep_size_and_mtime(report)
    _rewrite_last_block(workflow, tmp_path, "second", report, hash_file(str(report)).blake3)
    strict = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert strict.returncode == 1, strict.stderr[-3000:]  # "Nothing to be done", exit 0
    assert "HistoryRewritten" in strict.stderr, strict.stderr[-3000:]


def test_strict_lets_a_forced_run_regenerate_a_tampered_directory_output(workflow):
    """Bug (fixed in ``_preflight.collect``): a file inside ``qc/A`` (a ``directory()``
    output) is edited, mtimes kept. A ``strict`` run refuses, naming it, as it should. The
    user then forces its producer (``--forcerun qc/A``): Snakemake deletes ``qc/A`` and makes
    it again before ``report`` reads it, yet ``strict`` refused again, exit 1, because
    ``qc/A`` is also ``report``'s input and ``collect`` checked every input.
    docs/snakemake.md: "Outputs about to be regenerated are not checked"; under strict the
    only way out was another policy."""
    flagstat = workflow / "qc" / "A" / "flagstat.txt"
    tamper_keep_size_and_mtime(flagstat)
    refused = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert refused.returncode == 1 and "flagstat.txt" in refused.stderr, refused.stderr[-3000:]
    forced = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict",
                 "--forcerun", "qc/A", cwd=workflow)
    assert forced.returncode == 0, forced.stderr[-3000:]  # refused: qc/A "changed outside the workflow"
    verify = run("verify-lineage", "results/report.txt", cwd=workflow)
    assert verify.returncode == 0, verify.stdout[-3000:]  # qc/A and the report made again


def test_strict_refuses_when_the_ledger_it_verified_is_gone(workflow):
    """Bug (fixed in ``_preflight.gone_if_remembered``): after a ``strict`` run verified the
    ledger (its head is remembered), a file in ``qc/A`` is edited and the ledger deleted
    (whoever can write ``.lineage/`` can). The next ``strict --forcerun report`` ran the report
    on the edited ``qc/A``, exit 0: the check took a missing file for "nothing was ever
    recorded". (The recording process then creates a new ledger, whose records are refused as
    a replaced ledger: too late, the job ran.) The Parsl plugin refuses here (it creates the
    ledger before its check, and meets the changed origin); the core's ``verify_before_run``
    has the same shortcut (``except NoLedger``)."""
    checked = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert checked.returncode == 0, checked.stderr[-3000:]  # verified: its head is remembered
    tamper_keep_size_and_mtime(workflow / "qc" / "A" / "flagstat.txt")
    report = workflow / "results" / "report.txt"
    before = report.read_bytes()
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (workflow / ".lineage" / name).unlink(missing_ok=True)
    strict = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict",
                 "--forcerun", "report", cwd=workflow)
    assert strict.returncode == 1, strict.stderr[-3000:]  # exit 0: the report ran on the edit
    assert "refusing to run" in strict.stderr and "ledger.db" in strict.stderr, strict.stderr[-3000:]
    assert report.read_bytes() == before


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> FirstRun:
    """The Nextflow example's first run through nextflow-ledger, made once for the two tests
    that start from it, put back with its state before each (tests/support/first_run.py)."""
    from tests.support import nextflow as nf

    nf.require_nextflow()
    return FirstRun(tmp_path_factory.mktemp("example-run"), nextflow_example_run, project="first")


def test_nextflow_strict_refuses_when_the_ledger_it_verified_is_gone(example_run, monkeypatch):
    """Bug (fixed in ``_preflight.gone_if_remembered``): the same as Snakemake's above,
    through ``nextflow-ledger``: after the ledger was verified (its head remembered), a COUNT
    output in ``work/`` is edited (size and mtime kept) and the ledger deleted;
    ``nextflow-ledger run -resume --ledger-policy strict`` reused the edited cached output,
    exit 0 (with the ledger in place it refuses, naming the file)."""
    import shutil

    from tests.support import nextflow as nf

    root = example_run.put_back(monkeypatch)  # the example run once through nextflow-ledger
    here = root / "example"
    verified = nf.run("verify-lineage", "results/report.txt", cwd=here)  # the head is remembered
    assert verified.returncode == 0, verified.stdout + verified.stderr
    count = next(p for p in (here / "work").glob("*/*/alpha.count") if not p.is_symlink())
    shutil.copy2(count, root / "mtime")
    count.write_text(count.read_text().replace("9", "8"))  # same size, different bytes
    shutil.copystat(root / "mtime", count)
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (here / ".lineage" / name).unlink(missing_ok=True)
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # exit 0: the edit was reused
    assert "refusing to run" in strict.stderr and "ledger.db" in strict.stderr, strict.stderr
    assert "Launching" not in strict.stdout  # nothing ran


PLANTED_JOURNAL = """
import os, signal
from lineage_ledger import TaskRun, utcnow
from snakemake_logger_plugin_ledger._journal import PendingJournal

journal = PendingJournal(".lineage/snakemake-pending", "planted", 0.0)
now = utcnow()
journal.add("1:1", TaskRun(task_id="1", task_name="report", status="succeeded", started=now, ended=now,
                           outputs=[os.path.abspath("report.txt")], run_id="planted"))
os.kill(os.getpid(), signal.SIGKILL)  # left as a killed run leaves it: unlocked, not done
"""


def test_a_pending_journal_another_user_planted_is_not_recorded(tmp_path):
    """Bug (fixed in ``_journal._own_journal``): ``.lineage/snakemake-pending`` was made
    with the umask's mode (0775 under the group umask a shared SQLite ledger needs: its
    ``-wal``/``-shm`` are made in ``.lineage``). Another user who can write there plants a
    journal naming a job that "wrote" ``report.txt`` (which they edited). The victim's next
    ``snakemake --logger ledger`` run recorded it as a job of an interrupted run, hashing the
    edited file: a record, appended by the victim's process under the victim's name, that
    vouches for the edit, and the next strict check passes it. The spool's reader takes only
    regular files of this user with one link (``backlog._read_own``); the journal's reader now
    does too, and its directory is 0700."""
    import os
    import pwd
    import subprocess
    import sys

    from tests.support.snakemake import clean_env

    require_snakemake()
    if os.geteuid() != 0:
        pytest.skip("planting a file owned by another user needs root")
    nobody = pwd.getpwnam("nobody")
    (tmp_path / "report.txt").write_text("edited by someone else\n")
    planted = subprocess.run([sys.executable, "-c", PLANTED_JOURNAL], cwd=tmp_path, env=clean_env())
    assert planted.returncode < 0  # killed, as a crashed run is
    (journal,) = (tmp_path / ".lineage" / "snakemake-pending").glob("*.jsonl")
    os.chown(journal, nobody.pw_uid, nobody.pw_gid)  # as the other user would have made it
    (tmp_path / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n')
    result = run("snakemake", "--cores", "1", *LOGGER, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with open_ledger(str(tmp_path / ".lineage" / "ledger.db"), read_only=True) as ledger:
        planted_records = list(ledger.run("planted"))
    assert planted_records == [], planted_records  # recorded: the edit vouched for by the victim


def test_nextflow_strict_checks_a_resume_whose_session_list_was_moved_away(example_run, monkeypatch):
    """Bug (fixed in ``_state`` and ``_recovered``): the wrapper listed each session's tasks in
    ``.lineage/nextflow/sessions/<id>.json`` (0700 directories) and checked before ``-resume``
    only the files that list names. Whoever can write ``.lineage/`` (a group-shared SQLite
    ledger needs it) could move ``nextflow/`` aside, without reading it; then ``nextflow-ledger
    run -resume --ledger-policy strict`` logged "no recorded task of session ... here; nothing
    checked before -resume" and reused a tampered cached output, exit 0. The lists now live in
    this user's private state, out of reach of ``.lineage``'s other writers, and a list that is
    gone (or not this user's) has the check planned from the work directory and the ledger's
    records instead (tests/test_nextflow_state.py): strict refuses naming the file; rerun runs
    its task again."""
    import shutil

    from lineage_ledger_nextflow import _state

    from tests.support import nextflow as nf

    root = example_run.put_back(monkeypatch)  # the example run once through nextflow-ledger
    here = root / "example"
    count = next(p for p in (here / "work").glob("*/*/alpha.count") if not p.is_symlink())
    shutil.copy2(count, root / "mtime")
    count.write_text(count.read_text().replace("9", "8"))  # same size, different bytes
    shutil.copystat(root / "mtime", count)
    assert not (here / ".lineage" / "nextflow").exists()  # no list there for .lineage's other writers to move
    shutil.move(_state.lists_dir(str(here)), str(root / "moved-aside"))  # lost all the same
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # exit 0: the edit was reused
    assert "Launching" not in strict.stdout  # nothing ran
    assert "planned from" in strict.stderr and str(count) in strict.stderr
    rerun = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "rerun", cwd=here)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Submitted process > COUNT (alpha)" in rerun.stdout and "Cached process > COUNT (beta)" in rerun.stdout
    assert "alpha\t9" in count.read_text()  # recomputed in place
