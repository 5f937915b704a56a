"""The shortcuts that ``verify-lineage DIR`` of thousands of files takes (issue #14: the outputs
of 10,000 tasks) give what the general path gives: the names kept, read for a window at once
(one pass over a bucket file, or a search per key); a file's OK check made without the frozen
dataclass's ``__init__``; and the cyclic collector, off while the windows are checked, put back
as it was, whatever the check meets."""

from __future__ import annotations

import dataclasses
import gc
import os
import struct
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger import Hasher, Record, open_ledger
from lineage_ledger._log import names as names_module
from lineage_ledger._log.names import ENTRY, ENTRY_SIZE, candidates, candidates_of
from lineage_ledger._verification.checks import ArtifactCheck, ArtifactStatus, _ok
from lineage_ledger._verification.verify import verify_lineage

KEYS = st.sampled_from([0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x0102_0304, 0x0000_0100])
ENTRIES = st.lists(st.tuples(st.integers(0, 3), KEYS, st.integers(0, 40), st.integers(0, 3)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ENTRIES, st.binary(max_size=15), st.lists(KEYS, min_size=1, max_size=6, unique=True), st.integers(0, 45),
       st.integers(0, 2), st.integers(0, 2))
def test_one_pass_over_a_bucket_file_finds_what_a_search_per_key_finds(entries, tail, keys, size, shift, pass_at):
    """Entries packed as the writers pack them, a part entry a killed writer left at the end,
    a file that starts off the entries' grid (a key's bytes inside a count or a leaf), each
    key asked: the same candidates, in the same order, by both ways (the one-pass threshold
    moved so that both run)."""
    data = b"\x00" * shift + b"".join(ENTRY.pack(count << 32 | key, leaf << 2 | role)
                                      for count, key, leaf, role in entries) + tail
    expected = {key: candidates(data, key, size) for key in keys}
    saved = names_module._ONE_PASS
    try:
        names_module._ONE_PASS = (0, 6, 10**9)[pass_at]
        assert candidates_of(data, set(keys), size) == expected
    finally:
        names_module._ONE_PASS = saved


def test_a_key_inside_a_leaf_is_no_candidate():
    """The bytes of a key asked found inside another entry's leaf word (off the grid): neither
    way takes them for an entry."""
    key = 0x0A0B0C0D
    data = ENTRY.pack(1 << 32 | 7, struct.unpack(">Q", b"\x00\x00\x00\x00" + struct.pack(">I", key))[0]) \
        + ENTRY.pack(2 << 32 | key, 9 << 2 | 1)
    assert len(data) == 2 * ENTRY_SIZE
    assert candidates(data, key, 1 << 62) == [names_module.Candidate(9, 1, 2)]
    assert candidates_of(data, {key}, 1 << 62) == {key: [names_module.Candidate(9, 1, 2)]}


def test_a_file_found_ok_is_the_check_the_dataclass_makes():
    """``_ok`` builds the same frozen object as ``ArtifactCheck(...)``: every field (one added
    to the class and not set there fails here), equal, same hash, still frozen."""
    made = ArtifactCheck("/d/f", ArtifactStatus.OK, "a" * 64, "a" * 64, "r" * 64, "out")
    fast = _ok("/d/f", "a" * 64, "a" * 64, "r" * 64, "out")
    assert vars(fast) == vars(made)
    assert list(vars(fast)) == [f.name for f in dataclasses.fields(ArtifactCheck)]
    assert fast == made and hash(fast) == hash(made) and fast.to_json() == made.to_json()
    try:
        fast.path = "/elsewhere"  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("an OK check could be changed")


def test_a_directory_of_many_tasks_outputs_verifies_and_the_collector_is_put_back(tmp_path, monkeypatch):
    """1,050 files, each the output of its own task, one modified and one removed: the window
    path (rows read ahead, files hashed in a child) says exactly those two fail, each file's
    record and digest as the general path gives them; the cyclic collector runs again
    afterwards, and stays off where the caller had turned it off."""
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "out"
    out.mkdir()
    for i in range(1_050):
        (out / f"part-{i:05d}.txt").write_bytes(os.urandom(40))
    (tmp_path / "input.txt").write_text("source")
    files = Hasher().hash_many([str(p) for p in sorted(out.iterdir())] + [str(tmp_path / "input.txt")])
    now = datetime.now(timezone.utc)
    records = [Record(engine="test", run_id="r", task_id=f"t{i}", task_name="split", status="succeeded",
                      started=now, ended=now, inputs=files[-1:], outputs=[f]) for i, f in enumerate(files[:-1])]
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([r.stored() for r in records])
    (out / "part-00007.txt").write_bytes(b"edited")
    os.unlink(out / "part-00900.txt")
    ids = {f.path: r.id for f, r in zip(files[:-1], records, strict=True)}
    for collecting in (True, False):
        (gc.enable if collecting else gc.disable)()
        try:
            with open_ledger(url, read_only=True) as ledger:
                report = verify_lineage(ledger, [str(out)])
            assert gc.isenabled() is collecting
        finally:
            gc.enable()
        failed = sorted(f.path for f in report.failures)
        assert failed == [str(out / "part-00007.txt")], report.failures
        assert [a.paths for a in report.absent] == [[str(out / "part-00900.txt")]]
        kept = {t.path: t for t in report.targets}
        assert len(kept) + report.not_shown == 1_049
        for path, target in list(kept.items())[:50]:
            assert target.check.record_id == ids[path] and target.check.role == "out"
            assert target.check.status is (ArtifactStatus.MODIFIED if path.endswith("00007.txt") else ArtifactStatus.OK)
            assert target.tree is not None and [p.path for p in target.tree.parents] == [str(tmp_path / "input.txt")]


def test_a_window_that_leaves_cycles_past_the_bound_has_them_collected(monkeypatch):
    """With the collector off, a window's end frees objects in cycles once the young
    generation has grown past the bound (here 0), so that an audit of a million files would
    stay in bounded memory if a check ever made them; under the bound, none is collected."""
    import weakref

    from lineage_ledger._verification import verify as verify_module

    class Node:
        pass

    def cycle() -> weakref.ref:
        node = Node()
        node.self = node  # type: ignore[attr-defined]
        return weakref.ref(node)

    with verify_module._fewer_collections():
        assert not gc.isenabled()
        kept = cycle()
        monkeypatch.setattr(verify_module, "_YOUNG_MOST", 10**9)
        verify_module._collect_window()
        assert kept() is not None
        monkeypatch.setattr(verify_module, "_YOUNG_MOST", 0)
        verify_module._collect_window()
        assert kept() is None


def test_objects_a_process_froze_stay_frozen():
    """The windows' objects are moved to the oldest generation by freezing and thawing, only
    where the process had frozen nothing itself; its own frozen objects stay frozen."""
    from lineage_ledger._verification import verify as verify_module

    if gc.get_freeze_count() == 0:  # (nothing else in this process froze objects)
        with verify_module._fewer_collections():
            pass
        assert gc.get_freeze_count() == 0 and gc.isenabled()
    marker = [[]]  # a container the collector tracks, frozen with the rest
    gc.freeze()
    try:
        with verify_module._fewer_collections():
            pass
        # Still frozen: in no generation the collector scans (a thaw puts it in the oldest).
        # (Not the freeze count: it falls whenever another thread frees a frozen object.)
        assert gc.get_freeze_count() > 0 and gc.isenabled()
        assert not any(obj is marker for obj in gc.get_objects())
    finally:
        gc.unfreeze()


def test_threads_that_verify_at_once_leave_the_collector_running():
    """Two threads whose checks overlap (one starts, the other starts, the first ends, then
    the second): the collector is off while either checks, and on again after both, not
    left off by the second having found it off."""
    import threading

    from lineage_ledger._verification import verify as verify_module

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with verify_module._fewer_collections():
            first_in.set()
            second_in.wait(30)
        first_out.set()

    def second() -> None:
        first_in.wait(30)
        with verify_module._fewer_collections():
            second_in.set()
            first_out.wait(30)
            seen.append(gc.isenabled())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen == [False]
    assert gc.isenabled()
