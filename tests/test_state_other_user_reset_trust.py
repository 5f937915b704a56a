"""The account's own trusted state left open to others, and ``reset-trust``: state others could
write is not trusted until the account forgets it on purpose; state they could only read is
made private and kept; and reset-trust itself removes only what is the account's own (see
tests/support/state_other_user.py for why, and how these run as root).
"""

from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import run_cli
from tests.support.state_other_user import (
    as_nobody,
    assert_refused,
    forged_head,
    ledger_dir,
    needs_root,
    public_fixture,  # noqa: F401 - the ``public`` fixture
    rewrite_last_block,
    snapshot,
    two_block_ledger,
    verify_lineage,
)

pytestmark = needs_root


# -- the account's own state, left open to others ------------------------------------------
def test_state_that_others_could_write_is_not_trusted(tmp_path, public):
    """The account opened its ledger directory to everyone (``chmod -R a+rwX``, say). Nobody
    removed the head from it and the last block was rewritten: the account's next command must
    not make the directory private again and trust whatever it finds."""
    url = two_block_ledger(tmp_path)
    env = {"LINEAGE_STATE_DIR": str(public / "state")}
    verify_lineage(tmp_path, url, env).check_returncode()
    directory = ledger_dir(public / "state", url)
    (public / "state").chmod(0o711)
    directory.chmod(0o777)
    assert as_nobody(lambda: [os.unlink(directory / name) for name in sorted(os.listdir(directory))
                              if name != "lock"]) != []
    rewrite_last_block(tmp_path, url)
    result = verify_lineage(tmp_path, url, env)
    assert_refused(result, "other users could write it", "reset-trust")
    assert os.stat(directory).st_mode & 0o777 == 0o777  # left as found, for the account to look at
    # The way out the message names: forgetting it on purpose, then trusting what is there.
    run_cli("reset-trust", "--ledger", url, cwd=tmp_path, env=env, check_rc=0)
    verify_lineage(tmp_path, url, env).check_returncode()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_state_that_others_could_only_read_is_made_private_and_kept(tmp_path, public):
    """Read access given away costs privacy, not integrity: the directory is made private again
    and what it holds still counts (the rewrite is caught)."""
    url = two_block_ledger(tmp_path)
    env = {"LINEAGE_STATE_DIR": str(public / "state")}
    verify_lineage(tmp_path, url, env).check_returncode()
    directory = ledger_dir(public / "state", url)
    directory.chmod(0o755)
    rewrite_last_block(tmp_path, url)
    result = verify_lineage(tmp_path, url, env)
    assert result.returncode == 1 and "HistoryRewritten" in result.stdout, result
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


# -- reset-trust -------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["their directory", "their link to the account's state"])
def test_reset_trust_deletes_nothing_in_a_state_root_another_user_controls(tmp_path, public, how):
    """``reset-trust`` deletes the ledger's directory under the state root. Where nobody
    controls that root, what it would delete is whatever nobody put there: their directory
    (with a head they made up, which it would report as forgotten), or, through a link of
    theirs, the account's own trusted state kept elsewhere. It is refused, as verifying is."""
    url = two_block_ledger(tmp_path)
    if how == "their directory":
        root = public / "theirs"
        directory = ledger_dir(root, url)
        forged = forged_head(url)

        def plant() -> str:
            os.mkdir(root, 0o777)
            os.mkdir(directory, 0o777)
            (directory / "head.json").write_bytes(forged)
            return "planted"

        assert as_nobody(plant) == "planted"
    else:
        accounts = tmp_path / "accounts-state"
        accounts.mkdir(mode=0o700)
        verify_lineage(tmp_path, url, {"LINEAGE_STATE_DIR": str(accounts)}).check_returncode()
        directory = ledger_dir(accounts, url)
        root = public / "state"
        as_nobody(lambda: os.symlink(accounts, root))
    kept = snapshot(directory)
    result = run_cli("reset-trust", "--ledger", url, cwd=tmp_path, env={"LINEAGE_STATE_DIR": str(root)})
    assert_refused(result, "refusing", "65534")
    assert "forgot" not in result.stderr
    assert snapshot(directory) == kept and "head.json" in kept


@pytest.mark.parametrize("planted", ["their directory", "their link", "the account's link"])
def test_reset_trust_refuses_what_it_cannot_remove_as_the_accounts_own(tmp_path, public, planted):
    """The state root is the account's and private now, but while it was open to all nobody
    planted the ledger's directory in it (or a link in its place; or the account made such a
    link itself). Removing it would delete nobody's directory, or fail on the link while
    reporting the head read through it as forgotten: refused (status 2), nothing removed."""
    url = two_block_ledger(tmp_path)
    root = public / "state"
    root.mkdir()
    root.chmod(0o777)
    directory = ledger_dir(root, url)
    target = tmp_path / "accounts-state" if planted == "the account's link" else public / "theirs"
    forged = forged_head(url)

    def plant() -> str:
        where = directory if planted == "their directory" else target
        os.mkdir(where, 0o777)
        os.chmod(where, 0o777)
        (where / "head.json").write_bytes(forged)
        if planted == "their link":
            os.symlink(target, directory)
        return "planted"

    if planted == "the account's link":
        target.mkdir(mode=0o700)
        (target / "head.json").write_bytes(forged)
        directory.symlink_to(target)
    else:
        assert as_nobody(plant) == "planted"
    root.chmod(0o700)
    result = run_cli("reset-trust", "--ledger", url, cwd=tmp_path, env={"LINEAGE_STATE_DIR": str(root)})
    assert_refused(result, "refusing", str(directory), "65534" if planted == "their directory" else "a link")
    assert "forgot" not in result.stderr
    assert os.path.lexists(directory) and (directory / "head.json").read_bytes() == forged
