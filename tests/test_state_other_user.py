"""Another local user against the trusted local state (``core/_log/trust.py``): the tree head
an account verified, and the nodes and names beside it, kept outside the ledger per user; and
against what else is kept in the same state root (the stat cache) or done there (reset-trust).

Whoever can write that state, or move it aside, makes the account trust what it finds next:
a ledger rewritten in the meantime then verifies (see docs/security.md, "Trusted state").
So another user must not read or write it, must not be able to plant it, a link in its place,
or a directory above it that they control, and the account's commands refuse all of these.

CI runs these as root: "another user" is uid 65534 (nobody), in a forked child that drops
root for good, as in tests/test_spool_security.py and tests/test_baash_security.py. The
account is root itself, which ignores file modes: what keeps the state private here is
ownership checks, not access checks, so they are exercised for real.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record
from tests.support.users import as_user

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid (65534) needs root; CI runs as root")


def as_nobody(action: Callable[[], object]) -> object:
    """``action()`` run in a forked child that has dropped to uid and gid 65534; its JSON-able
    result. An exception it raises fails the test: expected refusals go through ``_attempt``."""
    result = as_user(NOBODY, NOBODY, [], action)
    assert not (isinstance(result, dict) and "crashed" in result), result  # an attempt that was meant to work
    return result


def _attempt(call: Callable[[], object]) -> str:
    """"ok", or the errno name the call failed with."""
    try:
        call()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, type(err).__name__)
    return "ok"


@pytest.fixture
def public():
    """A directory every user may enter and make entries in, sticky, as /tmp is (pytest's own
    tmp is 0700 and would hide everything under it from nobody, whatever the state's modes)."""
    path = Path(tempfile.mkdtemp(prefix="state-other-user-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- a ledger, verified, then rewritten consistently ---------------------------------------------
def _records():
    records, previous = [], artifact("/data/raw", "raw")
    for i in range(6):
        out = artifact(f"/data/step-{i}", f"out{i}")
        records.append(make_record(i, run_id="run", inputs=[previous], outputs=[out]))
        previous = out
    return records


def _ledger(tmp_path: Path) -> str:
    """Two blocks of three records; the building process remembers nothing the tests look at
    (its state is the test's private one, not the directories under test)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        records = _records()
        for start in (0, 3):
            ledger.append_records([r.stored() for r in records[start : start + 3]])
    return url


def _rewrite_last_block(tmp_path: Path, url: str) -> None:
    """The last block replaced by one whose ids, root and block id are recomputed: the chain
    verifies on its own, and only a remembered head (or a checkpoint) tells."""
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        last, first = conn.execute("SELECT height, first_seq FROM ll_blocks ORDER BY height DESC LIMIT 1").fetchone()
        conn.execute("DELETE FROM ll_artifacts WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_records WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_blocks WHERE height = ?", (last,))
    forged = _records()[3:]
    forged[0] = make_record(3, run_id="run", inputs=[artifact("/data/step-2", "out2")],
                            outputs=[artifact("/data/step-3", "forged")])
    with open_ledger(url, spool=str(tmp_path / "spool-forger")) as ledger:
        ledger.append_records([r.stored() for r in forged])


def _verify(tmp_path: Path, url: str, env: dict[str, str]):
    return run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=env)


def _ledger_dir(root: Path, url: str) -> Path:
    """Where the account keeps this ledger's state under ``root`` (named by the ledger's identity,
    which anyone who can read the ledger can work out)."""
    from lineage_ledger.backends import open_backend

    with open_backend(url, create=False) as backend:
        identity = backend.identity
    return root / blake3(identity.encode()).hexdigest()[:32]


def _refused(result, *why: str) -> None:
    """The command stopped on a configuration error (status 2) that says why."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert all(phrase in result.stderr for phrase in why), (why, result.stderr)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- reading and writing it --------------------------------------------------------------------
def test_another_user_can_neither_read_nor_write_the_state(tmp_path, public):
    url = _ledger(tmp_path)
    root = public / "state"
    old = os.umask(0)  # the most permissive umask: the modes must not follow it
    try:
        _verify(tmp_path, url, {"LINEAGE_STATE_DIR": str(root)}).check_returncode()
    finally:
        os.umask(old)
    directory = _ledger_dir(root, url)
    files = sorted(p.name for p in directory.iterdir())
    # what the attempts below cover: the head, the nodes, the block starts, the names, the lock
    assert {"head.json", "level-00.bin", "starts.bin", "lock"} <= set(files), files
    assert any(name.startswith("names-") for name in files), files
    before = _snapshot(directory)

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

    def each_file() -> dict[str, list[str]]:
        return {name: [_attempt(lambda n=name: os.open(directory / n, os.O_RDONLY)),
                       _attempt(lambda n=name: os.open(directory / n, os.O_WRONLY | os.O_APPEND)),
                       _attempt(lambda n=name: os.open(directory / n, os.O_WRONLY | os.O_TRUNC))]
                for name in files}

    assert as_nobody(each_file) == {name: ["EACCES"] * 3 for name in files}
    directory.chmod(0o700)
    root.chmod(0o700)
    assert _snapshot(directory) == before
    _verify(tmp_path, url, {"LINEAGE_STATE_DIR": str(root)}).check_returncode()


# -- planting it where the account will look ------------------------------------------------
def _forged_head(url: str) -> bytes:
    """A head as the account would write it, for a ledger of 6 records, whose root is made up."""
    return json.dumps({"origin": _origin(url), "size": 6, "root": "ab" * 32, "blocks": 2, "block_id": "cd" * 32,
                       "verified": "", "audited": "", "names": 0}).encode()


def _origin(url: str) -> str:
    from lineage_ledger.backends import open_backend

    with open_backend(url, create=False) as backend:
        return getattr(backend, "origin", backend.identity)


@pytest.mark.parametrize("variable", ["LINEAGE_STATE_DIR", "XDG_STATE_HOME"])
@pytest.mark.parametrize("planted", ["directory", "link to theirs", "link to the account's"])
@pytest.mark.parametrize("shared_root", [False, True])
def test_a_ledger_directory_planted_by_another_user_is_refused(tmp_path, public, variable, planted, shared_root):
    """Nobody plants the directory of this ledger where the account will look for it: their
    own, with a head they made up, or a link to it, or a link to a directory of the account's.
    They can because they got to the state root first and made it, or because it is shared:
    the account's own, writable by all and sticky, as /tmp is (others can add entries to it,
    not remove or rename the account's)."""
    url = _ledger(tmp_path)
    shared = public  # shared and sticky, as /tmp is
    root = shared / "lineage-ledger" if variable == "XDG_STATE_HOME" else shared / "state"
    env = {variable: str(shared if variable == "XDG_STATE_HOME" else root)}
    directory = _ledger_dir(root, url)
    theirs = shared / "theirs"
    accounts = tmp_path / "accounts-own"
    accounts.mkdir(mode=0o700)
    (accounts / "keep").write_text("the account's own file")
    forged = _forged_head(url)

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
    result = _verify(tmp_path, url, env)
    _refused(result, "refusing")  # the ledger's directory, or (since) the state root already
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


def _roots(public: Path, where: str) -> tuple[dict[str, str], Path, Path]:
    """(the account's environment, its state root, the directory nobody owns) for a state root
    that nobody made, or that lies below a directory nobody made."""
    theirs = public / "theirs"
    if where == "LINEAGE_STATE_DIR is theirs":
        return {"LINEAGE_STATE_DIR": str(theirs)}, theirs, theirs
    if where == "XDG_STATE_HOME/lineage-ledger is theirs":
        return {"XDG_STATE_HOME": str(public)}, public / "lineage-ledger", public / "lineage-ledger"
    if where == "XDG_STATE_HOME is theirs":
        return {"XDG_STATE_HOME": str(theirs)}, theirs / "lineage-ledger", theirs
    assert where == "a directory above LINEAGE_STATE_DIR is theirs"
    return {"LINEAGE_STATE_DIR": str(theirs / "deep" / "state")}, theirs / "deep" / "state", theirs


ROOTS = ["LINEAGE_STATE_DIR is theirs", "XDG_STATE_HOME/lineage-ledger is theirs", "XDG_STATE_HOME is theirs",
         "a directory above LINEAGE_STATE_DIR is theirs"]


@pytest.mark.parametrize("where", ROOTS)
def test_a_state_root_another_user_controls_is_refused(tmp_path, public, where):
    """Nobody made the state root, or a directory above it, and can write it (not sticky):
    the account must not keep its state there, or write anything into it."""
    url = _ledger(tmp_path)
    env, root, theirs = _roots(public, where)
    as_nobody(lambda: os.mkdir(theirs, 0o755))
    assert theirs.stat().st_uid == NOBODY
    result = _verify(tmp_path, url, env)
    _refused(result, "refusing to keep the verified tree head", f"{theirs} belongs to uid 65534")
    assert not os.path.exists(_ledger_dir(root, url)), "the state was kept where nobody can move it"
    # Checked before anything is made: no empty folders of the account's left in nobody's tree.
    assert os.listdir(theirs) == [], os.listdir(theirs)


@pytest.mark.parametrize("where", ROOTS)
def test_another_user_who_controls_the_state_root_cannot_reset_the_trust(tmp_path, public, where):
    """The attack the refusal above prevents, end to end: the account verifies, nobody moves
    what it kept aside, the ledger's last block is rewritten consistently, and the account's
    next command must not find it good (it would trust whatever it found, with nothing kept)."""
    url = _ledger(tmp_path)
    env, root, theirs = _roots(public, where)
    as_nobody(lambda: os.mkdir(theirs, 0o755))
    _verify(tmp_path, url, env)  # kept in nobody's directory, or refused
    if root == theirs:
        as_nobody(_move_everything_aside(root))
    else:  # what lies below nobody's directory on the way to the root, moved aside whole
        below = theirs / root.relative_to(theirs).parts[0]
        as_nobody(lambda: os.rename(below, theirs / "aside") if os.path.exists(below) else None)
    _rewrite_last_block(tmp_path, url)
    after = _verify(tmp_path, url, env)
    assert after.returncode != 0, ("the rewritten ledger was accepted", after.stdout, after.stderr)


def test_a_state_root_that_is_another_users_link_is_refused(tmp_path, public):
    """Nobody plants the state root as a link, to a private directory of the account's own:
    nobody can point it elsewhere later (at an empty directory), so it is refused all the same."""
    url = _ledger(tmp_path)
    shared = public
    accounts = tmp_path / "accounts-state"
    accounts.mkdir(mode=0o700)
    link = shared / "state"
    as_nobody(lambda: os.symlink(accounts, link))
    assert link.lstat().st_uid == NOBODY
    result = _verify(tmp_path, url, {"LINEAGE_STATE_DIR": str(link)})
    _refused(result, f"{link} is a link of uid 65534")
    assert list(accounts.iterdir()) == []


def test_a_link_the_account_made_to_its_own_private_directory_is_followed(tmp_path, public):
    """The checks refuse what others control, not links as such: the account's own link, in a
    directory only it can write, to its own private directory, is a state root like any other."""
    url = _ledger(tmp_path)
    accounts = tmp_path / "accounts-state"
    accounts.mkdir(mode=0o700)
    mine = public / "mine"
    mine.mkdir(mode=0o755)
    (mine / "state").symlink_to(accounts)
    _verify(tmp_path, url, {"LINEAGE_STATE_DIR": str(mine / "state")}).check_returncode()
    assert (_ledger_dir(accounts, url) / "head.json").exists()


# -- the account's own state, left open to others ------------------------------------------
def test_state_that_others_could_write_is_not_trusted(tmp_path, public):
    """The account opened its ledger directory to everyone (``chmod -R a+rwX``, say). Nobody
    removed the head from it and the last block was rewritten: the account's next command must
    not make the directory private again and trust whatever it finds."""
    url = _ledger(tmp_path)
    env = {"LINEAGE_STATE_DIR": str(public / "state")}
    _verify(tmp_path, url, env).check_returncode()
    directory = _ledger_dir(public / "state", url)
    (public / "state").chmod(0o711)
    directory.chmod(0o777)
    assert as_nobody(lambda: [os.unlink(directory / name) for name in sorted(os.listdir(directory))
                              if name != "lock"]) != []
    _rewrite_last_block(tmp_path, url)
    result = _verify(tmp_path, url, env)
    _refused(result, "other users could write it", "reset-trust")
    assert os.stat(directory).st_mode & 0o777 == 0o777  # left as found, for the account to look at
    # The way out the message names: forgetting it on purpose, then trusting what is there.
    run_cli("reset-trust", "--ledger", url, cwd=tmp_path, env=env, check_rc=0)
    _verify(tmp_path, url, env).check_returncode()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_state_that_others_could_only_read_is_made_private_and_kept(tmp_path, public):
    """Read access given away costs privacy, not integrity: the directory is made private again
    and what it holds still counts (the rewrite is caught)."""
    url = _ledger(tmp_path)
    env = {"LINEAGE_STATE_DIR": str(public / "state")}
    _verify(tmp_path, url, env).check_returncode()
    directory = _ledger_dir(public / "state", url)
    directory.chmod(0o755)
    _rewrite_last_block(tmp_path, url)
    result = _verify(tmp_path, url, env)
    assert result.returncode == 1 and "HistoryRewritten" in result.stdout, result
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


# -- what else is kept in the state root: the stat cache ---------------------------------------
def _run_on_indir(tmp_path: Path, env: dict[str, str]):
    """``lineage-ledger run -i indir``: the input directory is hashed through the stat cache
    kept in the state root; the result, and the digest the record lists for the directory."""
    indir = tmp_path / "indir"
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = run_cli("run", "-i", "indir", "-o", "out", "--", "sh", "-c", "echo x > out", cwd=tmp_path,
                     env={"LINEAGE_LEDGER_URL": url, **env})
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader-state")) as ledger:
        seen = ledger.last_seen(str(indir), roles=("in",))
    return result, None if seen is None else seen[2]["blake3"]


def _indir(tmp_path: Path) -> tuple[Path, str]:
    """A directory of one file, and its digest read now without any cache."""
    from lineage_ledger import hash_file

    (tmp_path / "indir").mkdir()
    (tmp_path / "indir" / "f").write_text("data\n")
    return tmp_path / "indir" / "f", hash_file(tmp_path / "indir").blake3


def _cache_saying(cache_file: Path, target: Path, digest: str) -> Callable[[], str]:
    """What writes a stat cache at ``cache_file`` giving ``target`` a digest of the forger's
    choosing, keyed by its size, times and inode (anyone who can stat it reads them; read here,
    as the forger's child cannot enter pytest's private directory). Written by the code under
    test, so that it is in the format that code reads, in a folder of the writer's own beside
    the one it goes to (that code keeps no cache in a folder of another's), then moved there."""
    from lineage_ledger import StatCache

    st = os.stat(target)
    key, signature = os.path.realpath(target), (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def write() -> str:
        own = tempfile.mkdtemp(dir=cache_file.parent.parent)
        cache = StatCache(os.path.join(own, cache_file.name))
        cache.put(key, signature, digest)
        cache.save()
        os.rename(os.path.join(own, cache_file.name), cache_file)
        os.rmdir(own)
        return "written"

    return write


FORGED = "ee" * 32


@pytest.mark.parametrize("where", ROOTS)
def test_the_stat_cache_is_not_kept_in_a_state_root_another_user_controls(tmp_path, public, where):
    """In a root nobody made (or below a directory of theirs), nobody could replace
    ``statcache.db`` with digests of their choosing, which the account's next record of that
    directory would list as what its files held. The cache only saves time: the run goes on
    without it (every file read), with one warning, and makes nothing in nobody's tree."""
    env, _, theirs = _roots(public, where)
    as_nobody(lambda: (os.mkdir(theirs), os.chmod(theirs, 0o777)))
    _, digest = _indir(tmp_path)
    result, recorded = _run_on_indir(tmp_path, env)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert os.listdir(theirs) == [], (os.listdir(theirs), result.stderr)
    assert result.stderr.count("not caching file digests") == 1, result.stderr
    assert f"{theirs} belongs to uid 65534" in result.stderr
    assert recorded == digest


@pytest.mark.parametrize("how", ["nobody's file", "the account's file, writable by others"])
def test_a_stat_cache_another_user_could_write_is_not_read(tmp_path, public, how):
    """The state root is the account's and private now, but the cache file in it is not: nobody
    left it there while the root was open to all, or the account made it writable by all. What
    nobody put in it must not be what the account records: it is neither read nor written."""
    root = public / "state"
    target, digest = _indir(tmp_path)
    cache_file = root / "statcache.db"
    if how == "nobody's file":
        root.mkdir(mode=0o777)
        root.chmod(0o777)
        as_nobody(_cache_saying(cache_file, target, FORGED))
        root.chmod(0o700)
        assert cache_file.stat().st_uid == NOBODY
    else:
        root.mkdir(mode=0o700)
        _run_on_indir(tmp_path, {"LINEAGE_STATE_DIR": str(root)})[0].check_returncode()
        cache_file.chmod(0o666)
        root.chmod(0o711)  # nobody reaches the file by its name, as through a home directory
        _cache_saying(tmp_path / "forged.db", target, FORGED)()
        forged = (tmp_path / "forged.db").read_bytes()

        def overwrite() -> str:
            with open(cache_file, "r+b") as handle:
                handle.truncate()
                handle.write(forged)
            return "overwritten"

        assert as_nobody(overwrite) == "overwritten"
    before = cache_file.read_bytes()
    result, recorded = _run_on_indir(tmp_path, {"LINEAGE_STATE_DIR": str(root)})
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert recorded == digest, "the record lists the digest nobody chose"
    assert "not using the stat cache" in result.stderr, result.stderr
    assert cache_file.read_bytes() == before  # left as found, for the account to look at


# -- reset-trust -------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["their directory", "their link to the account's state"])
def test_reset_trust_deletes_nothing_in_a_state_root_another_user_controls(tmp_path, public, how):
    """``reset-trust`` deletes the ledger's directory under the state root. Where nobody
    controls that root, what it would delete is whatever nobody put there: their directory
    (with a head they made up, which it would report as forgotten), or, through a link of
    theirs, the account's own trusted state kept elsewhere. It is refused, as verifying is."""
    url = _ledger(tmp_path)
    if how == "their directory":
        root = public / "theirs"
        directory = _ledger_dir(root, url)
        forged = _forged_head(url)

        def plant() -> str:
            os.mkdir(root, 0o777)
            os.mkdir(directory, 0o777)
            (directory / "head.json").write_bytes(forged)
            return "planted"

        assert as_nobody(plant) == "planted"
    else:
        accounts = tmp_path / "accounts-state"
        accounts.mkdir(mode=0o700)
        _verify(tmp_path, url, {"LINEAGE_STATE_DIR": str(accounts)}).check_returncode()
        directory = _ledger_dir(accounts, url)
        root = public / "state"
        as_nobody(lambda: os.symlink(accounts, root))
    kept = _snapshot(directory)
    result = run_cli("reset-trust", "--ledger", url, cwd=tmp_path, env={"LINEAGE_STATE_DIR": str(root)})
    _refused(result, "refusing", "65534")
    assert "forgot" not in result.stderr
    assert _snapshot(directory) == kept and "head.json" in kept


@pytest.mark.parametrize("planted", ["their directory", "their link", "the account's link"])
def test_reset_trust_refuses_what_it_cannot_remove_as_the_accounts_own(tmp_path, public, planted):
    """The state root is the account's and private now, but while it was open to all nobody
    planted the ledger's directory in it (or a link in its place; or the account made such a
    link itself). Removing it would delete nobody's directory, or fail on the link while
    reporting the head read through it as forgotten: refused (status 2), nothing removed."""
    url = _ledger(tmp_path)
    root = public / "state"
    root.mkdir()
    root.chmod(0o777)
    directory = _ledger_dir(root, url)
    target = tmp_path / "accounts-state" if planted == "the account's link" else public / "theirs"
    forged = _forged_head(url)

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
    _refused(result, "refusing", str(directory), "65534" if planted == "their directory" else "a link")
    assert "forgot" not in result.stderr
    assert os.path.lexists(directory) and (directory / "head.json").read_bytes() == forged
