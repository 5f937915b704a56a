"""The names kept beside the verified tree (``_log/names.py``): what a batch of records packs
is what a reader finds, for any paths, times and batch boundaries."""

from __future__ import annotations

import os
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger._log.names import (
    BUCKETS,
    DIRECTORY,
    ENTRY_SIZE,
    INPUT,
    OUTPUT,
    RUN,
    HotNames,
    NamesBatch,
    bucket_name,
    bucket_of,
    candidates,
    directories_of,
    path_key,
)
from lineage_ledger._log.names_files import NamesWriter

PATHS = st.sampled_from(["/d/a", "/d/b", "/d/ref.fa", "/d/é", "/d/\udcff", "/d/nul\0x", "/x/" + "long" * 50,
                         "/d/e/f/g", "/d/e/h", "/top", "relative/name"])
TIMES = st.integers(0, 5).map(lambda s: f"2026-01-01T00:00:0{s}.{s:06d}Z")
RECORD = st.tuples(TIMES, st.lists(PATHS, max_size=3, unique=True), st.lists(PATHS, max_size=3, unique=True))


def _view(ended, inputs, outputs, run_id="run"):
    return SimpleNamespace(ended=ended, inputs=dict.fromkeys(inputs), outputs=dict.fromkeys(outputs), run_id=run_id)


