"""The clean-room verifier (tests/independent/verifier.py, written from docs/verification.md
alone) against every vector in tests/vectors and against what the CLI writes: records, their
inclusion proofs and signed checkpoints are accepted, and a one-byte change in any is refused."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.independent import verifier as v

VECTORS = Path(__file__).resolve().parent / "vectors"
CLI = Path(sys.executable).parent / "lineage-ledger"


def _environment(work: Path) -> dict[str, str]:
    """The caller's environment without its LINEAGE_* settings, with a private state and home."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith("LINEAGE_")}
    return {**kept, "LINEAGE_STATE_DIR": str(work / "state"), "HOME": str(work)}


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def _hashes(proof: list[str]) -> list[bytes]:
    return [bytes.fromhex(item) for item in proof]


def _flip(data: bytes, position: int, bit: int = 1) -> bytes:
    return data[:position] + bytes([data[position] ^ bit]) + data[position + 1:]


RFC = _load("rfc9162_sha256.json")
TREE = _load("tree_blake3.json")
CHECKPOINT = _load("checkpoint_ed25519.json")
TREE_IDS = [bytes.fromhex(record["id"]) for record in TREE["records"]]


def test_rfc9162_sha256_vectors_pass_with_sha256_in_place_of_blake3() -> None:
    leaves = [bytes.fromhex(leaf) for leaf in RFC["leaves"]]
    for size, root in RFC["roots"].items():
        assert v.tree_root(leaves[: int(size)], v.sha256_hash).hex() == root
    for case in RFC["inclusion"]:
        leaf = v.leaf_hash(leaves[case["index"]], v.sha256_hash)
        root = bytes.fromhex(RFC["roots"][str(case["size"])])
        v.verify_inclusion(case["index"], case["size"], leaf, _hashes(case["proof"]), root,
                           v.sha256_hash)
    for case in RFC["consistency"]:
        old, new = (bytes.fromhex(RFC["roots"][str(case[key])]) for key in ("old_size", "new_size"))
        v.verify_consistency(case["old_size"], old, case["new_size"], new,
                             _hashes(case["proof"]), v.sha256_hash)
    assert RFC["inclusion"] and RFC["consistency"]


def test_blake3_vectors_records_leaves_roots_and_every_proof() -> None:
    for record, leaf in zip(TREE["records"], TREE["leaf_hashes"], strict=True):
        v.check_record(record["canonical"].encode("utf-8"), record["id"])
        assert v.leaf_hash(bytes.fromhex(record["id"])).hex() == leaf
    assert TREE["roots"]["0"] == v.blake3_hash(b"").hex()
    for size, root in TREE["roots"].items():
        assert v.tree_root(TREE_IDS[: int(size)]).hex() == root
    for case in TREE["inclusion"]:
        leaf = v.leaf_hash(TREE_IDS[case["index"]])
        v.verify_inclusion(case["index"], case["size"], leaf, _hashes(case["proof"]),
                           bytes.fromhex(TREE["roots"][str(case["size"])]))
    for case in TREE["consistency"]:
        old, new = (bytes.fromhex(TREE["roots"][str(case[key])]) for key in ("old_size", "new_size"))
        v.verify_consistency(case["old_size"], old, case["new_size"], new, _hashes(case["proof"]))
    assert len(TREE["inclusion"]) == 66 and len(TREE["consistency"]) == 77


PROVED = [case for case in TREE["inclusion"] if case["proof"]]
CONSISTENT = [case for case in TREE["consistency"] if case["proof"]]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(PROVED), st.data())
def test_any_bit_flip_in_an_inclusion_proof_fails(case: dict[str, Any], data: Any) -> None:
    proof = _hashes(case["proof"])
    which = data.draw(st.integers(0, len(proof) - 1))
    position = data.draw(st.integers(0, 31))
    bit = 1 << data.draw(st.integers(0, 7))
    proof[which] = _flip(proof[which], position, bit)
    with pytest.raises(v.Invalid):
        v.verify_inclusion(case["index"], case["size"], v.leaf_hash(TREE_IDS[case["index"]]),
                           proof, bytes.fromhex(TREE["roots"][str(case["size"])]))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CONSISTENT), st.data())
