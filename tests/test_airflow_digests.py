"""The Airflow plugin's digest memo and its sweep of old try markers, on real files.

Separate processes are stood in for by separate ``DigestMemo`` objects on one directory
(each task process has its own); the whole path through real Airflow runs is covered in
``tests/test_airflow.py``.
"""

from __future__ import annotations

import os
import time

import pytest

from lineage_ledger import hash_file
from tests.support.airflow_site import private_airflow_home

private_airflow_home()  # the sweep reads Airflow's configuration: never with ~/airflow (issue 18)
pytest.importorskip("lineage_ledger_airflow", reason="the Airflow plugin is not installed (make install)")

from lineage_ledger_airflow import _tries  # noqa: E402
from lineage_ledger_airflow._digests import MEMO_MIN_SIZE, DigestMemo  # noqa: E402


def write(path, size: int, fill: bytes = b"a") -> None:
    path.write_bytes(fill * size)


def test_memo_reused_across_processes_while_the_signature_holds(tmp_path):
    big = tmp_path / "big.bin"
    write(big, MEMO_MIN_SIZE + 10)
    producer = DigestMemo(str(tmp_path / "memo"))
    assert producer.hash(str(big)) == hash_file(big).entry() and producer.hits == 0
    consumer = DigestMemo(str(tmp_path / "memo"))  # another task process: reads the memo file
    assert consumer.hash(str(big)) == hash_file(big).entry()
    assert consumer.hits == 1


def test_memo_never_vouches_for_a_touch_r_edit(tmp_path):
    big = tmp_path / "big.bin"
    write(big, MEMO_MIN_SIZE + 10)
    DigestMemo(str(tmp_path / "memo")).hash(str(big))
    before = big.stat()
    time.sleep(0.02)  # past the kernel's timestamp tick, as any real edit after a task is
    with big.open("r+b") as handle:  # same size, same inode
        handle.seek(5)
        handle.write(b"b")
    os.utime(big, ns=(before.st_atime_ns, before.st_mtime_ns))  # what touch -r does
    after = big.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    for memo in (DigestMemo(str(tmp_path / "memo")), DigestMemo(str(tmp_path / "memo"))):
        assert memo.hash(str(big))["blake3"] == hash_file(big).blake3
    fresh = DigestMemo(str(tmp_path / "memo"))
    fresh.hash(str(big))
    assert fresh.hits == 1  # the edited content was remembered under its new signature


def test_memo_notices_a_replaced_file_and_ignores_damaged_memos(tmp_path):
    big, other = tmp_path / "big.bin", tmp_path / "other.bin"
    write(big, MEMO_MIN_SIZE + 10)
    memo_dir = tmp_path / "memo"
    DigestMemo(str(memo_dir)).hash(str(big))
    write(other, MEMO_MIN_SIZE + 10, b"c")
    os.replace(other, big)  # a new inode at the same path
    assert DigestMemo(str(memo_dir)).hash(str(big))["blake3"] == hash_file(big).blake3
    for name in os.listdir(memo_dir):
        (memo_dir / name).write_text("{not json")
    damaged = DigestMemo(str(memo_dir))
    assert damaged.hash(str(big))["blake3"] == hash_file(big).blake3 and damaged.hits == 0


def test_small_files_are_remembered_in_memory_only(tmp_path):
    small = tmp_path / "small.txt"
    write(small, 100)
    memo = DigestMemo(str(tmp_path / "memo"))
    memo.hash(str(small))
    memo.hash(str(small))
    assert memo.hits == 1
    assert not (tmp_path / "memo").exists()  # not worth a file: creating one costs more than hashing


def test_sweep_removes_only_old_markers_and_memos_at_most_hourly(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__SPOOL", str(tmp_path / "spool"))
    _tries.reset()
    markers = tmp_path / "markers"
    markers.mkdir()
    memos = tmp_path / "spool" / "airflow-digests"
    memos.mkdir(parents=True)
    now = time.time()
    old = now - (_tries.MARKER_DAYS + 1) * 86400
    names = {"old": "a" * 40, "recent": "b" * 40, "foreign": "notes.txt"}
    for folder in (markers, memos):
        for label, name in names.items():
            (folder / name).write_text("")
            if label != "recent":
                os.utime(folder / name, (old, old))
    _tries._maybe_sweep(str(markers), now=now)
    for folder in (markers, memos):
        kept = [names["recent"], names["foreign"], *([".swept"] if folder == markers else [])]
        assert sorted(os.listdir(folder)) == sorted(kept)
    # Within the hour a second sweep does not even look.
    (markers / ("c" * 40)).write_text("")
    os.utime(markers / ("c" * 40), (old, old))
    _tries._maybe_sweep(str(markers), now=now + 60)
    assert (markers / ("c" * 40)).exists()
    _tries._maybe_sweep(str(markers), now=now + _tries.SWEEP_EVERY_S + 1)
    assert not (markers / ("c" * 40)).exists()
    _tries.reset()


def test_claim_survives_a_removed_marker_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__URL", f"sqlite:///{tmp_path}/ledger.db")
    monkeypatch.setenv("AIRFLOW__LINEAGE_LEDGER__SPOOL", str(tmp_path / "spool"))
    _tries.reset()
    try:
        assert _tries.claim(("ti-1", 1)) is True
        assert _tries.claim(("ti-1", 1)) is False  # in this process
        directory = _tries._marker_dir(_tries.capture())
        _tries._claimed.clear()  # as another process would see it: only the marker file
        assert _tries.claim(("ti-1", 1)) is False
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
        assert _tries.claim(("ti-2", 1)) is True
        assert len([n for n in os.listdir(directory) if len(n) == 40]) == 1
    finally:
        _tries.reset()


def test_memo_rehashes_a_directory_whose_file_changed(tmp_path):
    """A directory's own stat does not move when a file in it is rewritten: never reused."""
    folder = tmp_path / "qc"
    folder.mkdir()
    write(folder / "A.txt", 100)
    write(folder / "big.bin", MEMO_MIN_SIZE + 10)
    memo = DigestMemo(str(tmp_path / "memo"))
    first = memo.hash(str(folder))
    assert first == hash_file(folder).entry() and first.get("type") == "dir"
    dir_before = folder.stat()
    write(folder / "A.txt", 100, b"b")  # same size, same directory entries
    assert folder.stat().st_mtime_ns == dir_before.st_mtime_ns  # the directory looks unchanged
    for fresh in (memo, DigestMemo(str(tmp_path / "memo"))):
        assert fresh.hash(str(folder))["blake3"] == hash_file(folder).blake3 != first["blake3"]
