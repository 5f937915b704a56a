"""The public key that ``verify-lineage --against CHECKPOINT --pubkey FILE`` trusts, when
another user can write it (helper-122).

A checkpoint proves the ledger only grew since it was signed, as far as the key it is checked
with is the signer's. A ``.pub`` file that another user may write (its mode, its owner, a
directory on its way that they may write, a link to a file of theirs) is one they can swap
for their own key; with it they sign a checkpoint of a ledger they rewrote, and the check
passed (exit 0, "extends checkpoint"). As the private key's check does, the public key is
now refused (exit 2, naming the file and why), before any signature is checked.

As root (CI), the other user is uid 65534 / gid 65534; as another account, a file it does
not own cannot be made (skipped).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import made_once

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to uid 65534 needs root; CI runs as root")


@pytest.fixture
def workdir(shared_workdir):
    """At one path for the module's tests: ``published`` is made once and put back there."""
    return shared_workdir


def _published(cli, workdir):
    keys = workdir / "keys"
    keys.mkdir(mode=0o755)
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    cli("keygen", keys / "lab.key", "--name", "lab/key", check_rc=0)
    cli("checkpoint", "--key", keys / "lab.key", "-o", "good.cp", check_rc=0)
    shutil.rmtree(workdir / ".lineage")
    (workdir / "in.txt").write_text("other data\n")
    theirs = {"XDG_STATE_HOME": str(workdir / "attacker")}  # the rewriter's own account and state
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", env=theirs, check_rc=0)
    cli("keygen", "attacker.key", "--name", "lab/key", env=theirs, check_rc=0)
    cli("checkpoint", "--key", "attacker.key", "-o", "forged.cp", env=theirs, check_rc=0)


#: A ledger, the owner's key pair and a checkpoint signed with it; then the ledger is rewritten
#: (replaced by another history) and its rewriter signs a checkpoint of it with a key of their
#: own, ``forged.cp``, whose public key is ``attacker.key.pub``. Six commands, made once for
#: the module's tests that start from them (conftest's made_once).
published = made_once(_published, "published")


def _verify(cli, workdir, pubkey):
    """A reviewer's check, with a state of their own (nothing remembered of this ledger)."""
    return cli("verify", "--against", "forged.cp", "--pubkey", pubkey,
               env={"XDG_STATE_HOME": str(workdir / "reviewer")})


def _swap_in_attackers_key(path):
    path.write_text((path.parent.parent / "attacker.key.pub").read_text())  # keys/lab.key.pub


def test_the_owners_key_refuses_the_forged_checkpoint(cli, published):
    """The other side: with the owner's own key, untouched, the forgery fails (exit 1)."""
    result = _verify(cli, published, published / "keys" / "lab.key.pub")
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "no signature by a trusted key" in result.stderr, result.stderr


@needs_root
@pytest.mark.parametrize("how", ["mode 0666", "mode 0620, another group", "owned by uid 65534",
                                 "a directory others may write", "a link to a file of uid 65534"])
def test_a_public_key_another_user_can_write_is_refused(cli, published, how):
    keys = published / "keys"
    pub = keys / "lab.key.pub"
    given = pub
    if how == "mode 0666":
        pub.chmod(0o666)
    elif how == "mode 0620, another group":
        os.chown(pub, -1, NOBODY)
        pub.chmod(0o620)
    elif how == "owned by uid 65534":
        os.chown(pub, NOBODY, NOBODY)
    elif how == "a directory others may write":
        keys.chmod(0o777)
    else:
        os.chown(pub, NOBODY, NOBODY)
        given = published / "mine.pub"
        given.symlink_to(pub)
    _swap_in_attackers_key(pub)  # what the other user could do, done here as root
    result = _verify(cli, published, given)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "extends checkpoint" not in result.stdout, result.stdout
    assert str(given) in result.stderr and "other users may write" in result.stderr, result.stderr


