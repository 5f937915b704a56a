"""Checkpoints as signed notes: the Go note package's formats, strict parsing, key files.

Regenerate ``tests/vectors/checkpoint_ed25519.json`` (only after a deliberate format
change) with ``python -m tests.test_checkpoint --write-vectors``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger._errors import CheckpointInvalid, ConfigError
from lineage_ledger._log.checkpoint import (
    Checkpoint,
    generate_key,
    load_signer,
    load_verifier,
    open_note,
    parse,
    parse_signer,
    parse_verifier,
    sign,
    sign_note,
    write_keypair,
)

VECTORS = Path(__file__).parent / "vectors"
VECTOR = json.loads((VECTORS / "checkpoint_ed25519.json").read_text(encoding="utf-8"))
EM = "\u2014"

SIGNER = parse_signer(generate_key("example.org/test-log")[0])
VERIFIER = SIGNER.verifier
ROOT = bytes(range(32))
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


def _note(checkpoint: Checkpoint | None = None) -> str:
    return sign(checkpoint or Checkpoint("example.org/test-log", 42, ROOT, WHEN), SIGNER)


# --- the vectors ----------------------------------------------------------------------------


def test_go_note_package_example():
    """The example in golang.org/x/mod/sumdb/note's documentation, byte for byte."""
    go = VECTOR["go_note_example"]
    signer, verifier = parse_signer(go["private_key"]), parse_verifier(go["public_key"])
    assert signer.verifier.text() == go["public_key"] and signer.text() == go["private_key"]
    assert sign_note(go["text"], signer) == go["note"]
    assert open_note(go["note"], [verifier]) == go["text"]


def test_c2sp_checkpoint_example_parses_and_its_unknown_signature_is_ignored():
    example = VECTOR["c2sp_checkpoint_example"]
    checkpoint = parse(example["note"])
    assert (checkpoint.origin, checkpoint.size, checkpoint.root.hex()) == (
        example["origin"], example["size"], example["root"])
    with pytest.raises(CheckpointInvalid, match="no signature by a trusted key"):
        parse(example["note"], [VERIFIER])


def build_vector() -> dict:
    seed = bytes.fromhex(VECTOR["seed"]) if "seed" in VECTOR else bytes(range(100, 132))
    name = "example.org/lineage-ledger-test-key"
    private, public = generate_key(name, seed)
    tree = json.loads((VECTORS / "tree_blake3.json").read_text(encoding="utf-8"))
    size = max(int(n) for n in tree["roots"])
    checkpoint = Checkpoint("example.org/lineage-ledger-test", size, bytes.fromhex(tree["roots"][str(size)]),
                            datetime(2026, 1, 1, 0, 0, 11, tzinfo=timezone.utc))
    out = {
        "description": "A lineage-ledger checkpoint (C2SP tlog-checkpoint body, 'time' extension line) "
        "signed as a C2SP signed note with ed25519, as Go's golang.org/x/mod/sumdb/note writes it. Its root "
        "is the root of tests/vectors/tree_blake3.json at its largest size. THE PRIVATE KEY IS PUBLIC: a test "
        "key, never use it.",
        "seed": seed.hex(),
        "key_name": name,
        "private_key": private,
        "public_key": public,
        "key_id": parse_verifier(public).key_id.hex(),
        "checkpoint": {"origin": checkpoint.origin, "size": checkpoint.size, "root": checkpoint.root.hex(),
                       "time": "2026-01-01T00:00:11Z"},
        "body": checkpoint.body(),
        "note": sign(checkpoint, parse_signer(private)),
    }
    for key in ("go_note_example", "c2sp_checkpoint_example"):
        out[key] = VECTOR[key]
    return out


def test_checkpoint_vector_is_current_and_verifies():
    assert build_vector() == VECTOR
    verifier = parse_verifier(VECTOR["public_key"])
    checkpoint = parse(VECTOR["note"], [verifier])
    assert checkpoint.body() == VECTOR["body"]
    assert checkpoint.root.hex() == VECTOR["checkpoint"]["root"]
    assert checkpoint.time == datetime(2026, 1, 1, 0, 0, 11, tzinfo=timezone.utc)


# --- round trips and tampering ------------------------------------------------------------

