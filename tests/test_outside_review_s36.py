"""An outside review of issue #14 (checkpoints, the trusted local state, read commands on bad
input, unusual record content), made through the CLI as users run it, on real SQLite ledgers.

Each test names one bug found, and failed before its fix (they were committed as strict
xfails, and each mark went with its fix). The whole file takes about 16 s on this 2-core
machine (24 cases, mostly interpreter starts of the CLI).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._log.checkpoint import generate_key, parse_signer, sign_note
from tests.conftest import run_cli
from tests.support.chains import task_chain
from tests.support.factories import artifact, make_record
from tests.support.rollback import drop_last_block


def _build(base, blocks=(2, 2)) -> str:
    """A ledger of a chain of tasks, ``out{i}.txt`` made from the one before, cut into
    ``blocks``; every output is on disk. Returns its path."""
    task_chain(base, f"sqlite:///{base}/ledger.db", blocks)
    return str(base / "ledger.db")


def _rewrite_last_block(base, db: str) -> None:
    """A careful attacker's rewrite: the last block replaced by one of as many records, with
    ids, Merkle root and block id recomputed, so the chain verifies on its own."""
    count = drop_last_block(db)
    forged = [make_record(100 + i, run_id="forged", outputs=[artifact(f"/forged/{i}", "x")]) for i in range(count)]
    with open_ledger(f"sqlite:///{db}", spool=str(base / "spool-forger"), state_dir=str(base / "forger-state")) as ledger:
        ledger.append_records([r.stored() for r in forged])


def _state_directory(db: str) -> str:
    """This account's remembered state of the ledger at ``db`` (the CLI's subprocesses share
    the test's XDG_STATE_HOME)."""
    with open_ledger(f"sqlite:///{db}", read_only=True) as ledger:
        return ledger.verifier.store.directory


def test_a_rewritten_history_is_reported_even_when_a_target_fails(tmp_path):
    """Bug: ``verify-lineage --against CP TARGET`` skips the checkpoint whenever a target
    fails (``if checkpoint is not None and report.ok`` in ``_cli/trust.py``). A ledger whose
    history was rewritten since CP, checked with one file that is UNRECORDED (or MODIFIED,
    or a full audit with one recorded output edited on disk), reports only that file: no
    HistoryRewritten in the text, ``"against": null`` in the JSON. The exit status is 1
    either way, but the user is told of the lesser problem and not that the history
    changed since the checkpoint they published."""
    db = _build(tmp_path)
    checkpoint = tmp_path / "cp"
    run_cli("checkpoint", "--ledger", db, "-o", checkpoint, cwd=tmp_path, check_rc=0)
    _rewrite_last_block(tmp_path, db)
    (tmp_path / "unrecorded.txt").write_text("never recorded")
    other_account = {"XDG_STATE_HOME": str(tmp_path / "other-account")}  # has only the checkpoint to go by
    result = run_cli("--ledger", db, "--against", checkpoint, tmp_path / "unrecorded.txt", cwd=tmp_path,
                     program="verify-lineage", env=other_account)
    assert result.returncode == 1, result
    assert "UNRECORDED" in result.stdout
    assert "HistoryRewritten" in result.stdout and "not an extension of the checkpoint" in result.stdout, result.stdout


@pytest.mark.parametrize("command", [
    ("export", "out1.txt", "-f", "prov-json", "-o"),
    ("graph", "out1.txt", "-o"),
    ("checkpoint", "-o"),
])
def test_a_read_command_never_writes_its_output_over_the_ledger_it_reads(tmp_path, command):
    """Bug: ``lineage-ledger export|graph|checkpoint ... -o LEDGER --ledger LEDGER`` (a slip
    of tab completion, ``-o .lineage/ledger.db``) writes the JSON, HTML or checkpoint over
    the ledger file, exit 0: every record is gone, and the next command says the database is
    corrupt. A read command should refuse an output that is the ledger (or one of its -wal,
    -shm files), exit 2, and leave it as it was."""
    db = _build(tmp_path)
    before = open(db, "rb").read()
    result = run_cli(*command, db, "--ledger", db, cwd=tmp_path)
    assert open(db, "rb").read() == before, "the ledger was overwritten"
    assert result.returncode == 2, result