@needs_root
def test_a_public_key_of_root_in_a_sticky_directory_is_trusted(cli, published, tmp_path):
    """Not refused: a key root owns (installed by an administrator), and one of the account's
    own in a sticky directory (/tmp): no other user may replace either."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    shutil.copy(published / "attacker.key.pub", sticky / "trusted.pub")
    (sticky / "trusted.pub").chmod(0o644)
    result = _verify(cli, published, sticky / "trusted.pub")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "extends checkpoint" in result.stdout, result.stdout


@needs_root
@pytest.mark.parametrize("how", ["a directory others may write", "a directory of uid 65534"])
def test_a_private_key_others_could_have_put_there_is_refused(cli, published, how):
    """The private key's own mode and owner were checked, not the directory it is in: one that
    another user may write is one where they put a key pair of their own, whose public half
    the owner then hands out (and whose checkpoints they forge); signing with it said nothing."""
    keys = published / "keys"
    if how == "a directory others may write":
        keys.chmod(0o777)
    else:
        os.chown(keys, NOBODY, NOBODY)
    result = cli("checkpoint", "--key", keys / "lab.key", "-o", "new.cp",
                 env={"XDG_STATE_HOME": str(published / "reviewer")})  # the ledger as it is now
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert str(keys / "lab.key") in result.stderr and "other users may write" in result.stderr, result.stderr
    assert not (published / "new.cp").exists()


def test_a_list_of_many_public_keys_is_read(cli, published):
    """``--pubkey`` takes a list of keys, one a line (BAASH's ranks.pub: a key per rank). Read
    with the bound of one key file (4 KiB), a list of about 60 keys or more was refused
    ("too large to be a key file", exit 2): a service of 64 ranks could not be checked."""
    from lineage_ledger._log.checkpoint import generate_key

    keys = published / "keys"
    strangers = [generate_key(f"baash-rank-{n}")[1] for n in range(99)]
    listing = keys / "ranks.pub"
    listing.write_text("".join(f"{key}\n" for key in [*strangers, (keys / "lab.key.pub").read_text().strip()]))
    assert listing.stat().st_size > 4096
    result = cli("verify", "--against", "good.cp", "--pubkey", listing,
                 env={"XDG_STATE_HOME": str(published / "reviewer")})
    # signed by the owner's key, the last of the 100: checked, and of another ledger than this one now
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "too large" not in result.stderr and "the checkpoint is of ledger" in result.stdout + result.stderr, result.stderr
    result = cli("verify", "--against", "forged.cp", "--pubkey", listing,
                 env={"XDG_STATE_HOME": str(published / "reviewer")})
    assert result.returncode == 1 and "no signature by a trusted key" in result.stderr, result.stderr


@needs_root
def test_baash_checkpoint_refuses_keys_another_user_may_write(cli, published, tmp_path):
    """docs/baash.md: ``--keys`` must come from somewhere the service cannot rewrite for you.
    ``lineage-ledger baash checkpoint`` read them with BAASH's own reader, which checks no
    owner: the service's own ranks.pub (owned by its account) vouched for whatever it endorsed.
    Refused before the service is asked (its socket need not exist here)."""
    listing = published / "keys" / "lab.key.pub"
    os.chown(listing, NOBODY, NOBODY)
    result = cli("baash", "checkpoint", "--ledger", f"baash://{tmp_path / 'no-such.sock'}", "--keys", listing)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "other users may write" in result.stderr and "cannot reach" not in result.stderr, result.stderr


def _grant_write(path, uid: int) -> None:
    """An access ACL that lets ``uid`` write ``path`` (setfacl -m u:UID:rw), set as its
    extended attribute: the mode then shows the ACL's mask in its group bits (0664), with
    the file's own group unchanged. Skipped where the file system keeps no ACLs."""
    import errno
    import struct

    undefined = 0xFFFFFFFF
    entries = [(0x01, 6, undefined), (0x02, 6, uid), (0x04, 4, undefined), (0x10, 6, undefined), (0x20, 4, undefined)]
    try:
        os.setxattr(path, "system.posix_acl_access",
                    struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries))
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"no ACLs on this file system ({err.strerror})")
        raise


def test_a_public_key_an_acl_lets_another_user_write_is_refused(cli, published):
    """Group write is allowed where the file's group is the account's private one (umask 002
    on Debian and Ubuntu); an ACL granting another user write shows as that same group bit
    (its mask), the file's group unchanged: taken for the private group's, the key passed."""
    pub = published / "keys" / "lab.key.pub"
    _grant_write(pub, NOBODY if os.geteuid() != NOBODY else 0)
    assert pub.stat().st_mode & 0o777 == 0o664
    _swap_in_attackers_key(pub)
    result = _verify(cli, published, pub)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "other users may write" in result.stderr and "ACL" in result.stderr, result.stderr


@needs_root
def test_keygen_refuses_a_directory_others_may_write(cli, workdir):
    """keygen wrote the pair into a directory another user may write (exit 0), where the key
    is refused on first use; it now says so at once (exit 2) and leaves nothing there."""
    shared = workdir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = cli("keygen", shared / "lab.key", "--name", "lab/key")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "other users may write" in result.stderr and str(shared) in result.stderr, result.stderr
    assert list(shared.iterdir()) == []


def test_a_crate_is_checked_against_a_list_of_public_keys(cli, workdir):
    """``verify-lineage --crate C --pubkey LIST`` read one key where ``--against`` reads a list
    (a BAASH service's ``ranks.pub``, a key a line): a crate signed by one key of the list
    failed as "not a key file" (exit 2). It is checked against every key of the list now; a
    list without the signing key fails the check (exit 1)."""
    from lineage_ledger._log.checkpoint import generate_key

    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    cli("keygen", "lab.key", "--name", "lab/key", check_rc=0)
    cli("export", "out.txt", "--format", "ro-crate", "--key", "lab.key", "-o", "crate", check_rc=0)
    strangers = [generate_key(f"baash-rank-{n}")[1] for n in range(3)]
    (workdir / "ranks.pub").write_text("".join(f"{key}\n" for key in [*strangers, (workdir / "lab.key.pub").read_text().strip()]))
    (workdir / "others.pub").write_text("".join(f"{key}\n" for key in strangers))
    checked = cli("verify", "--crate", "crate", "--pubkey", "ranks.pub")
    assert checked.returncode == 0 and "signature checked" in checked.stdout + checked.stderr, \
        (checked.returncode, checked.stdout, checked.stderr)
    refused = cli("verify", "--crate", "crate", "--pubkey", "others.pub")
    assert refused.returncode == 1, (refused.returncode, refused.stdout, refused.stderr)


def test_a_public_key_saved_with_a_byte_order_mark_is_refused_saying_so(cli, published):
    """A ``.pub`` an editor saved as "UTF-8 with BOM" was read as a key named with U+FEFF, and
    refused as "the public key's id ... does not match its name and key", which sends a user
    looking for a forged key. Still refused (exit 2), saying what is wrong."""
    keys = published / "keys"
    bom = keys / "bom.pub"
    bom.write_bytes(b"\xef\xbb\xbf" + (keys / "lab.key.pub").read_bytes())
    result = cli("verify", "--against", "good.cp", "--pubkey", bom, env={"XDG_STATE_HOME": str(published / "reviewer")})
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "byte-order mark" in result.stderr and "does not match" not in result.stderr, result.stderr
