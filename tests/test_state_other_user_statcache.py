"""What else is kept in the state root: the stat cache (``lineage-ledger run -i DIR`` hashes
the directory through it). Another user who controls the root, or could write the cache file,
could make the account record digests of their choosing: the cache is then neither kept there
nor read, and the run goes on reading every file (see tests/support/state_other_user.py for
how these run as root).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.state_other_user import (
    NOBODY,
    ROOTS,
    as_nobody,
    needs_root,
    public_fixture,  # noqa: F401 - the ``public`` fixture
    state_roots,
)

pytestmark = needs_root


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
    env, _, theirs = state_roots(public, where)
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
