"""The stat cache is the account's alone: created 0600, and a cache file (or a journal SQLite
would roll into it) that others could have written is neither read nor written; in the state
root, a root others control means no cache at all. Another user who could write it would
choose the digests the account records for its files (see docs/security.md). The cases that
need a real second user are in tests/test_state_other_user.py; these need only file modes."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from blake3 import blake3

from lineage_ledger import Hasher, StatCache
from lineage_ledger._files.hashing import cached_hasher
from tests.conftest import run_cli

FORGED = "ee" * 32


def _signature(path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _forged_cache(cache_file, path) -> None:
    """A cache that gives ``path`` a digest it never had (as another user would write it)."""
    cache = StatCache(str(cache_file))
    cache.put(str(path), _signature(path), FORGED)
    cache.save()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "f"
    path.write_text("data")
    return path


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the most permissive umask: the mode must not follow it
    yield
    os.umask(old)


def test_the_cache_file_is_created_private(tmp_path, data, open_umask):
    cache_file = tmp_path / "cache" / "stat.db"
    Hasher(StatCache(str(cache_file))).hash_many([data])
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    # and again after a damaged one was set aside and the cache rebuilt
    cache_file.write_bytes(b"garbage" * 50)
    Hasher(StatCache(str(cache_file))).hash_many([data])
    assert (tmp_path / "cache" / "stat.db.damaged").exists()
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600


def test_the_state_roots_cache_is_created_private(tmp_path, data, monkeypatch, open_umask):
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("data")
    cached_hasher().hash(str(tmp_path / "d"))  # a directory: its files through the cache
    assert stat.S_IMODE((tmp_path / "state" / "statcache.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_a_cache_others_could_only_read_is_made_private_and_kept(tmp_path, data):
    """Older versions made it 0644: read access given away costs privacy, not integrity."""
    cache_file = tmp_path / "stat.db"
    _forged_cache(cache_file, data)  # the account's own entry, deliberately fake to show it is read
    cache_file.chmod(0o644)
    assert Hasher(StatCache(str(cache_file))).hash_many([data])[0].blake3 == FORGED
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("how", ["cache writable by others", "journal writable by others", "cache is a link"])
def test_a_cache_others_could_have_written_is_neither_read_nor_written(tmp_path, data, caplog, how):
    cache_file = tmp_path / "stat.db"
    if how == "cache is a link":
        _forged_cache(tmp_path / "elsewhere.db", data)
        cache_file.symlink_to(tmp_path / "elsewhere.db")
        why = "is not a regular file"
    else:
        _forged_cache(cache_file, data)
        writable = cache_file if how == "cache writable by others" else tmp_path / "stat.db-journal"
        writable.touch()
        writable.chmod(0o666)
        why = f"{writable} is writable by other users"
    before = (tmp_path / "elsewhere.db" if how == "cache is a link" else cache_file).read_bytes()
    other = tmp_path / "g"
    other.write_text("other")
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        cache = StatCache(str(cache_file))
        hashed = Hasher(cache).hash_many([data, other])
        again = Hasher(StatCache(str(cache_file))).hash_many([data])
    assert [a.blake3 for a in hashed] == [blake3(b"data").hexdigest(), blake3(b"other").hexdigest()]
    assert again[0].blake3 == blake3(b"data").hexdigest()
    assert cache.refused is not None and why in cache.refused
    assert (tmp_path / "elsewhere.db" if how == "cache is a link" else cache_file).read_bytes() == before
    warnings = [r.getMessage() for r in caplog.records if "not using the stat cache" in r.getMessage()]
    assert len(warnings) == 1 and why in warnings[0], warnings  # once, not for each cache opened


def test_no_cache_in_a_state_root_others_could_write(tmp_path, data, monkeypatch, caplog):
    """The account's own root, but writable by all: others could replace the cache in it, so
    files are hashed without one (a cache only saves time), and nothing is created there."""
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(root))
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        first, second = cached_hasher(), cached_hasher()
        digest = first.hash(str(tmp_path / "f")).blake3
    assert first.cache is None and second.cache is None
    assert digest == blake3(b"data").hexdigest()
    assert os.listdir(root) == []
    warnings = [r.getMessage() for r in caplog.records if "not caching file digests" in r.getMessage()]
    assert len(warnings) == 1 and f"{root} is writable by other users" in warnings[0], warnings


# -- the folder the cache is kept in (``hash --cache``: .lineage/ in the project folder) -------
@pytest.fixture
def public():
    """A folder all users may enter and add to, sticky, as /tmp (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="statcache-folder-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_no_cache_in_a_project_folder_others_could_write(tmp_path, caplog):
    """The account's own project folder, opened to all and not sticky (a shared lab folder):
    anyone could swap ``.lineage`` or the cache in it between the check of the file and its
    opening. Files are hashed without the cache, one warning, nothing created there."""
    project = tmp_path / "project"
    project.mkdir()
    project.chmod(0o777)
    (project / "f").write_text("data")
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        cache = StatCache(str(project / ".lineage" / "statcache.db"))
        digest = Hasher(cache).hash_many([project / "f"])[0].blake3
        cache.save()
    assert digest == blake3(b"data").hexdigest()
    assert cache.refused is not None and f"{project} is writable by other users" in cache.refused
    assert sorted(os.listdir(project)) == ["f"]
    warnings = [r.getMessage() for r in caplog.records if "not using the stat cache" in r.getMessage()]
    assert len(warnings) == 1 and f"{project} is writable by other users" in warnings[0], warnings


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid (65534) needs root; CI runs as root")
@pytest.mark.parametrize("how", ["their .lineage link", "their .lineage", "their project folder, open to all"])
def test_hash_keeps_no_cache_where_another_user_controls_its_folder(tmp_path, public, how):
    """``lineage-ledger hash`` keeps its cache in ``.lineage/`` of the project folder. Where
    nobody planted ``.lineage`` (a link, or a directory of theirs), or owns the project folder
    and lets all write it, they could swap the cache between its check and its opening: it is
    not used (one warning, every file read) and nothing is written through what they control."""
    from tests.test_state_other_user import NOBODY, as_nobody

    theirs = public / "theirs"
    project = public / "project"
    if how == "their project folder, open to all":
        as_nobody(lambda: (os.mkdir(project), os.chmod(project, 0o777)))
    else:
        project.mkdir(mode=0o755)
        project.chmod(0o1777)  # sticky, as /tmp: nobody may add entries, not replace the account's

        def plant() -> str:
            if how == "their .lineage":
                os.mkdir(project / ".lineage")
                os.chmod(project / ".lineage", 0o777)
            else:
                os.mkdir(theirs)
                os.chmod(theirs, 0o777)
                os.symlink(theirs, project / ".lineage")
            return "planted"

        assert as_nobody(plant) == "planted"
    (project / "f").write_text("data")
    result = run_cli("hash", "f", cwd=project, env={"LINEAGE_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.split()[0] == blake3(b"data").hexdigest()
    assert result.stderr.count("not using the stat cache") == 1, result.stderr
    why = {"their .lineage link": f"{project / '.lineage'} is a link of uid {NOBODY}",
           "their .lineage": f"{project / '.lineage'} belongs to uid {NOBODY}",
           "their project folder, open to all": f"{project} belongs to uid {NOBODY}"}[how]
    assert why in result.stderr, result.stderr
    if how == "their project folder, open to all":
        assert sorted(os.listdir(project)) == ["f"]
    else:
        assert os.listdir(theirs if how == "their .lineage link" else project / ".lineage") == []


def test_hash_keeps_its_cache_in_a_sticky_shared_folder(tmp_path, public):
    """The checks refuse what others control, not shared folders as such: the account's own
    ``.lineage`` in a folder all may write but that is sticky (as /tmp) is kept and used."""
    project = public / "project"
    project.mkdir(mode=0o755)
    project.chmod(0o1777)
    (project / "f").write_text("data")
    first = run_cli("hash", "f", cwd=project, env={"LINEAGE_STATE_DIR": str(tmp_path / "state")}, check_rc=0)
    assert "stat cache" not in first.stderr, first.stderr
    assert stat.S_IMODE((project / ".lineage" / "statcache.db").stat().st_mode) == 0o600
