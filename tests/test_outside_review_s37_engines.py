"""An outside review of the engine plugins' pre-run checks, through the real ``snakemake``
command on the bioinformatics-shaped workflow (``tests/support/bio_workflow``: a
``directory()`` output, a ``temp()`` BAM, a rule with retries), by an attacker who can write
the ledger file but not the user's state directory.

Each test names one bug found; a bug not fixed yet is a strict xfail whose reason says where
the fix lies. About 12 s a test on this 2-core machine (three Snakemake runs of 200 reads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from lineage_ledger import hash_file, open_ledger
from tests.support import bio_workflow
from tests.support.snakemake import require_snakemake, run
from tests.support.tamper import tamper_keep_size_and_mtime

pytestmark = pytest.mark.slow

LOGGER = ("--logger", "ledger")


def _workflow(tmp_path: Path) -> Path:
    require_snakemake()
    bio_workflow.require_tools()
    workflow = bio_workflow.prepare(tmp_path / "wf", reads=200)
    first = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-run-id", "first", cwd=workflow)
    assert first.returncode == 0, first.stderr[-3000:]
    return workflow


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


@pytest.mark.xfail(strict=True, reason=(
    "hardening (core): a writer never remembers the blocks it appends (core/_ledger/ledger.py "
    "append_records leaves the TrustStore alone), so a consistent rewrite of the block this "
    "account's own run appended passes the next strict check and verify-lineage, leaving no "
    "trace (an appended forged record, which docs/security.md accepts, at least shows in log)"))
def test_a_rewrite_of_the_block_the_last_run_appended_is_refused_by_strict(tmp_path):
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
    workflow = _workflow(tmp_path)
    second = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict",
                 "--forcerun", "report", "--logger-ledger-run-id", "second", cwd=workflow)
    assert second.returncode == 0, second.stderr[-3000:]
    report = workflow / "results" / "report.txt"
    tamper_keep_size_and_mtime(report)
    _rewrite_last_block(workflow, tmp_path, "second", report, hash_file(str(report)).blake3)
    strict = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert strict.returncode == 1, strict.stderr[-3000:]  # "Nothing to be done", exit 0
    assert "HistoryRewritten" in strict.stderr, strict.stderr[-3000:]


def test_strict_lets_a_forced_run_regenerate_a_tampered_directory_output(tmp_path):
    """Bug (fixed in ``_preflight.collect``): a file inside ``qc/A`` (a ``directory()``
    output) is edited, mtimes kept. A ``strict`` run refuses, naming it, as it should. The
    user then forces its producer (``--forcerun qc/A``): Snakemake deletes ``qc/A`` and makes
    it again before ``report`` reads it, yet ``strict`` refused again, exit 1, because
    ``qc/A`` is also ``report``'s input and ``collect`` checked every input.
    docs/snakemake.md: "Outputs about to be regenerated are not checked"; under strict the
    only way out was another policy."""
    workflow = _workflow(tmp_path)
    flagstat = workflow / "qc" / "A" / "flagstat.txt"
    tamper_keep_size_and_mtime(flagstat)
    refused = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict", cwd=workflow)
    assert refused.returncode == 1 and "flagstat.txt" in refused.stderr, refused.stderr[-3000:]
    forced = run("snakemake", "--cores", "2", *LOGGER, "--logger-ledger-policy", "strict",
                 "--forcerun", "qc/A", cwd=workflow)
    assert forced.returncode == 0, forced.stderr[-3000:]  # refused: qc/A "changed outside the workflow"
    verify = run("verify-lineage", "results/report.txt", cwd=workflow)
    assert verify.returncode == 0, verify.stdout[-3000:]  # qc/A and the report made again


def test_strict_refuses_when_the_ledger_it_verified_is_gone(tmp_path):
    """Bug (fixed in ``_preflight.gone_if_remembered``): after a ``strict`` run verified the
    ledger (its head is remembered), a file in ``qc/A`` is edited and the ledger deleted
    (whoever can write ``.lineage/`` can). The next ``strict --forcerun report`` ran the report
    on the edited ``qc/A``, exit 0: the check took a missing file for "nothing was ever
    recorded". (The recording process then creates a new ledger, whose records are refused as
    a replaced ledger: too late, the job ran.) The Parsl plugin refuses here (it creates the
    ledger before its check, and meets the changed origin); the core's ``verify_before_run``
    has the same shortcut (``except NoLedger``)."""
    workflow = _workflow(tmp_path)
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


def test_nextflow_strict_refuses_when_the_ledger_it_verified_is_gone(tmp_path):
    """Bug (fixed in ``_preflight.gone_if_remembered``): the same as Snakemake's above,
    through ``nextflow-ledger``: after the ledger was verified (its head remembered), a COUNT
    output in ``work/`` is edited (size and mtime kept) and the ledger deleted;
    ``nextflow-ledger run -resume --ledger-policy strict`` reused the edited cached output,
    exit 0 (with the ledger in place it refuses, naming the file)."""
    import shutil

    from tests.support import nextflow as nf

    here = nf.copy_example(tmp_path / "example")
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    verified = nf.run("verify-lineage", "results/report.txt", cwd=here)  # the head is remembered
    assert verified.returncode == 0, verified.stdout + verified.stderr
    count = next(p for p in (here / "work").glob("*/*/alpha.count") if not p.is_symlink())
    shutil.copy2(count, tmp_path / "mtime")
    count.write_text(count.read_text().replace("9", "8"))  # same size, different bytes
    shutil.copystat(tmp_path / "mtime", count)
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (here / ".lineage" / name).unlink(missing_ok=True)
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # exit 0: the edit was reused
    assert "refusing to run" in strict.stderr and "ledger.db" in strict.stderr, strict.stderr
    assert "Launching" not in strict.stdout  # nothing ran
