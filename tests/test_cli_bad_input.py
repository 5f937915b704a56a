"""Bad input to the command line that an earlier session noticed and left alone (helper-91):
each through the CLI as a user types it, asserting the exit status and the message.

- ``verify-lineage --against FILE`` where FILE is no checkpoint (random text, an empty file,
  a signature line laid out wrong) exited 1, "a verification failed": that is bad input,
  exit 2. A well-formed checkpoint that the ledger does not extend, or whose signature does
  not verify against ``--pubkey``, stays a failed verification, exit 1.
- ``log --run NOSUCH`` printed nothing, exit 0, where ``export --run NOSUCH`` and ``show``
  and ``why`` of an unknown name exit 2; ``depends`` of a file no record names said
  "nothing was derived from it", exit 0.
- ``keygen --name ""`` took the default name instead of refusing an empty one.
- ``checkpoint >&-`` (standard output closed) exited 0 with the checkpoint written nowhere;
  so did ``show``, ``log`` and ``-o /dev/stdout``.
- ``baash serve`` took ``--batch-time nan``, ``--vote-timeout 0``, ``--restart-delay -1``.

About 25 s at a load of 2.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import made_once

EM = "\u2014"
# Runs the console script with its standard output closed, as `command >&-` does in a shell.
STDOUT_CLOSED = ("sh", "-c", 'exec "$0" "$@" >&-')


@pytest.fixture
def workdir(shared_workdir):
    """At one path for the module's tests: ``recorded`` is made once and put back there."""
    return shared_workdir


def _one_step_a_key_and_a_checkpoint(cli, workdir):
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    cli("keygen", "lab.key", "--name", "lab/key", check_rc=0)
    cli("checkpoint", "--key", "lab.key", "-o", "head.cp", check_rc=0)


#: One recorded step (in.txt -> out.txt), a key pair and a checkpoint signed with it: four
#: commands, made once for the module's 38 tests that start from them (conftest's made_once).
recorded = made_once(_one_step_a_key_and_a_checkpoint, "recorded")


# -- verify-lineage --against a file that is no checkpoint ---------------------------------------
def _bad_signature_layout(text: str) -> str:
    return text.replace(f"{EM} lab/key ", f"{EM} lab/key not-base64!", 1)


NOT_CHECKPOINTS = {
    "random text": lambda text: "hello, this is no checkpoint\n",
    "empty file": lambda text: "",
    "no newline at the end": lambda text: text.rstrip("\n"),
    "signature line laid out wrong": _bad_signature_layout,
    "signature line without a key name": lambda text: text.replace(f"{EM} lab/key ", f"{EM} ", 1),
    "size not a number": lambda text: text.replace("\n1\n", "\nseven\n", 1),
    "binary": lambda text: "\udcff\udcfe\x00\x01",
}


@pytest.mark.parametrize("what", sorted(NOT_CHECKPOINTS))
@pytest.mark.parametrize("pubkey", [False, True], ids=["unsigned-check", "with-pubkey"])
def test_a_file_that_is_no_checkpoint_is_bad_input(cli, recorded, what, pubkey):
    text = (recorded / "head.cp").read_text()
    (recorded / "given.cp").write_bytes(NOT_CHECKPOINTS[what](text).encode("utf-8", "surrogateescape"))
    result = cli("verify", "--against", "given.cp", *(("--pubkey", "lab.key.pub") if pubkey else ()))
    assert result.returncode == 2, (what, result.returncode, result.stdout, result.stderr)
    assert "given.cp is not a checkpoint" in result.stderr, result.stderr
    assert "verification failed" not in result.stderr + result.stdout, result.stderr


@pytest.mark.parametrize("given, says", [("missing.cp", "No such file"), ("a-directory", "directory")])
def test_a_checkpoint_path_that_names_no_file_is_bad_input(cli, recorded, given, says):
    (recorded / "a-directory").mkdir()
    result = cli("verify", "--against", given)
    assert result.returncode == 2 and says in result.stderr, (result.returncode, result.stderr)


