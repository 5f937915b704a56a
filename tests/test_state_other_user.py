"""Another local user against the account's trusted local state: it can neither read nor write
it, plant the ledger's directory or the state root (or a link in their place, or a directory
above), nor move what the account kept aside, and the account's commands refuse all of these
(tests/support/state_other_user.py says why, and how these run as root).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.state_other_user import (
    NOBODY,
    ROOTS,
    as_nobody,
    assert_refused,
    forged_head,
    ledger_dir,
    needs_root,
    public_fixture,  # noqa: F401 - the ``public`` fixture
    rewrite_last_block,
    snapshot,
    state_roots,
    two_block_ledger,
    verify_lineage,
)

pytestmark = needs_root


def _attempt(call: Callable[[], object]) -> str:
    """"ok", or the errno name the call failed with."""
    try:
        call()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, type(err).__name__)
    return "ok"


# -- reading and writing it --------------------------------------------------------------------
def test_another_user_can_neither_read_nor_write_the_state(tmp_path, public):
    url = two_block_ledger(tmp_path)
    root = public / "state"
    old = os.umask(0)  # the most permissive umask: the modes must not follow it
    try:
        verify_lineage(tmp_path, url, {"LINEAGE_STATE_DIR": str(root)}).check_returncode()
    finally:
        os.umask(old)
    directory = ledger_dir(root, url)
    files = sorted(p.name for p in directory.iterdir())
    # what the attempts below cover: the head, the nodes, the block starts, the names, and the
    # lock, beside the directory (a full audit swaps the directory; the lock stays)
    assert {"head.json", "level-00.bin", "starts.bin"} <= set(files), files
    lock = root / f"{directory.name}.lock"
    assert lock.is_file() and lock.stat().st_mode & 0o077 == 0, oct(lock.stat().st_mode)
    assert any(name.startswith("names-") for name in files), files
    before = snapshot(directory)

    def directories() -> dict[str, str]:
        return {
            "list root": _attempt(lambda: os.listdir(root)),
            "create in root": _attempt(lambda: os.open(root / "planted", os.O_WRONLY | os.O_CREAT, 0o600)),
            "list ledger dir": _attempt(lambda: os.listdir(directory)),
            "read head": _attempt(lambda: open(directory / "head.json", "rb").read()),
            "create in ledger dir": _attempt(lambda: os.open(directory / "planted", os.O_WRONLY | os.O_CREAT, 0o600)),
            "rename ledger dir": _attempt(lambda: os.rename(directory, root / "aside")),
        }

    assert as_nobody(directories) == {
        "list root": "EACCES", "create in root": "EACCES", "list ledger dir": "EACCES",
        "read head": "EACCES", "create in ledger dir": "EACCES", "rename ledger dir": "EACCES",
    }

    # The files themselves are private too: with the directories opened for search only (so
    # that nobody reaches each file by its name), every open still fails.
    root.chmod(0o711)
    directory.chmod(0o711)

    paths = {**{name: directory / name for name in files}, "lock": lock}

    def each_file() -> dict[str, list[str]]:
        return {name: [_attempt(lambda p=path: os.open(p, os.O_RDONLY)),
                       _attempt(lambda p=path: os.open(p, os.O_WRONLY | os.O_APPEND)),
                       _attempt(lambda p=path: os.open(p, os.O_WRONLY | os.O_TRUNC))]
                for name, path in paths.items()}

    assert as_nobody(each_file) == {name: ["EACCES"] * 3 for name in paths}
    directory.chmod(0o700)
    root.chmod(0o700)
    assert snapshot(directory) == before
    verify_lineage(tmp_path, url, {"LINEAGE_STATE_DIR": str(root)}).check_returncode()


# -- planting it where the account will look ------------------------------------------------

@pytest.mark.parametrize("variable", ["LINEAGE_STATE_DIR", "XDG_STATE_HOME"])
@pytest.mark.parametrize("planted", ["directory", "link to theirs", "link to the account's"])
@pytest.mark.parametrize("shared_root", [False, True])
def test_a_ledger_directory_planted_by_another_user_is_refused(tmp_path, public, variable, planted, shared_root):
    """Nobody plants the directory of this ledger where the account will look for it: their
    own, with a head they made up, or a link to it, or a link to a directory of the account's.
    They can because they got to the state root first and made it, or because it is shared:
    the account's own, writable by all and sticky, as /tmp is (others can add entries to it,
    not remove or rename the account's)."""
    url = two_block_ledger(tmp_path)
    shared = public  # shared and sticky, as /tmp is
    root = shared / "lineage-ledger" if variable == "XDG_STATE_HOME" else shared / "state"
    env = {variable: str(shared if variable == "XDG_STATE_HOME" else root)}
    directory = ledger_dir(root, url)
    theirs = shared / "theirs"
    accounts = tmp_path / "accounts-own"
    accounts.mkdir(mode=0o700)
    (accounts / "keep").write_text("the account's own file")
    forged = forged_head(url)

    if shared_root:
        root.mkdir()
        root.chmod(0o1777)

    def plant() -> str:
        if not shared_root:
            os.mkdir(root, 0o777)
            os.chmod(root, 0o777)
        if planted == "directory":
            target = directory
        else:
            target = theirs
            os.symlink(accounts if planted == "link to the account's" else theirs, directory)
        if planted != "link to the account's":
            os.mkdir(target, 0o777)
            os.chmod(target, 0o777)
            (target / "head.json").write_bytes(forged)
        return "planted"

    assert as_nobody(plant) == "planted"
    result = verify_lineage(tmp_path, url, env)
    assert_refused(result, "refusing")  # the ledger's directory, or (since) the state root already
    assert "6 records" not in result.stdout  # the made-up head was not what it went by
    # Nothing written through what was planted, nor into the account's own directory.
    if planted == "link to the account's":
        assert os.readlink(directory) == str(accounts)
        assert sorted(p.name for p in accounts.iterdir()) == ["keep"]
    else:
        target = directory if planted == "directory" else theirs
        assert sorted(p.name for p in target.iterdir()) == ["head.json"]
        assert (target / "head.json").read_bytes() == forged
        assert target.stat().st_uid == NOBODY