def test_any_bit_flip_in_a_consistency_proof_fails(case: dict[str, Any], data: Any) -> None:
    proof = _hashes(case["proof"])
    which = data.draw(st.integers(0, len(proof) - 1))
    proof[which] = _flip(proof[which], data.draw(st.integers(0, 31)), 1 << data.draw(st.integers(0, 7)))
    old, new = (bytes.fromhex(TREE["roots"][str(case[key])]) for key in ("old_size", "new_size"))
    with pytest.raises(v.Invalid):
        v.verify_consistency(case["old_size"], old, case["new_size"], new, proof)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(TREE["records"]), st.data())
def test_any_byte_change_in_a_record_fails(record: dict[str, Any], data: Any) -> None:
    raw = record["canonical"].encode("utf-8")
    changed = _flip(raw, data.draw(st.integers(0, len(raw) - 1)), data.draw(st.integers(1, 255)))
    with pytest.raises(v.Invalid):
        v.check_record(changed, record["id"])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_byte_change_in_the_signed_checkpoint_vector_fails(data: Any) -> None:
    note = CHECKPOINT["note"].encode()
    changed = _flip(note, data.draw(st.integers(0, len(note) - 1)), data.draw(st.integers(1, 255)))
    with pytest.raises(v.Invalid):
        v.verify_checkpoint(changed, [CHECKPOINT["public_key"]])


def test_canonical_form_is_required_not_only_the_id() -> None:
    raw = TREE["records"][0]["canonical"]
    for variant in (raw.replace(",", ", ", 1), raw.replace('"v":1', '"v":1.0'),
                    raw.replace('"attempt":1', '"attempt":1,"attempt":1'),
                    "\ufeff" + raw, raw.replace('"step0"', '"st\\u0065p0"')):
        with pytest.raises(v.Invalid):
            v.check_record(variant.encode("utf-8"))
    assert v.canonical({"b": "é\u2028\x7f\x01\n\"\\", "a": [1.0, 1e20, 1e-7, -0.0, 10**30]}) == (
        '{"a":[1.0,1e+20,1e-07,-0.0,1000000000000000000000000000000],'
        '"b":"é\u2028\x7f\\u0001\\n\\"\\\\"}').encode("utf-8")


def _naming(path: str) -> bytes:
    value = json.loads(TREE["records"][0]["canonical"])
    value["outputs"] = {path: {"blake3": "ab" * 32, "size": 1}}
    return v.canonical(value)


@pytest.mark.parametrize("path", ["/w/sub/../x.csv", "/w/./x.csv", "/w//x.csv", "/w/x/", "sub/../x.csv", "./x.csv",
                                  "x/", ""])
def test_a_record_naming_a_path_that_is_not_normal_fails_here_as_in_the_core(path: str) -> None:
    """docs/verification.md section 1 (since 7229a3b): paths are normal."""
    from lineage_ledger import Record

    with pytest.raises(v.Invalid, match="not normal"):
        v.check_record(_naming(path))
    with pytest.raises(ValueError, match="not normal"):
        Record.decode(_naming(path))


@pytest.mark.parametrize("path", ["data/x.csv", "x.csv", "/w/.cache/x", "//w/x"])
def test_relative_names_of_an_earlier_release_and_hidden_files_are_read_here_as_in_the_core(path: str) -> None:
    from lineage_ledger import Record

    assert path in v.check_record(_naming(path))["outputs"]
    assert path in Record.decode(_naming(path)).outputs


