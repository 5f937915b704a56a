"""The Fabric profile's private key is refused where another user could replace it, and
warned about where another user could read it; through the CLI, as a user opens the ledger.

Found at stop 38: the key was read whatever its mode or its directory's. A key that another
user may write (or one in a directory another user may write, which lets them put their own
file in its place) makes this workflow sign as whoever wrote it: refused, exit 2, before
anything is sent. A key that others may only read is what Fabric's own tools write (the test
network's keystore files are 0644): a warning, naming the file and the fix. Needs the fabric
extra, not a network (the profile points at a port nobody listens on). About 10 s.
"""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from tests.conftest import run_cli
from tests.test_fabric_client import _identity, _profile

pytest.importorskip("fabric_protos", reason="the fabric extra is not installed: make install-fabric")


@pytest.fixture
def profile(tmp_path):
    home = tmp_path / "id"
    home.mkdir(mode=0o700)
    _identity(home)
    os.chmod(home / "key.pem", 0o600)
    return _profile(home, timeout=2), home


def _shared_group() -> int:
    """A group that is not this user's private group (root may give a file any group)."""
    names = ("users", "nogroup", "staff", "daemon") if os.geteuid() == 0 else ()
    for name in names:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    mine = pwd.getpwuid(os.geteuid())
    others = [gid for gid in os.getgroups() if gid != mine.pw_gid]
    if not others:
        pytest.skip("this user belongs to no group but its own")
    return others[0]


def _log(path, workdir):
    return run_cli("log", "--ledger", f"fabric://{path}", cwd=workdir)


@pytest.mark.parametrize("key_mode, dir_mode", [(0o666, 0o700), (0o620, 0o700), (0o600, 0o777), (0o600, 0o770)])
def test_a_key_others_could_replace_is_refused(tmp_path, profile, key_mode, dir_mode):
    path, home = profile
    os.chmod(home / "key.pem", key_mode)
    os.chmod(home, dir_mode)
    if (key_mode | dir_mode) & 0o020:  # a group with other members than this user
        shared = _shared_group()
        os.chown(home / "key.pem" if key_mode & 0o020 else home, -1, shared)
    result = _log(path, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert str(home) in result.stderr and "other users may write" in result.stderr, result.stderr
    assert "chmod" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_key_others_may_read_is_warned_about(tmp_path, profile):
    path, home = profile
    os.chmod(home / "key.pem", 0o644)  # as the Fabric test network writes it
    result = _log(path, tmp_path)
    assert "other users may read" in result.stderr and "key.pem" in result.stderr, result.stderr
    assert "chmod 600" in result.stderr, result.stderr
    assert "other users may write" not in result.stderr, result.stderr


def test_a_private_key_in_a_sticky_directory_is_taken(tmp_path, profile):
    """A shared directory with the sticky bit (as /tmp): others may add files there, but not
    replace this user's; the key is used (the call then fails only for want of a peer)."""
    path, home = profile
    os.chmod(home, 0o1777)
    result = _log(path, tmp_path)
    assert "other users may" not in result.stderr, result.stderr
    assert "127.0.0.1:1" in result.stderr, result.stderr  # it went as far as the endpoint


def test_a_key_its_owners_own_group_may_write_is_taken(tmp_path, profile):
    """A user private group (named after the user, no other member: Debian's default, where
    a umask of 002 makes new files 0664) holds only this user: as ssh counts it."""
    path, home = profile
    me = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(me.pw_gid)
    if group.gr_name != me.pw_name or set(group.gr_mem) - {me.pw_name}:
        pytest.skip("this user has no private group")
    os.chown(home / "key.pem", -1, me.pw_gid)
    os.chmod(home / "key.pem", 0o660)
    result = _log(path, tmp_path)
    assert "other users may" not in result.stderr and "127.0.0.1:1" in result.stderr, result.stderr
