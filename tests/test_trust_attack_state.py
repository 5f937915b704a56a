"""The trusted local state (the tree head this account verified, kept per ledger outside it)
when its disk fills up, or when what lies in its directory is not the account's own file
(helper-117). The directory itself is checked (another user's, or one others may write, is
refused); these are the files in it.

- The state's disk full: every command ended in "unexpected OSError: [Errno 28] No space left
  on device", exit 2, naming neither the state nor its directory, so a user looks at the
  ledger's disk; it should say where (and it recovers once there is room: checked too).
- ``lock`` replaced by a link that leads nowhere: ``verify-lineage`` ended in "unexpected
  OSError: [Errno 40] Too many levels of symbolic links".
- ``head.json`` replaced by a link to a file that another user owns: read through the link and
  trusted, every command answering exit 0 from a head that user may rewrite at will (a head of
  a shorter tree lets a rewrite past it pass). The directory's own rule: not trusted, exit 2,
  with ``reset-trust`` as the way out.

Root only for the tmpfs and the other user's file (CI runs as root); about 20 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.faults import small_tmpfs

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs and another user's file need root")


def _state_of(root: Path) -> Path:
    (directory,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return directory


@pytest.fixture
def recorded(cli, workdir):
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    return workdir


@needs_root
def test_a_full_disk_under_the_state_is_named_and_recovered_from(cli, recorded, tmp_path):
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        env = {"LINEAGE_STATE_DIR": str(mount / "state")}
        cli("verify", env=env, check_rc=0)
        subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'fill'}", "bs=4k"], capture_output=True, check=False)
        for name in ("a", "b", "c"):
            cli("run", "-i", "out.txt", "-o", f"{name}.txt", "--", "cp", "out.txt", f"{name}.txt", env=env, check_rc=0)
        for command in (("verify", "c.txt"), ("why", "c.txt"), ("log",), ("checkpoint",)):
            result = cli(*command, env=env)
            assert result.returncode == 2, (command, result.returncode, result.stdout, result.stderr)
            assert "No space left on device" in result.stderr and str(mount / "state") in result.stderr, result.stderr
            assert "unexpected" not in result.stderr, result.stderr
        (mount / "fill").unlink()
        cli("verify", "c.txt", env=env, check_rc=0)
        cli("verify", env=env, check_rc=0)


def test_a_lock_that_is_a_dangling_link_is_named(cli, recorded, private_state):
    cli("verify", check_rc=0)
    state = _state_of(private_state / "lineage-ledger")
    lock = state.parent / f"{state.name}.lock"  # beside the directory a full audit swaps
    lock.unlink()
    lock.symlink_to(recorded / "nowhere")
    cli("run", "-i", "out.txt", "-o", "a.txt", "--", "cp", "out.txt", "a.txt", check_rc=0)
    result = cli("verify")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert str(lock) in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert not (recorded / "nowhere").exists()
    run = cli("reset-trust")
    assert run.returncode == 0 and "forgot the tree head" in run.stderr, run.stderr
    cli("verify", check_rc=0)


@needs_root
def test_a_head_that_is_a_link_to_another_users_file_is_not_trusted(cli, recorded, private_state):
    cli("verify", check_rc=0)
    state = _state_of(private_state / "lineage-ledger")
    public = Path(tempfile.mkdtemp(prefix="trust-attack-", dir="/tmp"))
    try:
        public.chmod(0o755)
        theirs = public / "head.json"
        shutil.copy(state / "head.json", theirs)
        os.chown(theirs, NOBODY, NOBODY)
        (state / "head.json").unlink()
        (state / "head.json").symlink_to(theirs)
        for command in (("verify", "out.txt"), ("why", "out.txt"), ("log",), ("checkpoint",)):
            result = cli(*command)
            assert result.returncode == 2, (command, result.returncode, result.stdout, result.stderr)
            assert "head.json" in result.stderr and "reset-trust" in result.stderr, result.stderr
        assert theirs.read_bytes() and os.stat(theirs).st_uid == NOBODY  # theirs: not written through the link
        cli("reset-trust", check_rc=0)
        assert theirs.exists()
        cli("verify", "out.txt", check_rc=0)
    finally:
        shutil.rmtree(public, ignore_errors=True)