def test_checkpoint_vector_go_note_example_and_c2sp_example() -> None:
    seed = bytes.fromhex(CHECKPOINT["seed"])
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    name, kid, key = v.parse_public_key(CHECKPOINT["public_key"])
    assert (name, kid.hex(), key) == (CHECKPOINT["key_name"], CHECKPOINT["key_id"], public)
    assert CHECKPOINT["private_key"] == "PRIVATE+KEY+{}+{}+{}".format(
        name, kid.hex(), base64.b64encode(b"\x01" + seed).decode())
    checkpoint = v.verify_checkpoint(CHECKPOINT["note"].encode(), [CHECKPOINT["public_key"]])
    expected = CHECKPOINT["checkpoint"]
    assert (checkpoint.origin, checkpoint.size, checkpoint.root.hex(), checkpoint.time) == (
        expected["origin"], expected["size"], expected["root"], expected["time"])
    assert checkpoint.body == CHECKPOINT["body"].encode()
    assert checkpoint.root.hex() == TREE["roots"][str(checkpoint.size)]
    go = CHECKPOINT["go_note_example"]
    assert v.open_note(go["note"].encode(), [go["public_key"]]) == go["text"].encode()
    with pytest.raises(v.Invalid):
        v.parse_checkpoint(go["note"].encode())  # a signed note, not a checkpoint
    c2sp = CHECKPOINT["c2sp_checkpoint_example"]
    parsed = v.parse_checkpoint(c2sp["note"].encode())
    assert (parsed.origin, parsed.size, parsed.root.hex()) == (c2sp["origin"], c2sp["size"],
                                                               c2sp["root"])
    with pytest.raises(v.Invalid, match="no signature by a trusted key"):
        v.verify_checkpoint(c2sp["note"].encode(), [CHECKPOINT["public_key"]])


