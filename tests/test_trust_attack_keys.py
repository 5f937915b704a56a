"""The private key that signs checkpoints, when another user owns it (helper-117).

``checkpoint --key`` refuses a private key that other users may read or write (mode 0640,
0604: "signs for whoever read it", as ssh refuses one), but signed with a key file of mode
0600 that another user owns, given directly or through a link of the account's own: that
user can read it (and chmod it) whenever they like, so it signs for them as much as for the
account. As root (CI), the other user is uid 65534; as another account, a file it does not
own cannot be made (skipped).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.faults import small_tmpfs

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to uid 65534 needs root; CI runs as root")


@pytest.fixture
def recorded(cli, workdir):
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    cli("keygen", "lab.key", "--name", "lab/key", check_rc=0)
    return workdir


@needs_root
@pytest.mark.parametrize("given", ["the file", "a link to it"])
def test_a_private_key_another_user_owns_is_refused(cli, recorded, given):
    os.chown(recorded / "lab.key", NOBODY, NOBODY)
    assert (recorded / "lab.key").stat().st_mode & 0o777 == 0o600
    if given == "a link to it":
        (recorded / "mine.key").symlink_to(recorded / "lab.key")
    key = "lab.key" if given == "the file" else "mine.key"
    result = cli("checkpoint", "--key", key, "-o", "head.cp")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "uid 65534" in result.stderr and key in result.stderr, result.stderr
    assert "PRIVATE+KEY" not in result.stderr + result.stdout
    assert not (recorded / "head.cp").exists()


def test_the_accounts_own_key_still_signs(cli, recorded):
    """The other side: a 0600 key of the account's own, through a link of its own too."""
    (recorded / "mine.key").symlink_to(recorded / "lab.key")
    cli("checkpoint", "--key", "mine.key", "-o", "head.cp", check_rc=0)
    cli("verify", "--against", "head.cp", "--pubkey", "lab.key.pub", check_rc=0)


@needs_root
def test_keygen_on_a_full_disk_says_so_and_leaves_no_key_file(cli, workdir, tmp_path):
    """A disk full while the key is written: 'unexpected OSError: [Errno 28]' and an empty
    private key file left behind, so that keygen refused the same name once there was room
    ('exists; refusing to overwrite a key file')."""
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'fill'}", "bs=4k"], capture_output=True, check=False)
        result = cli("keygen", mount / "lab.key")
        assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
        assert "No space left on device" in result.stderr and str(mount / "lab.key") in result.stderr, result.stderr
        assert "unexpected" not in result.stderr, result.stderr
        assert not (mount / "lab.key").exists() and not (mount / "lab.key.pub").exists()
        (mount / "fill").unlink()
        cli("keygen", mount / "lab.key", check_rc=0)