def test_checkpoint_never_writes_over_its_signing_key(tmp_path):
    """Bug: ``lineage-ledger checkpoint --key KEY -o KEY`` signs, then writes the checkpoint
    over the private key, exit 0. ``keygen`` refuses to overwrite any key file because "a key
    lost to an overwrite cannot sign again" (``_log/_key_files.py``); this loses it anyway."""
    db = _build(tmp_path, blocks=(2,))
    key = tmp_path / "key"
    run_cli("keygen", key, cwd=tmp_path, check_rc=0)
    secret = key.read_bytes()
    result = run_cli("checkpoint", "--key", key, "-o", key, "--ledger", db, cwd=tmp_path)
    assert key.read_bytes() == secret, "the private key was overwritten by the checkpoint"
    assert result.returncode == 2, result


def _same_key_under(name: str, private_text: str) -> tuple[str, str]:
    """The key pair of ``private_text`` (its seed) under another ``name``: the note key id
    hashes the name, so it is a new (name, key id) for the very same Ed25519 key."""
    seed_b64 = private_text.strip().split("+", 4)[4]
    public = parse_signer(private_text).verifier.public_key
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4].hex()
    public_b64 = base64.b64encode(b"\x01" + public).decode()
    return f"PRIVATE+KEY+{name}+{key_id}+{seed_b64}", f"{name}+{key_id}+{public_b64}"


def test_a_quorum_is_not_met_by_one_key_under_two_names(tmp_path):
    """Bug: ``verify-lineage --against CP --pubkey A.pub --pubkey B.pub --quorum 2`` counts
    keys by (name, key id). The same Ed25519 key published under two names is two of those,
    so one holder of one private key signs twice (one line per name) and meets a quorum of
    two, exit 0. A quorum (a BAASH ranks.pub: more than two thirds of its ranks) is about
    independent signers: keys should be told apart by their public key bytes (and a list
    that holds one key twice refused or counted once)."""
    db = _build(tmp_path, blocks=(2,))
    private_text, _ = generate_key("alice")
    alice_private, alice_public = _same_key_under("alice", private_text)
    bob_private, bob_public = _same_key_under("bob", private_text)
    (tmp_path / "alice").write_text(alice_private + "\n")
    os.chmod(tmp_path / "alice", 0o600)
    (tmp_path / "alice.pub").write_text(alice_public + "\n")
    (tmp_path / "bob.pub").write_text(bob_public + "\n")
    note = run_cli("checkpoint", "--key", tmp_path / "alice", "--ledger", db, cwd=tmp_path, check_rc=0).stdout
    body = note.split("\n\n")[0] + "\n"
    bob_line = sign_note(body, parse_signer(bob_private)).split("\n\n", 1)[1]
    (tmp_path / "cp").write_text(note + bob_line)
    result = run_cli("--ledger", db, "--against", tmp_path / "cp", "--pubkey", tmp_path / "alice.pub",
                     "--pubkey", tmp_path / "bob.pub", "--quorum", "2", cwd=tmp_path, program="verify-lineage")
    assert result.returncode != 0, result