_ORIGIN = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
_TIME = st.one_of(st.none(), st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(timezone.utc)))


@settings(max_examples=150, deadline=None)
@given(_ORIGIN, st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32), _TIME)
def test_round_trip(origin, size, root, time):
    checkpoint = Checkpoint(origin, size, root, time)
    note = sign(checkpoint, SIGNER)
    assert parse(note, [VERIFIER]) == checkpoint
    assert parse(note) == checkpoint
    assert parse(checkpoint.body()) == checkpoint  # an unsigned checkpoint
    assert Checkpoint.from_text(note.encode("utf-8"), VERIFIER) == checkpoint


def test_time_is_kept_in_utc():
    local = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    checkpoint = Checkpoint("o", 1, ROOT, local)
    assert checkpoint.time == datetime(2026, 1, 1, 0, 0, tzinfo=timezone.utc)
    assert checkpoint.body().endswith("\ntime 2026-01-01T00:00:00Z\n")
    precise = Checkpoint("o", 1, ROOT, WHEN.replace(microsecond=5))
    assert precise.body().endswith("\ntime 2026-03-04T05:06:07.000005Z\n")
    with pytest.raises(ValueError):
        Checkpoint("o", 1, ROOT, datetime(2026, 1, 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_changed_byte_fails(data):
    note = _note().encode("utf-8")
    at = data.draw(st.integers(0, len(note) - 1), label="at")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != note[at]), label="byte")
    changed = note[:at] + bytes([value]) + note[at + 1 :]
    with pytest.raises(CheckpointInvalid):
        parse(changed, [VERIFIER])


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_inserted_or_deleted_text_fails(data):
    note = _note()
    at = data.draw(st.integers(0, len(note) - 1), label="at")
    if data.draw(st.booleans(), label="delete"):
        changed = note[:at] + note[at + 1 :]
    else:
        changed = note[:at] + data.draw(st.text(min_size=1, max_size=3), label="insert") + note[at:]
    with pytest.raises(CheckpointInvalid):
        parse(changed, [VERIFIER])


def test_wrong_keys_fail_and_unknown_signers_are_ignored():
    note = _note()
    stranger = parse_signer(generate_key("example.org/test-log")[0])  # same name, another key
    other = parse_signer(generate_key("example.org/other")[0])
    with pytest.raises(CheckpointInvalid, match="no signature by a trusted key"):
        parse(note, [stranger.verifier])
    with pytest.raises(CheckpointInvalid, match="no signature by a trusted key"):
        parse(note, [other.verifier])
    # A cosignature by an unknown key is ignored; either trusted key suffices.
    cosigned = note + sign(parse(note), other).split("\n\n", 1)[1]
    assert parse(cosigned, [VERIFIER]) == parse(note)
    assert parse(cosigned, [other.verifier, stranger.verifier]) == parse(note)
    with pytest.raises(CheckpointInvalid, match="no signature by a trusted key"):
        parse(_note().split("\n\n")[0] + "\n", [VERIFIER])  # unsigned


def test_a_bad_signature_by_a_known_key_rejects_the_note():
    """As the signed-note spec advises: even when another trusted signature verifies."""
    note = _note()
    other = parse_signer(generate_key("example.org/other")[0])
    forged = sign(Checkpoint("example.org/test-log", 43, ROOT, WHEN), other).split("\n\n", 1)[1]
    with pytest.raises(CheckpointInvalid, match=r"signature by example.org/other\+\w+ does not verify"):
        parse(note + forged, [VERIFIER, other.verifier])


# --- malformed notes ------------------------------------------------------------------------