def test_a_well_formed_checkpoint_that_fails_is_a_failed_verification(cli, recorded):
    """The rule's other side: a checkpoint that parses is checked, and a check that fails is exit 1."""
    text = (recorded / "head.cp").read_text()
    cli("verify", "--against", "head.cp", "--pubkey", "lab.key.pub", check_rc=0)
    cli("keygen", "other.key", "--name", "lab/other", check_rc=0)
    wrong_key = cli("verify", "--against", "head.cp", "--pubkey", "other.key.pub")
    assert wrong_key.returncode == 1 and "no signature by a trusted key" in wrong_key.stderr, wrong_key
    # A signature of the right layout and key that does not verify: the size was edited.
    lines = text.split("\n")
    lines[1] = "0"
    (recorded / "edited.cp").write_text("\n".join(lines))
    edited = cli("verify", "--against", "edited.cp", "--pubkey", "lab.key.pub")
    assert edited.returncode == 1 and "does not verify" in edited.stderr, edited
    # Unsigned and well formed, but of a history this ledger does not extend.
    origin, size = lines[0], "1"
    other_root = base64.b64encode(bytes([7]) * 32).decode()
    (recorded / "other.cp").write_text(f"{origin}\n{size}\n{other_root}\n")
    forked = cli("verify", "--against", "other.cp")
    assert forked.returncode == 1 and "not an extension of the checkpoint" in forked.stdout + forked.stderr, forked


