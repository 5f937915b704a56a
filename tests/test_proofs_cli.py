"""What an independent verifier needs from the CLI (helper-68's clean-room verifier found it
missing): a record's exact bytes (``show``'s ``canonical_base64``), its inclusion proof in an
earlier checkpoint's tree (``show --size N``), and the consistency proof between two
checkpoints (``consistency OLD NEW``). Each is checked with ``tests/independent/verifier.py``,
written from docs/verification.md alone, against signed checkpoints the CLI wrote as the
ledger grew; and each refuses what it cannot prove. About 5 s."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import run_cli
from tests.independent import verifier


def _record(cwd, n: int) -> None:
    run_cli("run", "-o", f"out{n}.txt", "--", "sh", "-c", f"echo {n} > out{n}.txt", cwd=cwd, check_rc=0)


def _checkpoint(cwd, name: str) -> verifier.Checkpoint:
    run_cli("checkpoint", "--key", "key", "-o", name, cwd=cwd, check_rc=0)
    trusted = (cwd / "key.pub").read_text()
    return verifier.verify_checkpoint((cwd / name).read_bytes(), [trusted])


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A ledger with checkpoints at 3 and at 7 records."""
    cwd = tmp_path_factory.mktemp("proofs")
    run_cli("keygen", "key", cwd=cwd, check_rc=0)
    for n in range(3):
        _record(cwd, n)
    early = _checkpoint(cwd, "early.cp")
    for n in range(3, 7):
        _record(cwd, n)
    late = _checkpoint(cwd, "late.cp")
    return cwd, early, late, _first_ids(cwd)


def _show(cwd, record_id: str, *extra: str) -> dict:
    return json.loads(run_cli("show", record_id, *extra, cwd=cwd, check_rc=0).stdout)


def _first_ids(cwd) -> list[str]:
    lines = run_cli("log", "-n", "0", "--json", cwd=cwd, check_rc=0).stdout.splitlines()
    return [json.loads(line)["id"] for line in lines if line.strip()]


def test_a_record_is_proved_in_an_earlier_checkpoint_from_its_exact_bytes(grown):
    cwd, early, late, _ = grown
    assert (early.size, late.size) == (3, 7)
    for record_id in _first_ids(cwd)[:3]:
        for checkpoint, extra in ((early, ("--size", "3")), (late, ())):
            shown = _show(cwd, record_id, *extra)
            tree = shown["tree"]
            assert tree["size"] == checkpoint.size and bytes.fromhex(tree["root"]) == checkpoint.root
            data = base64.b64decode(shown["canonical_base64"])
            proof = [bytes.fromhex(p) for p in tree["inclusion_proof"]]
            value = verifier.verify_record(data, record_id, tree["leaf_index"], proof, checkpoint)
            assert value["run_id"] == shown["record"]["run_id"]
            flipped = bytes([data[0] ^ 1]) + data[1:]
            with pytest.raises(verifier.Invalid):
                verifier.verify_record(flipped, record_id, tree["leaf_index"], proof, checkpoint)
            if proof:
                bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                with pytest.raises(verifier.Invalid):
                    verifier.verify_record(data, record_id, tree["leaf_index"], bad, checkpoint)


def test_the_later_checkpoint_is_proved_to_extend_the_earlier(grown):
    cwd, early, late, _ = grown
    result = run_cli("consistency", "3", "7", cwd=cwd, check_rc=0)
    shown = json.loads(result.stdout)
    assert shown["old"] == {"size": 3, "root": early.root.hex()}
    assert shown["new"] == {"size": 7, "root": late.root.hex()}
    proof = [bytes.fromhex(p) for p in shown["consistency_proof"]]
    verifier.verify_consistency(early.size, early.root, late.size, late.root, proof)
    with pytest.raises(verifier.Invalid):
        verifier.verify_consistency(early.size, bytes(32), late.size, late.root, proof)
    # NEW defaults to the verified head, here the later checkpoint's size.
    assert json.loads(run_cli("consistency", "3", cwd=cwd, check_rc=0).stdout) == shown


@pytest.mark.parametrize("args", [("consistency", "8"), ("consistency", "5", "4"), ("consistency", "2", "99")])
def test_a_consistency_proof_past_the_verified_tree_or_backwards_is_refused(grown, args):
    cwd, *_ = grown
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "records" in result.stderr


def test_an_inclusion_proof_in_a_tree_that_does_not_hold_the_record_is_refused(grown):
    cwd, *_ = grown
    last = _first_ids(cwd)[-1]  # leaf 6
    result = run_cli("show", last, "--size", "3", cwd=cwd)
    assert result.returncode == 2 and "not in the tree of the first 3 records" in result.stderr, result.stderr
    past = run_cli("show", last, "--size", "99", cwd=cwd)
    assert past.returncode == 2 and "no tree of 99" in past.stderr, past.stderr


def test_log_all_lists_the_leaves_in_order_and_rebuilds_the_checkpoints_root(tmp_path):
    """`log --all --json` lists every record, directory manifests included, with its
    leaf_index: the leaves in order, whose MTH is the checkpoint's root (`log` alone leaves
    the manifests out, so its ids rebuild the wrong root for a ledger that recorded a
    directory)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a\n")
    run_cli("run", "-o", "d", "--", "true", cwd=tmp_path, check_rc=0)  # a directory: a manifest record too
    _record(tmp_path, 1)
    run_cli("keygen", "key", cwd=tmp_path, check_rc=0)
    checkpoint = _checkpoint(tmp_path, "cp")
    lines = run_cli("log", "-n", "0", "--all", "--json", cwd=tmp_path, check_rc=0).stdout.splitlines()
    leaves = [json.loads(line) for line in lines if line.strip()]
    assert [leaf["leaf_index"] for leaf in leaves] == list(range(checkpoint.size))
    ids = [bytes.fromhex(leaf["id"]) for leaf in leaves]
    assert verifier.tree_root(ids) == checkpoint.root
    tasks = run_cli("log", "-n", "0", "--json", cwd=tmp_path, check_rc=0).stdout.splitlines()
    assert len([t for t in tasks if t.strip()]) < len(leaves)  # the manifest is a leaf, not a task