def test_a_baash_quorum_is_not_met_by_one_key_under_two_names():
    """The same for an endorsed BAASH tree head: a ranks.pub that lists one key under two
    names holds one key, and that key's two signature lines are one endorsement."""
    from lineage_ledger._canonical import utcnow
    from lineage_ledger._errors import CheckpointInvalid
    from lineage_ledger._log.checkpoint import Checkpoint, parse_verifier
    from lineage_ledger.backends.baash.endorse import verify_endorsed

    private_text, _ = generate_key("rank-0")
    keys = [_same_key_under(name, private_text) for name in ("rank-0", "rank-1")]
    other_private, other_public = generate_key("rank-2")
    body = Checkpoint("baash://test", 3, b"\x01" * 32, utcnow()).body()
    twice = sign_note(body, parse_signer(keys[0][0])) + sign_note(body, parse_signer(keys[1][0])).split("\n\n", 1)[1]
    verifiers = [parse_verifier(public) for _, public in keys] + [parse_verifier(other_public)]
    with pytest.raises(CheckpointInvalid, match="signed by 1 of the 2"):
        verify_endorsed(twice, verifiers, 2)
    both = twice + sign_note(body, parse_signer(other_private)).split("\n\n", 1)[1]
    assert verify_endorsed(both, verifiers, 2).size == 3


@pytest.mark.parametrize("edit", [{"size": 5}, {"root": "00" * 32}])
def test_checkpoint_does_not_sign_a_head_its_own_tree_disagrees_with(tmp_path, edit):
    """Bug: ``checkpoint`` (and ``verify-lineage TARGET``'s "tree head" line) take size and
    root from ``head.json`` as they are. With ``size`` edited from 4 to 5 it signs a
    checkpoint of 5 records with the root of 4 (``verify-lineage TARGET`` prints "ledger:
    OK 2 blocks, 5 records", exit 0); with ``root`` zeroed it signs that root, and
    ``verify-lineage --against`` of an honest checkpoint then stops with "unexpected
    AssertionError", exit 2. The kept nodes give the root at the head's size in O(log n),
    and the last block's first record and count give the size: checked, a damaged or edited
    state would be refused (exit 2, "run `lineage-ledger reset-trust`") before it is
    published under the user's key."""
    db = _build(tmp_path)
    run_cli("log", "--ledger", db, cwd=tmp_path, check_rc=0)  # this account verifies it: 4 records
    head_file = os.path.join(_state_directory(db), "head.json")
    with open(head_file) as handle:
        head = json.load(handle)
    head.update(edit)
    with open(head_file, "w") as handle:
        json.dump(head, handle)
    result = run_cli("checkpoint", "--ledger", db, cwd=tmp_path)
    assert result.returncode != 0, result.stdout


@pytest.mark.parametrize("damage", ["size as text", "size negative", "starts.bin cut short"])
def test_a_damaged_state_is_named_not_an_unexpected_error(tmp_path, damage):
    """Bug: a state file edited by hand, or cut short, stops every reader with "unexpected
    TypeError: '>' not supported between instances of 'int' and 'str'", "unexpected
    IndexError: no complete node (0, 3) in a tree of -1" or "unexpected error: unpack_from
    requires a buffer of at least 16 bytes" (and ``verify-lineage TARGET`` with size -1
    blames the ledger: "IndexTampered ... past the end of that block", exit 1). An
    unreadable ``head.json`` is already reported as "head.json is unreadable ...; run
    `lineage-ledger reset-trust`" (exit 2); these should say the same."""
    db = _build(tmp_path)
    run_cli("log", "--ledger", db, cwd=tmp_path, check_rc=0)
    state = _state_directory(db)
    if damage == "starts.bin cut short":
        with open(os.path.join(state, "starts.bin"), "r+b") as handle:
            handle.truncate(8)
    else:
        with open(os.path.join(state, "head.json")) as handle:
            head = json.load(handle)
        head["size"] = "4" if damage == "size as text" else -1
        with open(os.path.join(state, "head.json"), "w") as handle:
            json.dump(head, handle)
    result = run_cli("why", tmp_path / "out3.txt", "--ledger", db, cwd=tmp_path)
    assert result.returncode == 2, result
    assert "unexpected" not in result.stderr and "reset-trust" in result.stderr, result.stderr


