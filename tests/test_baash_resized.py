"""A BAASH service stopped and started again on the same storage with another number of
ranks: the ledger, the allow-list and the endorsed tree heads carry over (docs/baash.md,
"Endorsed tree heads": one key per rank slot, ``keys/ranks.pub``, ``DIR/checkpoint``)."""

from __future__ import annotations

import shutil

import pytest

from lineage_ledger import build_block
from lineage_ledger.backends import open_backend
from lineage_ledger.backends.baash.endorse import load_verifiers, verify_endorsed
from tests.conftest import run_cli
from tests.support.baash import BaashService
from tests.support.factories import make_records

pytestmark = pytest.mark.mpi


def _append(url: str, start: int, count: int = 2) -> None:
    backend = open_backend(url)
    records = [r.stored() for r in make_records(count, run_id=f"resized-{start}", start=start)]
    backend.append([build_block(records, backend.head()).stored()])


def _note(service: BaashService, keys, cwd) -> tuple[int, str]:
    """``baash checkpoint --keys KEYS -o FILE``'s exit status, and the note (or what it said)."""
    saved = cwd / "head.checkpoint"
    saved.unlink(missing_ok=True)
    result = run_cli("baash", "checkpoint", "--ledger", service.url, "--keys", keys, "-o", saved, cwd=cwd)
    return result.returncode, saved.read_text() if result.returncode == 0 else result.stdout + result.stderr


def test_a_service_restarted_with_more_ranks_goes_on_endorsing(tmp_path):
    """Bug: each start rewrites ``keys/ranks.pub`` with one key per rank of the new job, and a
    restored rank checks the kept note (``DIR/checkpoint``) against that file before it signs
    anything. A note 2 ranks endorsed has 2 signatures, and a quorum of 3 keys is 3, so after
    a restart with 3 ranks every rank printed 'endorsing no tree head: the last endorsed tree
    head ... does not verify: ... signed by 2 of the 3 ranks' keys' and signed nothing: the
    note was never replaced, ``baash checkpoint`` served the old head for good, and no later
    record was ever endorsed. (A job restarted one rank smaller after a failure keeps the
    larger ranks.pub and was fine; growing the job, as a site does when it adds nodes, was not.)"""
    (tmp_path / "svc").mkdir()
    service = BaashService(tmp_path / "svc", 2)
    try:
        _append(service.url, 0)
        old_keys = tmp_path / "two.pub"  # a client's copy, taken before the job grew
        shutil.copy(service.storage / "keys" / "ranks.pub", old_keys)
        assert _note(service, old_keys, tmp_path)[0] == 0
    finally:
        service.stop()

    service = BaashService(tmp_path / "svc", 3)
    try:
        assert open_backend(service.url).record_count() == 2
        _append(service.url, 2)
        keys = service.storage / "keys" / "ranks.pub"
        assert len(load_verifiers(str(keys))) == 3
        for given in (keys, old_keys):
            rc, note = _note(service, given, tmp_path)
            assert rc == 0, note
            assert verify_endorsed(note, load_verifiers(str(given))).size == 4, (given, note)
        logs = "".join(p.read_text() for p in (service.storage / "logs").glob("mpiexec-*.log"))
        assert "endorsing no tree head" not in logs, logs[-2000:]
    finally:
        service.stop()

