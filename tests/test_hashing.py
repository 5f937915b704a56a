"""File hashing and the stat cache."""

from __future__ import annotations

import os

import pytest
from blake3 import blake3

from lineage_ledger import ArtifactError, Hasher, StatCache, hash_file, walk_files
from lineage_ledger._files import _digest
from lineage_ledger._files import hashing as _hashing


def test_small_and_large_files_hash_like_blake3(tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.write_bytes(b"abc" * 1000)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    monkeypatch.setattr(_digest, "MMAP_THRESHOLD", 1 << 20)  # send "big" through mmap + threads
    assert hash_file(small).blake3 == blake3(small.read_bytes()).hexdigest()
    assert hash_file(big).blake3 == blake3(big.read_bytes()).hexdigest()
    assert hash_file(big).size == 3 << 20
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert hash_file(empty).blake3 == blake3(b"").hexdigest()


def test_stat_cache_skips_unchanged_files_and_sees_edits(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("version 1")
    cache_file = str(tmp_path / "cache.db")
    first = Hasher(StatCache(cache_file)).hash_many([path])[0]
    reads = []
    original = _hashing._digest
    monkeypatch.setattr(_hashing, "_digest", lambda p, s: reads.append(p) or original(p, s))
    again = Hasher(StatCache(cache_file)).hash_many([path])[0]  # a new process would do this
    assert again == first and reads == []
    # An edit that keeps size and mtime (touch -r) still changes ctime: not served stale.
    st = os.stat(path)
    path.write_text("version 2")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = Hasher(StatCache(cache_file)).hash_many([path])[0]
    assert edited.blake3 == blake3(b"version 2").hexdigest() and len(reads) == 1
    forced = Hasher(StatCache(cache_file), rehash=True).hash_many([path])[0]
    assert forced == edited and len(reads) == 2


def test_damaged_cache_is_replaced_not_trusted(tmp_path):
    cache_file = tmp_path / "cache.db"
    cache_file.write_bytes(b"garbage" * 50)
    (tmp_path / "f").write_text("x")
    assert Hasher(StatCache(str(cache_file))).hash_many([tmp_path / "f"])[0].size == 1
    assert (tmp_path / "cache.db.damaged").exists()


def test_walk_files_is_sorted_and_follows_file_symlinks(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z").write_text("z")
    (tmp_path / "a").write_text("a")
    os.symlink(tmp_path / "a", tmp_path / "c")
    (tmp_path / ".lineage").mkdir()
    (tmp_path / ".lineage" / "statcache.db").write_text("not data")
    assert [os.path.relpath(p, tmp_path) for p in walk_files(str(tmp_path))] == ["a", "c", "b/z"]


@pytest.mark.parametrize("kind", ["missing", "fifo"])  # a directory is hashed: tests/test_directories.py
def test_unhashable_paths_raise_artifact_error(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ArtifactError) as caught:
        hash_file(path)
    assert caught.value.path == str(path)


def test_resolving_keeps_agrees_with_resolving_each_path(tmp_path):
    """``resolving_keeps`` (a directory resolved once, an lstat a file) names a path only
    where resolving it alone gives it back unchanged: never a symbolic link, a file under a
    linked directory, or one under a directory that is not there as named."""
    from lineage_ledger._files.hashing import real_path, resolving_keeps

    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_text("a")
    (real / "sub").mkdir()
    (tmp_path / "linked").symlink_to(real)
    (real / "link.txt").symlink_to(real / "a.txt")
    (real / "dangling.txt").symlink_to(tmp_path / "nowhere")
    paths = [str(p) for p in (
        real / "a.txt", real / "sub", real / "link.txt", real / "dangling.txt", real / "missing.txt",
        tmp_path / "linked" / "a.txt", tmp_path / "linked" / "missing.txt", tmp_path / "gone" / "x.txt",
        real / "a.txt" / "below",
    )]
    kept = resolving_keeps(paths)
    unchanged = {p for p in paths if real_path(p) == p}
    assert kept <= unchanged  # what it leaves out is resolved one by one, as before
    # all but a path below a file (an error to explain, left to the look-up of that path)
    assert unchanged - kept <= {str(real / "a.txt" / "below")}
    assert str(real / "a.txt") in kept and str(real / "missing.txt") in kept
    assert not kept & {str(real / "link.txt"), str(real / "dangling.txt"), str(tmp_path / "linked" / "a.txt")}


@pytest.mark.parametrize("slow", [None, 0.0], ids=["fast storage: one thread", "slow storage: threads"])
def test_hash_many_gives_each_digest_in_order_in_one_thread_or_switching_to_threads(tmp_path, monkeypatch, slow):
    """Files are hashed in the calling thread until a small one is slow to read, then in
    threads (every file counts as slow with a limit of 0): the same digests, in the order
    given, and ``on_done`` called once a file, in that order, either way."""
    import threading

    if slow is not None:
        monkeypatch.setattr(_hashing, "_SLOW_FILE", slow)
    paths = []
    for i in range(40):
        path = tmp_path / f"f{i:02d}"
        path.write_bytes(os.urandom(100 + i))
        paths.append(str(path))
    seen: list[tuple[str, str]] = []
    threads: set[str] = set()
    real = Hasher.hash

    def watched(self, path):
        threads.add(threading.current_thread().name)
        return real(self, path)

    monkeypatch.setattr(Hasher, "hash", watched)
    done = Hasher(threads=4).hash_many(paths[::-1], on_done=lambda a: seen.append((a.path, a.blake3)))
    expected = [(p, blake3(open(p, "rb").read()).hexdigest()) for p in paths[::-1]]
    assert [(a.path, a.blake3) for a in done] == expected and seen == expected
    assert (threads == {threading.current_thread().name}) == (slow is None)