GOOD_BODY = f"o\n42\n{'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8='}\n"
MALFORMED = [
    "", "\n", "o\n42\n", GOOD_BODY[:-1], GOOD_BODY.replace("\n", "\r\n"), "\n" + GOOD_BODY,
    GOOD_BODY.replace("42", "042"), GOOD_BODY.replace("42", "+42"), GOOD_BODY.replace("42", " 42"),
    GOOD_BODY.replace("42", "42 "), GOOD_BODY.replace("42", "4_2"), GOOD_BODY.replace("42", "٤٢"),
    GOOD_BODY.replace("42", "18446744073709551616"), GOOD_BODY.replace("42", ""),
    GOOD_BODY.replace("AAEC", "AEC"), GOOD_BODY.replace("Hh8=", "Hh8"), GOOD_BODY.replace("Hh8=", "Hh9="),
    GOOD_BODY.replace("AAEC", "AAE-"), GOOD_BODY.replace("Hh8=", "Hh8=\n"),
    GOOD_BODY.replace("o\n", "\n", 1), GOOD_BODY.replace("o\n", "o\x01\n", 1), GOOD_BODY.replace("o\n", "o\x7f\n", 1),
    GOOD_BODY + "time 2026-01-01T00:00:00Z\ntime 2026-01-01T00:00:00Z\n", GOOD_BODY + "flavour vanilla\n",
    GOOD_BODY + "time 2026-13-01T00:00:00Z\n", GOOD_BODY + "time 2026-01-01T00:00:00.000000Z\n",
    GOOD_BODY + "time 2026-01-01T00:00:00+00:00\n", GOOD_BODY + "time 2026-01-01 00:00:00Z\n",
    GOOD_BODY + "\n", GOOD_BODY + "\n\n", GOOD_BODY + "\n- o AAAAAAAAAAAAAAA=\n",
    GOOD_BODY + f"\n{EM} o AAAA\n", GOOD_BODY + f"\n{EM} o\n", GOOD_BODY + f"\n{EM}  AAAAAAAA\n",
    GOOD_BODY + f"\n{EM} o+x AAAAAAAA\n", GOOD_BODY + f"\n{EM} o AAAAAAAA \n", GOOD_BODY + f"\n{EM} o AAAAAAAA",
    GOOD_BODY + "\n" + f"{EM} o AAAAAAAA\n" * 101, GOOD_BODY + "x" * 70000 + "\n", "o\ud800\n42\n",
]


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_notes_are_refused(text):
    with pytest.raises(CheckpointInvalid):
        parse(text)


def test_well_formed_neighbours_of_the_malformed_parse():
    assert parse(GOOD_BODY) == Checkpoint("o", 42, ROOT)
    assert parse(GOOD_BODY + f"\n{EM} o AAAAAAAA\n") == Checkpoint("o", 42, ROOT)  # unknown key: ignored
    assert parse(GOOD_BODY.replace("42", "0")).size == 0
    assert parse(GOOD_BODY.encode("utf-8")).size == 42


@pytest.mark.parametrize("value", [None, 42, b"\xff\xfe", GOOD_BODY.encode("utf-16")])
def test_non_text_is_refused(value):
    with pytest.raises(CheckpointInvalid):
        parse(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.lists(st.sampled_from(["o", "42", "0", "AAAA", "time ", EM, " ", "\n", "=", "+", "ü", "\x00"]),
             max_size=40).map("".join),
))
def test_random_input_raises_checkpoint_invalid_and_nothing_else(text):
    try:
        parse(text, [VERIFIER])
    except CheckpointInvalid:
        pass
    try:
        checkpoint = parse(text)
    except CheckpointInvalid:
        return
    assert isinstance(checkpoint, Checkpoint)


# --- key files ------------------------------------------------------------------------------


def test_write_keypair_modes_and_round_trip(tmp_path):
    path = tmp_path / "ledger.key"
    write_keypair(path, "example.org/lab")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(f"{path}.pub").st_mode) == 0o644
    signer, verifier = load_signer(path), load_verifier(f"{path}.pub")
    assert signer.verifier.text() == verifier.text()
    assert parse(sign(Checkpoint("example.org/lab", 1, ROOT), signer), [verifier]).size == 1


def test_write_keypair_never_overwrites(tmp_path):
    path = tmp_path / "ledger.key"
    write_keypair(path, "example.org/lab")
    before = (path.read_bytes(), Path(f"{path}.pub").read_bytes())
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(path, "example.org/lab")
    assert (path.read_bytes(), Path(f"{path}.pub").read_bytes()) == before
    lone = tmp_path / "other.key"
    Path(f"{lone}.pub").write_text("mine\n")
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(lone, "example.org/lab")
    assert not lone.exists() and Path(f"{lone}.pub").read_text() == "mine\n"


