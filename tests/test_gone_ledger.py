"""A ledger this account verified that is gone (deleted, emptied, moved away) is a shrink to
nothing, not "no ledger yet": every read command and the library's pre-run check say
HistoryRewritten (exit 1); ``reset-trust`` forgets it on purpose, and a path nobody verified
is still "no ledger at PATH" (exit 2). The plugins' pre-run checks took a gone ledger for
"nothing recorded" and let strict runs through on tampered files (helper-63's review; fixed
in the Snakemake and Nextflow plugins, here for the core). About 3 s.
"""

from __future__ import annotations

import os

import pytest

from lineage_ledger import HistoryRewritten, verify_before_run
from tests.conftest import run_cli


def _verified(tmp_path):
    run_cli("run", "-o", "a.txt", "--", "sh", "-c", "echo a > a.txt", cwd=tmp_path, check_rc=0)
    run_cli("a.txt", cwd=tmp_path, program="verify-lineage", check_rc=0)
    return tmp_path / ".lineage" / "ledger.db"


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_verified_ledger_that_is_gone_fails_until_trust_is_reset(tmp_path, how):
    db = _verified(tmp_path)
    for suffix in ("-wal", "-shm"):
        (db.parent / f"ledger.db{suffix}").unlink(missing_ok=True)
    if how == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"")
    for argv, program in ((("a.txt",), "verify-lineage"), (("log",), "lineage-ledger"), (("why", "a.txt"), "lineage-ledger")):
        result = run_cli(*argv, cwd=tmp_path, program=program)
        assert result.returncode == 1, (argv, result.stdout, result.stderr)
        assert "HistoryRewritten" in result.stdout + result.stderr or "verification failed" in result.stderr, result
        assert "reset-trust" in result.stdout + result.stderr, result
    assert not (db.exists() and db.stat().st_size), "a read command wrote the ledger"
    run_cli("reset-trust", cwd=tmp_path, check_rc=0)
    result = run_cli("a.txt", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 2 and "no ledger at" in result.stderr, result


def test_the_librarys_pre_run_check_refuses_a_gone_ledger(tmp_path, monkeypatch):
    db = _verified(tmp_path)
    os.remove(db)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HistoryRewritten, match="deleted"):
        verify_before_run(f"sqlite:///{db}", [str(tmp_path / "a.txt")], "strict")


def test_a_path_nobody_verified_is_still_no_ledger(tmp_path):
    _verified(tmp_path)
    result = run_cli("a.txt", "--ledger", "typo.db", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 2 and "no ledger at" in result.stderr, result
    assert not (tmp_path / "typo.db").exists()