# -- end to end: what the CLI writes ---------------------------------------------------
@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A ledger of five records (four tasks and the manifest of a directory one writes), a
    key pair, signed checkpoints at sizes 3 and 5, `show` of every record in ledger order
    and an RO-Crate of one run."""
    work = tmp_path_factory.mktemp("ledger")
    env = _environment(work)

    def cli(*args: str) -> str:
        done = subprocess.run([str(CLI), *args], cwd=work, env=env, capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    (work / "raw é.txt").write_text("raw\n", encoding="utf-8")
    cli("run", "-i", "raw é.txt", "-o", "b.txt", "-p", 'note=a "quoted" \\ tab\there',
        "--run-id", "r1", "--", "sh", "-c", "cp 'raw é.txt' b.txt")
    cli("run", "-i", "b.txt", "-o", "out", "--run-id", "r1", "-n", "copy ✓", "--", "sh", "-c",
        "mkdir out && cp b.txt out/c.txt && ln -s c.txt out/link")
    cli("keygen", "--name", "example.org/independent", "lab.key")
    cli("checkpoint", "--key", "lab.key", "-o", "cp3")
    cli("run", "-i", "out/link", "-o", "d.txt", "--run-id", "r2", "--", "cp", "out/link",
        "d.txt")
    cli("run", "-i", "d.txt", "-o", "e.txt", "--run-id", "r2", "--", "cp", "d.txt", "e.txt")
    cli("checkpoint", "--key", "lab.key", "-o", "cp5")
    tasks = [json.loads(line) for line in cli("log", "-n", "0", "--json").splitlines()]
    directory = json.loads(cli("show", tasks[1]["id"]))["record"]["outputs"]
    digest = directory[str(work / "out")]["blake3"]
    manifests = [json.loads(line)
                 for line in cli("log", "--run", f"manifest:{digest}", "--json").splitlines()]
    shown = [json.loads(cli("show", entry["id"])) for entry in tasks + manifests]
    cli("export", "--run", "r2", "--format", "ro-crate", "-o", "crate", "--no-data",
        "--key", "lab.key")
    return {"work": work, "tasks": tasks, "pub": (work / "lab.key.pub").read_text(),
            "cp3": (work / "cp3").read_bytes(), "cp5": (work / "cp5").read_bytes(),
            "shown": sorted(shown, key=lambda entry: entry["tree"]["leaf_index"])}


def test_cli_checkpoints_verify_and_every_id_rebuilds_their_roots(ledger: dict[str, Any]) -> None:
    ids = [bytes.fromhex(entry["id"]) for entry in ledger["shown"]]
    assert [entry["tree"]["leaf_index"] for entry in ledger["shown"]] == [0, 1, 2, 3, 4]
    # `log` leaves the manifest record out; `log --run manifest:DIGEST` and `show` place it.
    assert len(ledger["tasks"]) == 4 and ledger["shown"][1]["record"]["task_name"] == (
        "directory manifest")
    for name, size in (("cp3", 3), ("cp5", 5)):
        checkpoint = v.verify_checkpoint(ledger[name], [ledger["pub"]])
        assert checkpoint.size == size and checkpoint.time is not None
        assert v.tree_root(ids[:size]) == checkpoint.root


def test_show_gives_a_record_and_proof_that_verify_against_the_checkpoint(
        ledger: dict[str, Any]) -> None:
    checkpoint = v.verify_checkpoint(ledger["cp5"], [ledger["pub"]])
    for index, shown in enumerate(ledger["shown"]):
        tree = shown["tree"]
        assert (tree["leaf_index"], tree["size"], tree["origin"]) == (
            index, checkpoint.size, checkpoint.origin)
        assert bytes.fromhex(tree["root"]) == checkpoint.root
        # `show` prints the decoded record: its canonical bytes are re-encoded from it.
        record = v.canonical(shown["record"])
        v.verify_record(record, shown["id"], index, _hashes(tree["inclusion_proof"]), checkpoint)
    assert ledger["shown"][0]["record"]["parameters"] == {"note": 'a "quoted" \\ tab\there'}
    through_link = copy.deepcopy(ledger["shown"][3]["record"])
    alias = next(path for path, entry in through_link["inputs"].items() if "alias_of" in entry)
    through_link["inputs"][alias]["alias_of"] = alias + ".gone"
    with pytest.raises(v.Invalid, match="alias"):
        v.check_record(v.canonical(through_link))
    manifest = ledger["shown"][1]["record"]
    changed = json.loads(json.dumps(manifest).replace('"c.txt"', '"C.txt"'))
    with pytest.raises(v.Invalid, match="manifest"):
        v.check_record(v.canonical(changed))


def test_crate_gives_exact_record_bytes_proofs_and_checkpoint(ledger: dict[str, Any]) -> None:
    base = ledger["work"] / "crate"
    proofs = json.loads((base / "lineage-ledger" / "proofs.json").read_text())
    checkpoint = v.verify_checkpoint((base / proofs["checkpoint"]).read_bytes(), [ledger["pub"]])
    assert (proofs["origin"], proofs["tree_size"]) == (checkpoint.origin, checkpoint.size)
    assert [entry["leaf_index"] for entry in proofs["records"]] == [3, 4]
    for entry in proofs["records"]:
        v.verify_record((base / entry["file"]).read_bytes(), entry["id"], entry["leaf_index"],
                        _hashes(entry["inclusion_proof"]), checkpoint)


def test_a_one_byte_change_in_each_cli_output_is_refused(ledger: dict[str, Any]) -> None:
    note, keys = ledger["cp5"], [ledger["pub"]]
    checkpoint = v.verify_checkpoint(note, keys)
    shown = ledger["shown"][1]
    record, proof = v.canonical(shown["record"]), _hashes(shown["tree"]["inclusion_proof"])
    body_end = note.index(b"\n\n")
    root_at = note.index(base64.b64encode(checkpoint.root))
    changes = {
        "record bytes": lambda: v.verify_record(
            record.replace(b'"attempt":1', b'"attempt":2'), shown["id"], 1, proof, checkpoint),
        "proof node": lambda: v.verify_record(record, shown["id"], 1,
                                              [_flip(proof[0], 5), *proof[1:]], checkpoint),
        "checkpoint root": lambda: v.verify_checkpoint(
            note[:root_at] + (b"B" if note[root_at:root_at + 1] == b"A" else b"A")
            + note[root_at + 1:], keys),
        "signature": lambda: v.verify_checkpoint(
            note[:-10] + (b"B" if note[-10:-9] == b"A" else b"A") + note[-9:], keys),
        "origin line": lambda: v.verify_checkpoint(_flip(note, 3), keys),
        "time line": lambda: v.verify_checkpoint(_flip(note, body_end - 2, 3), keys),
    }
    for what, change in changes.items():
        with pytest.raises(v.Invalid):
            change()
            pytest.fail(f"a changed {what} was accepted")


def _sign(body: bytes, private_key: str) -> bytes:
    """A signature line as `keygen`'s private key (PRIVATE+KEY+name+id+base64) makes it."""
    name, hex_id, encoded = private_key.strip().split("+", 4)[2:]
    seed = base64.b64decode(encoded)[1:]
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(body)
    return f"\u2014 {name} {base64.b64encode(bytes.fromhex(hex_id) + signature).decode()}\n".encode()


