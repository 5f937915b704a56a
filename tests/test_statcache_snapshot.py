"""The stat cache's snapshot: old caches carried over (marshal snapshots ignored), savers merged,
damage ignored."""

from __future__ import annotations

import marshal
import os
import sqlite3

from blake3 import blake3

from lineage_ledger import Hasher, StatCache
from lineage_ledger._files import hashing as _hashing


def _files(tmp_path, names):
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_text(name)
        paths.append(str(path))
    return paths


def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    original = _hashing._digest
    monkeypatch.setattr(_hashing, "_digest", lambda p, s: reads.append(p) or original(p, s))
    return reads


def test_a_cache_of_rows_from_before_the_snapshot_is_used_and_carried_over(tmp_path, monkeypatch):
    (path,) = _files(tmp_path, ["a"])
    st = os.stat(path)
    cache_file = str(tmp_path / "old.db")
    db = sqlite3.connect(cache_file)
    with db:  # the layout the stat cache used before the snapshot
        db.execute("CREATE TABLE stat_cache (path TEXT PRIMARY KEY, size INTEGER,"
                   " mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, digest TEXT)")
        db.execute("INSERT INTO stat_cache VALUES (?, ?, ?, ?, ?, ?)",
                   (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "ab" * 32))
    db.close()
    reads = _count_reads(monkeypatch)
    # The row's (deliberately fake) digest is served: the cache was read, nothing hashed.
    assert Hasher(StatCache(cache_file)).hash_many([path])[0].blake3 == "ab" * 32
    assert reads == []
    again = StatCache(cache_file)
    assert again._generation == 1 and again.get(path, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))


def test_concurrent_savers_keep_each_others_entries(tmp_path, monkeypatch):
    a, b = _files(tmp_path, ["a", "b"])
    cache_file = str(tmp_path / "cache.db")
    first, second = StatCache(cache_file), StatCache(cache_file)  # two processes, same file
    Hasher(first).hash_many([a])
    Hasher(second).hash_many([b])  # saved after `first`, which it never loaded
    reads = _count_reads(monkeypatch)
    merged = Hasher(StatCache(cache_file)).hash_many([a, b])
    assert reads == [] and [m.blake3 for m in merged] == [blake3(b"a").hexdigest(), blake3(b"b").hexdigest()]


def test_a_damaged_snapshot_is_ignored_and_rebuilt(tmp_path, monkeypatch):
    (path,) = _files(tmp_path, ["a"])
    cache_file = str(tmp_path / "cache.db")
    Hasher(StatCache(cache_file)).hash_many([path])
    db = sqlite3.connect(cache_file)
    (whole,) = db.execute("SELECT data FROM stat_snapshot").fetchone()
    db.close()
    for garbage in (b"\x00not marshal", b"", bytes(range(256)), whole[:-1], whole[:20], whole + b"\0"):
        db = sqlite3.connect(cache_file)
        with db:
            db.execute("UPDATE stat_snapshot SET data = ?", (garbage,))
        db.close()
        reads = _count_reads(monkeypatch)
        assert Hasher(StatCache(cache_file)).hash_many([path])[0].blake3 == blake3(b"a").hexdigest()
        assert reads == [path]  # not trusted: hashed again, and the snapshot rewritten
        monkeypatch.undo()


def test_a_marshal_snapshot_from_an_older_version_is_not_read(tmp_path, monkeypatch):
    """Older versions stored the snapshot with marshal, which can build code objects: it is not
    loaded (an entry in it, here a fake digest, is not served) and is replaced on the next save."""
    (path,) = _files(tmp_path, ["a"])
    st = os.stat(path)
    cache_file = str(tmp_path / "cache.db")
    Hasher(StatCache(cache_file)).hash_many([path])
    entries = {path: (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "ab" * 32)}
    db = sqlite3.connect(cache_file)
    with db:
        db.execute("UPDATE stat_snapshot SET data = ?", (marshal.dumps(entries, 4),))
    db.close()
    reads = _count_reads(monkeypatch)
    assert Hasher(StatCache(cache_file)).hash_many([path])[0].blake3 == blake3(b"a").hexdigest()
    assert reads == [path]
    db = sqlite3.connect(cache_file)
    (data,) = db.execute("SELECT data FROM stat_snapshot").fetchone()
    db.close()
    assert data != marshal.dumps(entries, 4) and StatCache(cache_file).get(path, entries[path][1:5]) == (
        blake3(b"a").hexdigest())
