"""A BAASH ledger whose shared storage is rewritten behind the service, checked against a
tree head the ranks endorsed before (docs/baash.md, "Endorsed tree heads").

Real service, real ``lineage-ledger run`` steps, real ``baash checkpoint`` and
``verify-lineage`` commands. The rewrite is the one that hides an edited output: the last
block is rebuilt on disk with the edited file's digest in its record (a valid block, a valid
chain, ``chain.log`` pointing at it), so the rewritten ledger verifies on its own and only a
checkpoint taken before can show that its history changed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lineage_ledger import build_block
from lineage_ledger._model import BlockHeader, Record
from lineage_ledger.backends.baash._wire import block_to_wire
from lineage_ledger.backends.baash.storage import SharedStore
from tests.conftest import run_cli
from tests.support.baash import BaashService

pytestmark = pytest.mark.mpi


def _rewrite_last_block(storage, output, forged: bytes) -> None:
    """Rebuild the last stored block with ``output``'s digest set to that of ``forged``."""
    from lineage_ledger._files.hashing import hash_file  # noqa: PLC0415 - the core's own digest

    store = SharedStore(str(storage))
    store.refresh()
    last, before = store.get(store.ids[-1]), store.get(store.ids[-2])
    body = Record.decode(last.records[0].body).to_dict()
    key = next(path for path in body["outputs"] if path.endswith(os.sep + output.name))
    output.write_bytes(forged)
    artifact = hash_file(str(output))
    body["outputs"][key] = {**body["outputs"][key], "blake3": artifact.blake3, "size": artifact.size}
    block = build_block([Record.from_dict(body).stored()], BlockHeader.decode(before.header)).stored()
    target = storage / "blocks" / block.id[:2] / f"{block.id}.json"
    target.parent.mkdir(mode=0o700, exist_ok=True)
    target.write_text(json.dumps(block_to_wire(block), separators=(",", ":")))
    lines = (storage / "chain.log").read_text().splitlines()
    lines[-1] = f"{block.height} {block.id}"
    (storage / "chain.log").write_text("".join(line + "\n" for line in lines))


def test_verify_lineage_against_an_endorsed_head_catches_a_rewritten_tail(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "svc").mkdir()
    service = BaashService(tmp_path / "svc", 4)
    env = {"LINEAGE_LEDGER_URL": service.url, "LINEAGE_SPOOL": str(tmp_path / "spool")}
    try:
        (work / "f0.txt").write_text("raw\n")
        for step in range(3):
            run_cli("run", "-i", f"f{step}.txt", "-o", f"f{step + 1}.txt", "--", "sh", "-c",
                    f"cat f{step}.txt > f{step + 1}.txt; echo {step} >> f{step + 1}.txt", cwd=work, env=env,
                    check_rc=0)
        keys = work / "ranks.pub"  # the client's own copy, taken once
        shutil.copy(service.storage / "keys" / "ranks.pub", keys)
        run_cli("baash", "checkpoint", "--keys", keys, "-o", work / "head.checkpoint", cwd=work, env=env, check_rc=0)
    finally:
        service.stop()

    _rewrite_last_block(service.storage, work / "f3.txt", b"raw\n0\n1\nforged\n")
    service = BaashService(tmp_path / "svc", 4)
    env["LINEAGE_LEDGER_URL"] = service.url
    pubkeys = [arg for slot in range(4) for arg in ("--pubkey", service.storage / "keys" / f"rank-{slot}.pub")]
    try:
        alone = run_cli("f3.txt", program="verify-lineage", cwd=work, env=env)
        assert alone.returncode == 0, "the rewritten ledger holds together on its own: " + alone.stdout + alone.stderr
        against = run_cli("f3.txt", "--against", "head.checkpoint", *pubkeys, "--quorum", "3",
                          program="verify-lineage", cwd=work, env=env)
        assert against.returncode == 1, against.stdout + against.stderr
        assert "HistoryRewritten" in against.stdout and "FAILED" in against.stdout, against.stdout
        # The ranks restored the rewritten chain: they endorse nothing, so the service still
        # serves the head endorsed before the rewrite, and it fails the rewritten ledger too.
        again = run_cli("baash", "checkpoint", "--keys", keys, "-o", work / "now.checkpoint", cwd=work, env=env,
                        check_rc=0)
        assert (work / "now.checkpoint").read_text() == (work / "head.checkpoint").read_text(), again.stdout
        logs = "".join(p.read_text() for p in (service.storage / "logs").glob("mpiexec-*.log"))
        assert "history was rewritten" in logs or "endorsing no tree head" in logs, logs[-2000:]
    finally:
        service.stop()


@pytest.mark.parametrize("damage", ["deleted", "not-a-block", "body-edited"])
def test_a_hole_or_an_edited_block_in_storage_is_never_served_as_verified(tmp_path, damage):
    """A block file of the middle of the chain removed, replaced by other JSON, or its record
    body edited in place (its id kept) while the service is down: the restarted service
    refuses to start naming the block, or serves it and ``verify-lineage`` exits 1
    naming the tampered record. Never a start that serves a chain with a hole, never 0."""
    from lineage_ledger.backends import open_backend
    from tests.support.factories import make_records

    (tmp_path / "svc").mkdir()
    service = BaashService(tmp_path / "svc", 2)
    try:
        backend = open_backend(service.url)
        for start in range(3):
            records = [r.stored() for r in make_records(1, run_id="hole", start=start)]
            backend.append([build_block(records, backend.head()).stored()])
    finally:
        service.stop()
    middle = (service.storage / "chain.log").read_text().splitlines()[1].split()[1]
    block_file = service.storage / "blocks" / middle[:2] / f"{middle}.json"
    if damage == "deleted":
        block_file.unlink()
    elif damage == "not-a-block":
        block_file.write_text('{"kind":"block"}')
    else:
        text = block_file.read_text()
        assert '\\"i\\":1' in text
        block_file.write_text(text.replace('\\"i\\":1', '\\"i\\":7'))
    if damage != "body-edited":
        with pytest.raises(RuntimeError, match=f"error: .*cannot read block {middle[:16]}"):
            BaashService(tmp_path / "svc", 2)  # the service exited, saying which block
        return
    service = BaashService(tmp_path / "svc", 2)
    try:
        result = run_cli("--ledger", service.url, program="verify-lineage", cwd=tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "RecordTampered: block 1" in result.stdout, result.stdout
    finally:
        service.stop()
