"""What ``lineage-ledger checkpoint -o FILE`` writes over (helper-122).

A checkpoint file is the evidence that a ledger never rewrote its history. ``checkpoint -o``
replaced whatever FILE held:

- a checkpoint this ledger does not extend (its history was rewritten, then checkpointed by
  an account that had not verified it before, or after ``reset-trust``): the proof of the
  old history was replaced by a checkpoint of the new one, exit 0. It is now kept, and the
  command fails (exit 1) as ``verify-lineage --against FILE`` would; one this ledger extends
  is replaced as before, and a checkpoint of another ledger is kept too (exit 2);
- the public key of the ``--key`` it signs with (``-o lab.key.pub``, a slip of tab
  completion): the key verifiers need was gone, and no command makes it again from the
  private key. It is refused (exit 2), as the private key itself was.
"""

from __future__ import annotations

import pytest

from tests.support.state_other_user import rewrite_last_block, two_block_ledger


@pytest.fixture
def checkpointed(cli, tmp_path):
    """A ledger of two blocks, the owner's key, and ``head.cp``, its signed checkpoint."""
    url = two_block_ledger(tmp_path)
    cli("keygen", "lab.key", "--name", "lab/key", check_rc=0)
    cli("checkpoint", "--key", "lab.key", "-o", "head.cp", "--ledger", url, check_rc=0)
    return url, (tmp_path / "head.cp").read_bytes()


@pytest.mark.parametrize("who", ["another account", "the same one after reset-trust"])
def test_a_checkpoint_the_ledger_does_not_extend_is_kept(cli, tmp_path, checkpointed, who):
    url, kept = checkpointed
    rewrite_last_block(tmp_path, url)
    env = {"XDG_STATE_HOME": str(tmp_path / "other-account")} if who == "another account" else {}
    if who != "another account":
        cli("reset-trust", "--ledger", url, check_rc=0)
    result = cli("checkpoint", "--key", "lab.key", "-o", "head.cp", "--ledger", url, env=env)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "head.cp" in result.stderr and "not an extension" in result.stderr, result.stderr
    assert (tmp_path / "head.cp").read_bytes() == kept
    # what the kept file goes on saying, to anyone
    cli("verify", "--against", "head.cp", "--pubkey", "lab.key.pub", "--ledger", url, env=env, check_rc=1)


def test_a_checkpoint_of_another_ledger_is_kept(cli, tmp_path, checkpointed):
    other = tmp_path / "other"
    other.mkdir()
    url = two_block_ledger(other)
    result = cli("checkpoint", "--key", "lab.key", "-o", "head.cp", "--ledger", url)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "head.cp" in result.stderr and "another ledger" in result.stderr, result.stderr
    assert (tmp_path / "head.cp").read_bytes() == checkpointed[1]


def test_a_checkpoint_the_ledger_extends_is_replaced(cli, tmp_path, checkpointed):
    """The other side (a checkpoint kept up to date in one file): replaced, as before."""
    url, kept = checkpointed
    (tmp_path / "in.txt").write_text("more\n")
    cli("run", "--ledger", url, "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    cli("checkpoint", "--key", "lab.key", "-o", "head.cp", "--ledger", url, check_rc=0)
    assert (tmp_path / "head.cp").read_bytes() != kept
    assert b"\n7\n" in (tmp_path / "head.cp").read_bytes()


def test_the_public_key_of_the_signing_key_is_not_written_over(cli, tmp_path, checkpointed):
    url, _ = checkpointed
    public = (tmp_path / "lab.key.pub").read_bytes()
    result = cli("checkpoint", "--key", "lab.key", "-o", "lab.key.pub", "--ledger", url)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "would write over" in result.stderr, result.stderr
    assert (tmp_path / "lab.key.pub").read_bytes() == public


def test_a_checkpoint_no_reader_accepts_is_not_written(cli, tmp_path, checkpointed):
    """A ledger's origin is read from the ledger (ll_meta), which whoever may write the ledger
    can set: one of 70,000 characters made a checkpoint over the 64 KiB a note may be, written
    with exit 0, and refused by every reader (verify-lineage --against: exit 2) when the proof
    was needed. What the command writes is read back first: nothing is written, exit 2."""
    import sqlite3

    url, kept = checkpointed
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("UPDATE ll_meta SET value = ? WHERE key = 'origin'", ("lineage-ledger:" + "o" * 70_000,))
    env = {"XDG_STATE_HOME": str(tmp_path / "other-account")}  # the owner's state knew the old origin
    result = cli("checkpoint", "--key", "lab.key", "-o", "new.cp", "--ledger", url, env=env)
    assert result.returncode == 2, (result.returncode, result.stdout[:200], result.stderr[:2000])
    assert "65536" in result.stderr, result.stderr[:2000]
    assert not (tmp_path / "new.cp").exists()
    result = cli("checkpoint", "--key", "lab.key", "--ledger", url, env=env)  # to standard output: nothing
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stdout[:200])


def test_an_exported_crate_whose_checkpoint_no_reader_accepts_is_not_written(cli, tmp_path, checkpointed):
    """The same origin, through ``export --format ro-crate --key``: the crate's checkpoint.txt
    was the same unreadable note, written with exit 0, and ``verify-lineage --crate`` refused
    the crate when it was needed. Now exit 2, no crate left, as ``checkpoint`` does."""
    import sqlite3

    url, _ = checkpointed
    (tmp_path / "top.txt").write_text("top\\n")
    cli("run", "--ledger", url, "-o", "top.txt", "--", "true", check_rc=0)
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("UPDATE ll_meta SET value = ? WHERE key = 'origin'", ("lineage-ledger:" + "o" * 70_000,))
    env = {"XDG_STATE_HOME": str(tmp_path / "other-account")}  # the owner's state knew the old origin
    for crate in ("crate", "crate.zip"):
        result = cli("export", "top.txt", "--format", "ro-crate", "--key", "lab.key", "-o", crate,
                     "--ledger", url, env=env)
        assert result.returncode == 2, (result.returncode, result.stdout[:200], result.stderr[:2000])
        assert "65536" in result.stderr and "nothing was written" in result.stderr, result.stderr[:2000]
        assert not (tmp_path / crate).exists()