def _found(directory, path, size):
    key = path_key(path)
    try:
        with open(os.path.join(directory, bucket_name(bucket_of(key))), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    return candidates(data, key, size)


@settings(max_examples=60, deadline=None)
@given(records=st.lists(RECORD, max_size=30), cut=st.integers(0, 30))
def test_the_latest_writer_and_reader_of_each_batch_are_found(tmp_path_factory, records, cut):
    directory = str(tmp_path_factory.mktemp("names"))
    writer = NamesWriter(directory)
    cut = min(cut, len(records))
    for first, batch_records in ((0, records[:cut]), (cut, records[cut:])):  # two batches, as two refreshes
        batch = NamesBatch()
        batch.add(first, [_view(*r) for r in batch_records])
        counts, data = batch.packed()
        assert len(counts) == BUCKETS and sum(counts) * ENTRY_SIZE == len(data)
        writer.write(counts, data)
    size = len(records)
    for path in {p for _e, ins, outs in records for p in (*ins, *outs)}:
        found = _found(directory, path, size)
        for side, output in ((2, True), (1, False)):
            kept = {c.leaf for c in found if c.output is output}
            for first, stop in ((0, cut), (cut, size)):
                named = [(records[leaf][0], leaf) for leaf in range(first, stop) if path in records[leaf][side]]
                if named:  # the latest of each batch by end time, then ledger order
                    assert max(named)[1] in kept, (path, output, first, kept)
            assert all(path in records[leaf][side] for leaf in kept)  # and nothing else (no collision here)
            # and the counts add up to every record that named it so, whatever the cut
            assert sum(c.records for c in found if c.output is output) == sum(path in r[side] for r in records)
    for path in {p for _e, ins, outs in records for p in (*ins, *outs)}:  # a smaller head hides the rest
        assert all(c.leaf < cut for c in _found(directory, path, cut))


def test_a_part_entry_left_by_a_killed_writer_is_filled_before_the_next_append(tmp_path):
    key = path_key("/d/a")
    batch = NamesBatch()
    batch.add(0, [_view("2026-01-01T00:00:00.000000Z", [], ["/d/a"])])
    name = os.path.join(tmp_path, bucket_name(bucket_of(key)))
    NamesWriter(str(tmp_path)).write(*batch.packed())
    with open(name, "ab") as handle:
        handle.write(b"\x01" * 7)  # a killed writer's part of an entry
    with open(name, "rb") as handle:
        assert [c.leaf for c in candidates(handle.read(), key, 10)] == [0]
    batch.add(1, [_view("2026-01-01T00:00:01.000000Z", [], ["/d/a"])])
    NamesWriter(str(tmp_path)).write(*batch.packed())
    with open(name, "rb") as handle:
        data = handle.read()
    # The part was filled up to a whole entry (cutting it could take a page from under a
    # reader's map); what follows is on the grid again.
    assert len(data) == 3 * ENTRY_SIZE and [c.leaf for c in candidates(data, key, 10)] == [0, 1]


def _reference(first_leaf, records, runs):
    """What a batch must keep, computed the plain way: per path and role, and per run, the
    record that ended last, then the latest in ledger order, and how many records named it so."""
    latest: dict[tuple[str, int], tuple[str, int]] = {}
    times: dict[tuple[str, int], int] = {}
    for leaf, ((ended, inputs, outputs), run) in enumerate(zip(records, runs, strict=True), first_leaf):
        for role, names in ((INPUT, inputs), (OUTPUT, outputs), (RUN, [run])):
            for name in names:
                times[name, role] = times.get((name, role), 0) + 1
                if (name, role) not in latest or (ended, leaf) >= latest[name, role]:
                    latest[name, role] = (ended, leaf)
    # A directory: every (record, path, role) below it at any depth counted; the last record
    # in ledger order that named one kept.
    for leaf, (_ended, inputs, outputs) in enumerate(records, first_leaf):
        for path in (*inputs, *outputs):
            for directory in directories_of([path]):
                times[directory, DIRECTORY] = times.get((directory, DIRECTORY), 0) + 1
                latest[directory, DIRECTORY] = ("", leaf)
    return sorted((times[name, role] << 32 | path_key(name), leaf << 2 | role)
                  for (name, role), (_e, leaf) in latest.items())


@settings(max_examples=100, deadline=None)
@given(records=st.lists(RECORD, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4),
       first=st.integers(0, 2**40), runs=st.lists(st.sampled_from(["run-a", "run-b", "", "r\0n", "é"]), min_size=40,
                                                  max_size=40))
def test_a_batch_keeps_exactly_the_latest_of_each_path_and_role(records, cuts, first, runs):
    # Added a block at a time, as the audit and a refresh add them; end times in any order
    # (records end out of ledger order when tasks run in parallel) and paths with lone
    # surrogates or NUL-free text alike.
    batch = NamesBatch()
    at = 0
    for cut in sorted({min(c, len(records)) for c in cuts} | {len(records)}):
        batch.add(first + at, [_view(*r, run) for r, run in zip(records[at:cut], runs[at:cut], strict=True)])
        at = cut
    counts, data = batch.packed()
    entries = [tuple(int.from_bytes(data[i : i + 8], "big") for i in (at, at + 8)) for at in range(0, len(data), ENTRY_SIZE)]
    assert sorted(entries) == _reference(first, records, runs[: len(records)])
    at = 0
    for bucket, count in enumerate(counts):  # each entry in the bucket its key names
        assert all(bucket_of(word & 0xFFFFFFFF) == bucket for word, _low in entries[at : at + count])
        at += count
    assert batch.packed() == ([0] * BUCKETS, b"")  # and the batch is empty again


def _entries(data):
    return [tuple(int.from_bytes(data[i : i + 8], "big") for i in (at, at + 8)) for at in range(0, len(data), ENTRY_SIZE)]


@settings(max_examples=150, deadline=None)
@given(records=st.lists(RECORD, min_size=1, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=5),
       threshold=st.integers(1, 4), flush=st.booleans())
def test_names_kept_apart_and_joined_are_what_a_reader_needs(records, cuts, threshold, flush):
    """An audit's ranges keep apart the names many of their records name; the parent joins
    them (``HotNames``), packing early where it holds many (``flush``). Whatever the ranges,
    a reader that looks up a path and role among all entries, and proves each candidate's
    record (keeping those that name it), finds the same latest record and the same number
    of records as one batch of all of them keeps."""
    runs = [f"run-{i % 3}" for i in range(len(records))]
    joined = HotNames()
    entries = []
    at = 0
    for cut in sorted({min(c, len(records)) for c in cuts} | {len(records)}):
        batch = NamesBatch()
        batch.add(at, [_view(*r, run) for r, run in zip(records[at:cut], runs[at:cut], strict=True)])
        _counts, data, hot = batch.packed_apart(threshold)
        assert all(h.records >= threshold for h in hot)
        entries += _entries(data)
        joined.add(hot)
        if flush:
            entries += _entries(joined.packed()[1])
        at = cut
    entries += _entries(joined.packed()[1])
    whole = _reference(0, records, runs)
    named = {}
    for leaf, ((_ended, inputs, outputs), run) in enumerate(zip(records, runs, strict=True)):
        for role, names in ((INPUT, inputs), (OUTPUT, outputs), (RUN, [run])):
            for name in names:
                named.setdefault((name, role), set()).add(leaf)
    below: dict[str, int] = {}  # a directory's (record, path, role) below it
    for leaf, (_ended, inputs, outputs) in enumerate(records):
        for path in (*inputs, *outputs):
            for directory in directories_of([path]):
                named.setdefault((directory, DIRECTORY), set()).add(leaf)
                below[directory] = below.get(directory, 0) + 1
    for (name, role), leaves in named.items():
        key = path_key(name)
        mine = [(word >> 32, low >> 2) for word, low in entries
                if word & 0xFFFFFFFF == key and low & 3 == role and low >> 2 in leaves]
        expected = [(word >> 32, low >> 2) for word, low in whole
                    if word & 0xFFFFFFFF == key and low & 3 == role and low >> 2 in leaves]
        total = below[name] if role == DIRECTORY else len(leaves)
        assert sum(count for count, _leaf in mine) == sum(count for count, _leaf in expected) == total
        if role == DIRECTORY:  # any record naming a path below it, which a reader proves
            assert mine
            continue
        latest = max(leaves, key=lambda leaf: (records[leaf][0], leaf))
        assert latest in {leaf for _count, leaf in mine}
    assert len(joined) == 0 and joined.packed() == ([0] * BUCKETS, b"")