# -- unknown names -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [(), ("--json",), ("-n", "0"), ("-n", "1")])
def test_log_of_an_unknown_run_is_refused_as_export_refuses_it(cli, recorded, args):
    result = cli("log", "--run", "NOSUCH", *args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "no record in the ledger describes run 'NOSUCH'" in result.stderr and not result.stdout, result
    exported = cli("export", "--run", "NOSUCH", "-f", "prov-json", "-o", "x.json")
    assert exported.returncode == 2 and "no record in the ledger describes run 'NOSUCH'" in exported.stderr


def test_log_of_a_known_run_still_lists_it(cli, recorded):
    run_id = json.loads(cli("log", "--json", check_rc=0).stdout.splitlines()[-1])["run_id"]
    assert "out.txt" in cli("log", "--run", run_id, check_rc=0).stdout


def test_depends_of_a_file_no_record_names_is_refused_as_why_refuses_it(cli, recorded):
    for command in ("why", "depends"):
        result = cli(command, "nosuch.txt")
        assert result.returncode == 2, (command, result.returncode, result.stdout, result.stderr)
        assert "nosuch.txt: no record in the ledger read or wrote it" in result.stderr, (command, result.stderr)


def test_depends_of_a_recorded_file_nothing_read_is_an_answer(cli, recorded):
    """out.txt is known (a task wrote it); that nothing read it is a true answer, exit 0."""
    result = cli("depends", "out.txt", check_rc=0)
    assert "nothing in the ledger was derived from it" in result.stdout, result.stdout
    result = cli("depends", "out.txt", "--all", check_rc=0)
    assert "nothing in the ledger was derived from it" in result.stdout, result.stdout


# -- keygen --name ----------------------------------------------------------------------------------
def test_keygen_refuses_an_empty_name(cli, workdir):
    result = cli("keygen", "lab.key", "--name", "")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "--name" in result.stderr and "empty" in result.stderr, result.stderr
    assert not (workdir / "lab.key").exists() and not (workdir / "lab.key.pub").exists()


@pytest.mark.parametrize("name", [" ", "  \t", "lab\nkey", "lab key", "lab/key\n", "\n"])
def test_keygen_refuses_names_a_signed_note_cannot_carry(cli, workdir, name):
    """A key's name goes into a checkpoint's signature line: no blanks, no line breaks."""
    result = cli("keygen", "lab.key", "--name", name)
    assert result.returncode == 2 and "invalid key name" in result.stderr, (name, result.returncode, result.stderr)
    assert not (workdir / "lab.key").exists() and not (workdir / "lab.key.pub").exists()


# -- standard output closed -------------------------------------------------------------------------
CLOSED_WRITERS = {
    "checkpoint": ("checkpoint",),
    "checkpoint -o -": ("checkpoint", "-o", "-"),
    "checkpoint -o /dev/stdout": ("checkpoint", "-o", "/dev/stdout"),
    "export -o -": ("export", "out.txt", "-f", "prov-json", "-o", "-"),
    "export -o /dev/stdout": ("export", "out.txt", "-f", "prov-json", "-o", "/dev/stdout"),
    "graph -o -": ("graph", "out.txt", "-f", "dot", "-o", "-"),
    "log": ("log",),
    "log --json": ("log", "--json"),
    "why --json": ("why", "out.txt", "--json"),
    "consistency": ("consistency", "0"),
    "hash": ("hash", "in.txt"),
    "verify --json": ("verify", "--json"),
}


@pytest.mark.parametrize("what", sorted(CLOSED_WRITERS))
def test_a_command_whose_standard_output_is_closed_fails(cli, recorded, what):
    before = (recorded / ".lineage" / "ledger.db").read_bytes()
    result = cli(*CLOSED_WRITERS[what], prefix=STDOUT_CLOSED)
    assert result.returncode == 2, (what, result.returncode, result.stderr)
    assert "standard output is closed" in result.stderr, (what, result.stderr)
    assert (recorded / ".lineage" / "ledger.db").read_bytes() == before  # nothing written anywhere else
    cli("verify", check_rc=0)


def test_show_with_standard_output_closed_fails(cli, recorded):
    record_id = json.loads(cli("log", "--json", check_rc=0).stdout.splitlines()[-1])["id"]
    result = cli("show", record_id, prefix=STDOUT_CLOSED)
    assert result.returncode == 2 and "standard output is closed" in result.stderr, (result.returncode, result.stderr)


def test_commands_that_write_only_to_standard_error_run_with_it_closed(cli, recorded):
    """`run` says what it recorded on standard error: a closed standard output is no failure of its."""
    result = cli("run", "-i", "in.txt", "-o", "copy.txt", "--", "cp", "in.txt", "copy.txt", prefix=STDOUT_CLOSED)
    assert result.returncode == 0 and "recorded" in result.stderr, (result.returncode, result.stderr)
    assert (recorded / "copy.txt").read_text() == "data\n"
    cli("keygen", "more.key", prefix=STDOUT_CLOSED, check_rc=0)
    cli("checkpoint", "-o", "again.cp", prefix=STDOUT_CLOSED, check_rc=0)
    cli("verify", "--against", "again.cp", check_rc=0)


# -- baash serve's numbers ------------------------------------------------------------------------------
BAASH_NUMBERS = [
    ("--batch-time", "nan"), ("--batch-time", "-1"), ("--batch-time", "inf"),
    ("--vote-timeout", "nan"), ("--vote-timeout", "0"), ("--vote-timeout", "-5"), ("--vote-timeout", "inf"),
    ("--restart-delay", "nan"), ("--restart-delay", "-0.5"), ("--restart-delay", "inf"),
    ("--faulty-voter", "-1"), ("--silent-voter", "-2"), ("--lying-signer", "-1"),
]


@pytest.mark.parametrize("option, value", BAASH_NUMBERS, ids=[f"{o}={v}" for o, v in BAASH_NUMBERS])
def test_baash_serve_refuses_numbers_that_mean_nothing(cli, workdir, option, value):
    result = cli("baash", "serve", "--storage", "store", f"{option}={value}")
    assert result.returncode == 2, (option, value, result.returncode, result.stderr[-800:])
    assert f"Invalid value for '{option}'" in result.stderr, result.stderr[-800:]
    assert not (workdir / "store").exists()


@pytest.mark.parametrize("option", ["--faulty-voter", "--silent-voter", "--lying-signer"])
def test_baash_serve_refuses_a_rank_it_does_not_run(cli, workdir, option):
    result = cli("baash", "serve", "--storage", "store", "--ranks", "4", option, "4")
    assert result.returncode == 2, (option, result.returncode, result.stderr[-800:])
    assert option in result.stderr and "--ranks 4" in result.stderr, result.stderr[-800:]
    assert not (workdir / "store").exists()