def _move_everything_aside(root: Path) -> Callable[[], list[str]]:
    """What nobody does with a directory they can write: move the account's entries aside
    (renaming needs write access to the directory renamed in, not to what is renamed)."""
    def move() -> list[str]:
        moved = []
        for name in sorted(os.listdir(root)):
            if not name.startswith("aside-"):
                os.rename(os.path.join(root, name), os.path.join(root, f"aside-{name}"))
                moved.append(name)
        return moved

    return move


@pytest.mark.parametrize("where", ROOTS)
def test_a_state_root_another_user_controls_is_refused(tmp_path, public, where):
    """Nobody made the state root, or a directory above it, and can write it (not sticky):
    the account must not keep its state there, or write anything into it."""
    url = two_block_ledger(tmp_path)
    env, root, theirs = state_roots(public, where)
    as_nobody(lambda: os.mkdir(theirs, 0o755))
    assert theirs.stat().st_uid == NOBODY
    result = verify_lineage(tmp_path, url, env)
    assert_refused(result, "refusing to keep the verified tree head", f"{theirs} belongs to uid 65534")
    assert not os.path.exists(ledger_dir(root, url)), "the state was kept where nobody can move it"
    # Checked before anything is made: no empty folders of the account's left in nobody's tree.
    assert os.listdir(theirs) == [], os.listdir(theirs)


@pytest.mark.parametrize("where", ROOTS)
def test_another_user_who_controls_the_state_root_cannot_reset_the_trust(tmp_path, public, where):
    """The attack the refusal above prevents, end to end: the account verifies, nobody moves
    what it kept aside, the ledger's last block is rewritten consistently, and the account's
    next command must not find it good (it would trust whatever it found, with nothing kept)."""
    url = two_block_ledger(tmp_path)
    env, root, theirs = state_roots(public, where)
    as_nobody(lambda: os.mkdir(theirs, 0o755))
    verify_lineage(tmp_path, url, env)  # kept in nobody's directory, or refused
    if root == theirs:
        as_nobody(_move_everything_aside(root))
    else:  # what lies below nobody's directory on the way to the root, moved aside whole
        below = theirs / root.relative_to(theirs).parts[0]
        as_nobody(lambda: os.rename(below, theirs / "aside") if os.path.exists(below) else None)
    rewrite_last_block(tmp_path, url)
    after = verify_lineage(tmp_path, url, env)
    assert after.returncode != 0, ("the rewritten ledger was accepted", after.stdout, after.stderr)


def test_a_state_root_that_is_another_users_link_is_refused(tmp_path, public):
    """Nobody plants the state root as a link, to a private directory of the account's own:
    nobody can point it elsewhere later (at an empty directory), so it is refused all the same."""
    url = two_block_ledger(tmp_path)
    shared = public
    accounts = tmp_path / "accounts-state"
    accounts.mkdir(mode=0o700)
    link = shared / "state"
    as_nobody(lambda: os.symlink(accounts, link))
    assert link.lstat().st_uid == NOBODY
    result = verify_lineage(tmp_path, url, {"LINEAGE_STATE_DIR": str(link)})
    assert_refused(result, f"{link} is a link of uid 65534")
    assert list(accounts.iterdir()) == []


def test_a_link_the_account_made_to_its_own_private_directory_is_followed(tmp_path, public):
    """The checks refuse what others control, not links as such: the account's own link, in a
    directory only it can write, to its own private directory, is a state root like any other."""
    url = two_block_ledger(tmp_path)
    accounts = tmp_path / "accounts-state"
    accounts.mkdir(mode=0o700)
    mine = public / "mine"
    mine.mkdir(mode=0o755)
    (mine / "state").symlink_to(accounts)
    verify_lineage(tmp_path, url, {"LINEAGE_STATE_DIR": str(mine / "state")}).check_returncode()
    assert (ledger_dir(accounts, url) / "head.json").exists()