def _variants(note: bytes, private_key: str) -> dict[str, tuple[bytes, int]]:
    """Checkpoints, signed again, that the page left to a careful reading, and the exit
    status of `verify --against` for each (what the CLI said when the page was fixed; since
    helper-91, a file that does not parse as a checkpoint is bad input, exit 2, where a
    checkpoint that parses and fails a check is exit 1: docs/verification.md)."""
    body = note.split(b"\n\n")[0] + b"\n"
    origin, size, root, time = body.decode().splitlines()
    seconds = time.split(".")[0]

    def signed(*lines: str, extra: bytes = b"") -> bytes:
        text = ("\n".join(lines) + "\n").encode()
        return text + b"\n" + _sign(text, private_key) + extra

    line = signed(origin, size, root, time).split(b"\n\n")[1]
    return {
        "as written": (note, 0),
        "time to the second": (signed(origin, size, root, seconds + "Z"), 0),
        "no time line": (signed(origin, size, root), 0),
        "time .000000": (signed(origin, size, root, seconds + ".000000Z"), 2),
        "time .123": (signed(origin, size, root, seconds + ".123Z"), 2),
        "time not a date": (signed(origin, size, root, "time 2026-02-30T00:00:00Z"), 2),
        "another extension": (signed(origin, size, root, time, "x y"), 2),
        "size 0-padded": (signed(origin, "0" + size, root, time), 2),
        "unknown key, 5 bytes": (signed(origin, size, root, time,
                                        extra="\u2014 other/key MTIzNDU=\n".encode()), 0),
        "unknown key, 3 bytes": (signed(origin, size, root, time,
                                        extra="\u2014 other/key AAAA\n".encode()), 2),
        "unpadded signature": (body + b"\n" + line.replace(b"=\n", b"\n"), 2),
        "blank line, no signature": (body + b"\n", 2),
        "size edited under its signature": (note.replace(f"\n{size}\n".encode(), f"\n{int(size) + 1}\n".encode(), 1), 1),
    }


def test_the_verifier_and_the_cli_agree_on_edge_cases(ledger: dict[str, Any]) -> None:
    work, pub = ledger["work"], ledger["pub"]
    env = _environment(work)
    verdicts, expected = {}, {}
    for what, (note, status) in _variants(ledger["cp5"], (work / "lab.key").read_text()).items():
        (work / "variant").write_bytes(note)
        done = subprocess.run([str(CLI), "verify", "--against", "variant", "--pubkey",
                               "lab.key.pub"], cwd=work, env=env, capture_output=True, check=False)
        try:
            v.verify_checkpoint(note, [pub])
            ours = 0
        except v.Invalid:
            ours = 1
        # The verifier accepts or refuses; the CLI says how (2: no checkpoint, 1: a failed check).
        verdicts[what], expected[what] = (ours, done.returncode), (min(status, 1), status)
    assert verdicts == expected