def test_reset_trust_forgets_a_head_an_interrupted_audit_left_aside(tmp_path):
    """Bug: an audit killed between its two renames leaves the remembered state at
    ``<state>.old`` (and, by design, the next command puts it back). ``reset-trust`` run then,
    after a deliberate restore from a backup, looks only at ``<state>``: it prints "nothing
    was remembered for this ledger", exit 0, and the next command restores ``<state>.old``
    and fails "the ledger shrank", exit 1, which reset-trust was run to clear."""
    db = _build(tmp_path)
    shutil.copy(db, tmp_path / "backup.db")
    with open_ledger(f"sqlite:///{db}", spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([make_record(50, outputs=[artifact("/data/50", "50")]).stored()])
    run_cli("log", "--ledger", db, cwd=tmp_path, check_rc=0)  # this account verifies 5 records
    state = _state_directory(db)
    os.rename(state, state + ".old")  # where an audit killed between its two renames leaves it
    shutil.copy(tmp_path / "backup.db", db)  # the deliberate restore: 4 records
    run_cli("reset-trust", "--ledger", db, cwd=tmp_path, check_rc=0)
    after = run_cli("log", "--ledger", db, cwd=tmp_path)
    assert after.returncode == 0, after


def test_log_of_the_run_with_an_empty_id_lists_only_that_run(tmp_path):
    """Bug: a record's run id may be empty (``Record`` and the ledger accept it, and
    ``export --run ''`` exports that run's one task), but ``lineage-ledger log --run ''``
    lists every record of the ledger, exit 0: ``if run_id and limit`` / ``elif run_id``
    in ``log_command`` read the empty id as no ``--run`` at all."""
    db = str(tmp_path / "ledger.db")
    records = [make_record(0, run_id="", outputs=[artifact("/data/a", "a")]),
               make_record(1, run_id="other", outputs=[artifact("/data/b", "b")])]
    with open_ledger(f"sqlite:///{db}", spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([r.stored() for r in records])
    listed = run_cli("log", "--json", "--run", "", "--ledger", db, cwd=tmp_path, check_rc=0).stdout
    runs = [json.loads(line)["run_id"] for line in listed.splitlines() if line.strip()]
    assert runs == [""], runs


def test_an_origin_with_a_control_character_is_refused_by_name(tmp_path):
    """Bug: the origin in ``ll_meta`` is read as it is: with a newline in it (edited, or
    written by another tool), ``log`` and ``verify-lineage`` of an account that never saw
    the ledger accept it and remember it, and ``checkpoint`` then stops with "unexpected
    ValueError: a checkpoint's origin must be non-empty text without control characters",
    exit 2. An empty origin is already refused on open ("the ledger's origin is missing
    from ll_meta"); one a checkpoint cannot carry should be refused the same way, by name."""
    db = _build(tmp_path, blocks=(2,))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ll_meta SET value = value || char(10) || 'x' WHERE key = 'origin'")
    conn.close()
    result = run_cli("checkpoint", "--ledger", db, cwd=tmp_path)
    assert result.returncode == 2, result
    assert "unexpected" not in result.stderr and "origin" in result.stderr, result.stderr


def test_an_unchanged_link_inside_a_recorded_directory_verifies(tmp_path):
    """Bug: a recorded directory's manifest keeps a symbolic link as ``[path, "link",
    target]``, not followed (docs/directories.md). ``verify-lineage D`` is OK, but
    ``verify-lineage D/link`` (a file inside a recorded directory, looked up in its
    manifest) hashes the file the link points to and compares that with the link entry,
    which has no digest: "D/link: MODIFIED since it was last written by record ... (ledger
    -, disk 81c4b7f7e054)", exit 1, with nothing changed. ``check_before_run(..., "strict")``
    refuses a run naming the link the same way. The link should be OK while its target text
    is the one recorded (or be checked as the file it resolves to)."""
    (tmp_path / "in.txt").write_text("in")
    out = tmp_path / "D"
    out.mkdir()
    (out / "a").write_text("a")
    os.symlink("a", out / "link")
    db = str(tmp_path / "ledger.db")
    run_cli("run", "-i", "in.txt", "-o", "D", "--ledger", db, "--", "true", cwd=tmp_path, check_rc=0)
    whole = run_cli("D", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    assert whole.returncode == 0, whole
    one = run_cli("D/link", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    assert one.returncode == 0, one.stdout
    # A link pointed elsewhere, or replaced by the file it led to, is a change all the same.
    os.remove(out / "link")
    os.symlink("b", out / "link")
    moved = run_cli("D/link", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    assert moved.returncode == 1 and "recorded as a link to 'a'" in moved.stdout, moved.stdout
    os.remove(out / "link")
    shutil.copy(out / "a", out / "link")
    copied = run_cli("D/link", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    assert copied.returncode == 1 and "it is not a link now" in copied.stdout, copied.stdout


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_spool_ship_with_nothing_waiting_creates_no_ledger(tmp_path, kind):
    """Bug: the read commands, ``repair-index`` and ``migrate`` answer "no ledger at PATH"
    (exit 2) for a mistyped or zero-byte ledger path (#14, item 6), but ``lineage-ledger
    spool ship --ledger TYPO`` with no record waiting for that ledger creates the directory
    and an empty ledger, prints "shipped 0 record(s)", exit 0; a zero-byte file (a ledger
    lost to a full disk) is made a new empty ledger the same way. With nothing to ship,
    nothing should be created (exit 0 or 2)."""
    path = tmp_path / "typo" / "ledger.db" if kind == "missing" else tmp_path / "empty.db"
    if kind == "empty":
        path.write_bytes(b"")
    result = run_cli("spool", "ship", "--ledger", path, cwd=tmp_path)
    assert result.returncode in (0, 2), result
    assert (not path.parent.exists()) if kind == "missing" else path.stat().st_size == 0, "a ledger was created"


@pytest.mark.parametrize("replacement", ["dangling link", "fifo"])
def test_a_recorded_file_replaced_by_a_non_file_fails_the_directory_check(tmp_path, replacement):
    """Bug: a recorded output replaced by a dangling symbolic link (its data moved to an
    archive since unmounted) or by a FIFO is UNREADABLE, exit 1, for ``verify-lineage
    D/b`` and for the full audit, but ``verify-lineage D`` walks past it: it is neither
    checked nor counted as gone from D (its name is still listed), nothing is said on
    standard error, and the answer is "verified", exit 0. The walk should check every entry
    a record names (and report, as docs/directories.md says of a link loop, what it skips)."""
    (tmp_path / "in.txt").write_text("in")
    out = tmp_path / "D"
    out.mkdir()
    (out / "a").write_text("a")
    (out / "b").write_text("b")
    db = str(tmp_path / "ledger.db")
    run_cli("run", "-i", "in.txt", "-o", "D/a", "-o", "D/b", "--ledger", db, "--", "true", cwd=tmp_path, check_rc=0)
    os.remove(out / "b")
    if replacement == "fifo":
        os.mkfifo(out / "b")
    else:
        os.symlink("/nonexistent/archive/b", out / "b")
    one = run_cli("D/b", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    assert one.returncode == 1 and "UNREADABLE" in one.stdout, one
    whole = run_cli("D", "--ledger", db, cwd=tmp_path, program="verify-lineage")
    assert whole.returncode == 1, whole.stdout


def test_a_negative_count_is_not_taken_for_a_tampered_index(tmp_path):
    """Bug: ``lineage-ledger log --run r -n -1`` on an intact ledger answers "verification
    failed: the index left out record ..., which belongs to run r: the index answered that
    no record did. Index rows were deleted or edited; run verify-lineage ..., then
    `lineage-ledger repair-index`", exit 1: the page of -1 records is checked as a page that
    should hold the run's latest. (``log -n -1`` without --run lists everything.) A count
    below 0 should be a usage error (exit 2), never a report of tampering."""
    db = _build(tmp_path, blocks=(3,))
    result = run_cli("log", "--run", "r", "-n", "-1", "--ledger", db, cwd=tmp_path)
    assert "index" not in result.stderr and result.returncode in (0, 2), result


@pytest.mark.parametrize("variable", ["XDG_STATE_HOME", "LINEAGE_STATE_DIR"])
def test_the_remembered_head_does_not_depend_on_the_working_directory(tmp_path, variable):
    """Bug: ``state_root()`` uses ``$XDG_STATE_HOME`` (and ``$LINEAGE_STATE_DIR``) as given,
    so a relative value (``XDG_STATE_HOME=.state`` in a shell profile) keeps one remembered
    head per working directory: a history rewritten after a verification in ``one/`` passes
    as a first audit, "verified" exit 0, from ``two/``. The XDG Base Directory spec says a
    relative path in these variables is invalid and must be ignored (then
    ``~/.local/state`` is used); ``LINEAGE_STATE_DIR`` could be refused (exit 2) or made
    absolute once, but never be a different state per directory."""
    db = _build(tmp_path)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    relative = {variable: "state"}
    first = run_cli("--ledger", db, cwd=tmp_path / "one", program="verify-lineage", env=relative)
    if first.returncode == 2:  # a relative state directory refused: as good as one shared state
        assert variable in first.stderr, first.stderr
        return
    assert first.returncode == 0, first
    _rewrite_last_block(tmp_path, db)
    again = run_cli("--ledger", db, cwd=tmp_path / "two", program="verify-lineage", env=relative)
    assert again.returncode != 0, again.stdout


def test_a_checkpoint_of_no_records_with_another_root_is_named_so(tmp_path):
    """A checkpoint of size 0 whose root is not the empty tree's: refused, exit 1, saying
    so (it read "one or more of records 0 to -1 were changed")."""
    db = _build(tmp_path, blocks=(2,))
    origin = run_cli("checkpoint", "--ledger", db, cwd=tmp_path, check_rc=0).stdout.splitlines()[0]
    other_root = base64.b64encode(bytes([7]) * 32).decode()
    (tmp_path / "cp").write_text(f"{origin}\n0\n{other_root}\n")
    result = run_cli("--ledger", db, "--against", tmp_path / "cp", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1, result
    assert "empty tree's root" in result.stdout and "-1" not in result.stdout, result.stdout


def test_a_private_key_other_users_may_read_is_refused(tmp_path):
    """Noticed by the review: a private key made readable by others (``chmod 644``, a copy
    with the default umask) was used to sign without a word. Refused now, as ssh refuses
    such a key, exit 2, without showing any of it; at 0600 it signs again."""
    db = _build(tmp_path, blocks=(2,))
    key = tmp_path / "key"
    run_cli("keygen", key, cwd=tmp_path, check_rc=0)
    secret = key.read_text().strip().split("+", 4)[4]
    os.chmod(key, 0o644)
    result = run_cli("checkpoint", "--key", key, "--ledger", db, cwd=tmp_path)
    assert result.returncode == 2 and "chmod 600" in result.stderr, result
    assert secret[:12] not in result.stderr + result.stdout
    os.chmod(key, 0o600)
    run_cli("checkpoint", "--key", key, "--ledger", db, cwd=tmp_path, check_rc=0)


def test_read_commands_refuse_a_ledger_that_lives_in_one_process(tmp_path):
    """Noticed by the review: ``verify-lineage --ledger memory://`` said "verified", exit 0,
    of a ledger that is always empty in a process of its own. Read commands refuse it, exit 2."""
    for args, program in ((("--ledger", "memory://"), "verify-lineage"), (("log", "--ledger", "memory://"), "lineage-ledger")):
        result = run_cli(*args, cwd=tmp_path, program=program)
        assert result.returncode == 2 and "only inside the process" in result.stderr, (program, result)