def test_key_names_follow_the_note_rules(tmp_path):
    for name in ["", "a b", "a+b", "a\nb"]:
        with pytest.raises(ConfigError):
            generate_key(name)
    with pytest.raises(ConfigError):
        write_keypair(tmp_path / "k", "bad name")


def test_key_file_errors_are_clear_and_never_show_key_material(tmp_path):
    path = tmp_path / "k"
    write_keypair(path, "example.org/lab")
    private = path.read_text().strip()
    secret = private.split("+", 4)[4]  # base64 of 0x01 || seed (it may itself hold '+')
    assert len(secret) == 44
    cases = {
        "missing": (load_signer, tmp_path / "nope", "cannot read key file"),
        "public as private": (load_signer, f"{path}.pub", "not a private key"),
        "private as public": (load_verifier, path, "holds a private key"),
    }
    for bad_name, text in {
        "wrong id": private.replace(private.split("+")[3], "00000000"),
        "short key": private[:-4],
        "no prefix": private.replace("PRIVATE+KEY+", ""),
        "binary": "\udcff",
    }.items():
        bad = tmp_path / bad_name.replace(" ", "_")
        bad.write_bytes(text.encode("utf-8", "surrogateescape"))
        cases[bad_name] = (load_signer, bad, str(bad))
    for what, (load, target, message) in cases.items():
        with pytest.raises(ConfigError, match=message) as caught:
            load(target)
        assert secret[:12] not in str(caught.value) and secret[-12:] not in repr(caught.value), what
    assert secret[:12] not in repr(load_signer(path))
    big = tmp_path / "big"
    big.write_text("x" * 10000)
    with pytest.raises(ConfigError, match="too large"):
        load_verifier(big)


def test_core_import_does_not_load_cryptography():
    code = (
        "import sys, lineage_ledger, lineage_ledger._log.checkpoint as c, lineage_ledger._log.tree\n"
        f"c.parse({GOOD_BODY!r})\n"
        "assert 'cryptography' not in sys.modules, 'cryptography imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__" and "--write-vectors" in sys.argv:
    path = VECTORS / "checkpoint_ed25519.json"
    path.write_text(json.dumps(build_vector(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def test_verify_against_a_quorum_of_keys(tmp_path):
    """`verify-lineage --against CP --pubkey KEYS --quorum N` counts distinct keys that signed
    (a file may list several keys, one a line, as BAASH's ranks.pub does)."""
    from lineage_ledger._log.checkpoint import _split_note
    from tests.conftest import run_cli

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    (tmp_path / "in.txt").write_text("data\n")
    run_cli("run", "--ledger", url, "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt",
            cwd=tmp_path, check_rc=0)
    for name in ("k1", "k2", "k3"):
        run_cli("keygen", name, "--name", f"lab/{name}", cwd=tmp_path, check_rc=0)
    (tmp_path / "ranks.pub").write_text("".join((tmp_path / f"k{i}.pub").read_text() for i in (1, 2, 3)))
    one = run_cli("checkpoint", "--ledger", url, "--key", "k1", cwd=tmp_path, check_rc=0).stdout
    body, _ = _split_note(one)
    two = one + sign_note(body, load_signer(tmp_path / "k2")).split("\n\n", 1)[1]
    (tmp_path / "one.cp").write_text(one)
    (tmp_path / "two.cp").write_text(two)

    def verify(note, *extra):
        return run_cli("--ledger", url, "--against", note, *extra, cwd=tmp_path, program="verify-lineage")

    assert verify("one.cp", "--pubkey", "ranks.pub").returncode == 0  # one trusted signature suffices
    short = verify("one.cp", "--pubkey", "ranks.pub", "--quorum", "2")
    assert short.returncode == 1 and "signed by 1 of the 3 keys given (lab/k1)" in short.stdout + short.stderr, short
    assert verify("two.cp", "--pubkey", "ranks.pub", "--quorum", "2").returncode == 0
    # The same key given twice is one key; a quorum beyond the keys given is bad input.
    twice = verify("one.cp", "--pubkey", "k1.pub", "--pubkey", "k1.pub", "--quorum", "2")
    assert twice.returncode == 2 and "only 1 distinct public keys" in twice.stderr, twice
    assert verify("two.cp", "--quorum", "2").returncode == 2  # --quorum needs --pubkey
