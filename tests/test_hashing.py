"""File hashing and the stat cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

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
    monkeypatch.setattr(_digest, "LARGE", 1 << 20)  # send "big" through the blocks hashed in threads
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


@pytest.mark.parametrize("slow", [float("inf"), 0.0], ids=["fast storage: one thread", "slow storage: threads"])
def test_hash_many_gives_each_digest_in_order_in_one_thread_or_switching_to_threads(tmp_path, monkeypatch, slow):
    """Files are hashed in the calling thread until a small one is slow to read, then in
    threads (every file counts as slow with a limit of 0, none with no limit: with the real
    2 ms, a busy machine made one of 40 files slow now and then, and the one-thread case
    failed): the same digests, in the order given, and ``on_done`` called once a file, in
    that order, either way."""
    import threading

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
    assert (threads == {threading.current_thread().name}) == (slow == float("inf"))


def _large_file(path, size):
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for _ in range(size >> 20):
            handle.write(block)


@pytest.mark.parametrize("program", ["hash", "verify-lineage"])
def test_a_large_file_truncated_by_another_process_during_the_read_is_reported_not_fatal(tmp_path, program):
    """Another user empties a large file (``: > big.dat``, one that user may write) while
    ``lineage-ledger hash`` or ``verify-lineage`` reads it. Read through an mmap, the pages past the new end are gone and
    the next touch of one killed the process with SIGBUS: no report, no exit status of its
    own, and the cache or report it was writing lost. The command must go on and say what
    the file is now: ``hash`` the digest of the emptied file, ``verify-lineage`` the file
    changed (exit 1).

    The truncation is timed by the kernel's own account (tests/support/midread.py): the
    command is stopped once /proc shows it part-way through the file, truncated, and let go.
    A run that finished with the file before it was caught is run again."""
    from lineage_ledger import Record, open_ledger
    from lineage_ledger.testing.records import BASE_TIME
    from tests.support.midread import stop_while_reading

    size = 256 << 20
    big = tmp_path / "big.dat"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(tmp_path / "state")
    bin_dir = os.path.dirname(sys.executable)
    for attempt in range(5):
        _large_file(big, size)
        os.chmod(big, 0o666)  # a file another user can write, and so truncate (else it is mapped)
        if program == "hash":
            command = [os.path.join(bin_dir, "lineage-ledger"), "hash", "--rehash", "--cache",
                       str(tmp_path / f"cache-{attempt}.db"), str(big)]
        else:
            url = f"sqlite:///{tmp_path / f'ledger-{attempt}.db'}"
            recorded = hash_file(big)
            with open_ledger(url, spool=str(tmp_path / f"spool-{attempt}"), state_dir=str(tmp_path / "state")) as ledger:
                ledger.append_records([Record(engine="test", run_id="r", task_id="t", task_name="make", status="succeeded",
                                              started=BASE_TIME, ended=BASE_TIME, outputs=[recorded]).stored()])
            command = [os.path.join(bin_dir, "verify-lineage"), "--ledger", url, "--json", str(big)]
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            caught = stop_while_reading(process.pid, str(big), size)
            if caught:
                os.truncate(big, 0)  # as another user's `: > big.dat` does
                os.kill(process.pid, signal.SIGCONT)
            out, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if caught:
            break
    else:
        pytest.fail("the command was never caught part-way through the file in 5 runs")
    assert process.returncode != -signal.SIGBUS, "killed by SIGBUS"
    if program == "hash":
        assert process.returncode == 0, (process.returncode, out, err)
        digest, shown_size, name = out.split()
        assert (digest, shown_size, name) == (blake3(b"").hexdigest(), "0", "big.dat")
    else:
        assert process.returncode == 1, (process.returncode, out, err)
        report = json.loads(out)
        assert [failure["path"] for failure in report["failures"]] == [str(big)], report


def test_a_large_file_is_mapped_only_where_no_other_user_can_write_it(tmp_path):
    """Mapped (BLAKE3 hashes the page cache where it lies, 1.6x a read on two processors)
    only where no other user can truncate it under the read; read otherwise. Same digest."""
    from lineage_ledger._files import _digest

    big = tmp_path / "big.dat"
    _large_file(big, 8 << 20)
    expected = blake3(big.read_bytes()).hexdigest()
    for mode, mapped in ((0o644, True), (0o600, True), (0o664, False), (0o646, False), (0o666, False)):
        os.chmod(big, mode)
        fd = os.open(big, os.O_RDONLY)
        try:
            assert _digest._only_ours(fd) is mapped, oct(mode)
        finally:
            os.close(fd)
        assert _digest.file_digest(str(big), 8 << 20) == expected, oct(mode)
