"""Which verified records name each path, kept beside the verified tree, so that a reader
notices an index row that was deleted.

A targeted read asks the back-end's index which records name a path, and proves each row
it gets. A row that was *deleted* is never returned, so nothing proves it: a pre-run check
would see an edited file's producer vanish and treat the file as a source, or answer from
an older record. Only the full audit noticed. This file set closes that gap without
trusting the database for completeness: while records are verified (the audit, and each
refresh of the head), the names they carry are written here, in the user's own state
directory, and a reader compares what the index returned with what is kept here.

What is kept, per batch of verified records and path and role they name, and per run they
belong to (two big-endian 64-bit words an entry, see ``ENTRY``):

* ``count << 32 | key``: ``key`` is the CRC-32 of the path or run id (UTF-8), ``count`` how
  many records of the batch name the path in that role (belong to the run). Key collisions are harmless: an entry is
  only ever a *candidate*, whose record the reader fetches and proves before believing it
  names the path; only missing entries would be harmful, and a hash never makes one go missing.
* ``leaf << 2 | role``: the leaf index of the latest of those records (below), and the role:
  ``INPUT``, ``OUTPUT``, ``RUN`` or ``DIRECTORY``.

A directory (format 3) has an entry of role ``DIRECTORY`` per batch whose records name a path
below it, at any depth, in either role: ``count`` is how many (record, path, role) of the
batch lie below it (the index rows the batch put there), and the leaf is one of those records
(a batch's last in ledger order; where an audit joins its ranges', the one that ended last),
which a reader proves names a path below it before it counts the entry. ``verify-lineage
DIR`` lists the files below DIR from the index; a file whose every row was deleted drops out
of that listing, which the sum of DIR's counts against the counts of the paths listed notices
(:mod:`lineage_ledger._ledger.complete_dirs`). The root's key is the empty string's.

The counts make a whole list checkable (format 2): the records a back-end's index lists as
reading or writing a path, or as a run's, must be as many as the counts of the entries add
up to, so a deleted or edited row in the middle of a list is noticed, not only the latest of
a batch (:class:`lineage_ledger._ledger.complete.Listing`).

(An end time per entry, to let readers skip candidates that ended before their answer,
cost the audit a microsecond a record to compute: the few candidates a path has are
read instead.)

Each batch of records verified together (a task of the audit, a refresh) keeps, per path
and role, the record that named it and ended last (then the latest in ledger order): what a
reader's "last record to write / to read this file" needs, at one entry a batch for a file
that every task reads or rewrites. An audit's ranges keep apart the names that many of
their records name (:data:`HOT_RECORDS`), and its parent joins those of all ranges into
one entry (:class:`HotNames`): such a file then has one entry after a fresh audit, not one
a range. A refresh that leaves more than a few entries for a path
it touched proves the records behind them and drops the older ones
(:meth:`.verified.Verifier._compact_names`). A batch's entries are appended to one of 1,024
files by the key's high bits (``names-KKK.bin``), so a look-up reads one file, a 1,024th
of the whole, and finds its key in C (:meth:`bytes.find`). Files only grow between
compactions, which replace a file whole (adding the counts of the entries they drop to the
entry they keep). Entries past the verified head (a writer that crashed before committing
it) are ignored by readers; before the next writer appends, it cuts the files back to what
they held before the crashed batch (``names-pending``, written ahead of each append), so
that those records' counts are not kept twice when they are verified again.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import accumulate, chain, compress, islice, repeat
from operator import attrgetter, ge, itemgetter, le, lshift, methodcaller, or_
from typing import Any, NamedTuple

__all__ = ["BUCKETS", "DIRECTORY", "ENTRY", "ENTRY_SIZE", "FORMAT", "HOT_RECORDS", "INPUT", "OUTPUT", "PENDING", "RUN",
           "Candidate", "Hot", "HotNames", "NamesBatch", "bucket_name", "bucket_of", "candidates", "candidates_of",
           "directories_of", "kept", "parent_of", "path_key", "path_keys"]

FORMAT = 3  # the version of these files a head records (0: none kept; 1: no counts; 2: no directories; audited again)
_BUCKET_BITS = 10
BUCKETS = 1 << _BUCKET_BITS  # a look-up reads a 1,024th of the entries: 50 KB at 1M records
ENTRY = struct.Struct(">QQ")  # count << 32 | key, leaf << 2 | role (big-endian: one integer's bytes)
INPUT, OUTPUT, RUN, DIRECTORY = 0, 1, 2, 3  # roles: a path read, written, the run of a record, a directory
_KEY = struct.Struct(">I")
PENDING = "names-pending"  # bucket files' sizes before an append not yet covered by a head
ENTRY_SIZE = ENTRY.size
HOT_RECORDS = 32  # an audit's range keeps apart a name this many of its records name in one role
_ended, _outputs, _inputs, _run_id = (attrgetter(name) for name in ("ended", "outputs", "inputs", "run_id"))
_flat = chain.from_iterable
_encode = methodcaller("encode", "utf-8", "surrogatepass")  # a C call per path, in map()


class Candidate(NamedTuple):
    leaf: int
    role: int  # INPUT, OUTPUT, RUN or DIRECTORY
    records: int = 1  # records of its batch naming the path in this role (the leaf the latest)

    @property
    def output(self) -> bool:
        return self.role == OUTPUT


def path_key(path: str) -> int:
    return zlib.crc32(_encode(path))


def path_keys(paths: list[str]) -> list[int]:
    """:func:`path_key` of each of ``paths``, encoded together (see :func:`_encoded`)."""
    return list(map(zlib.crc32, _encoded(paths)))


def kept() -> bool:
    """False only where ``LINEAGE_AUDIT_NAMES=0``: what ``bench_audit_workers.py`` sets to
    measure what the names cost an audit. A head verified that way says it has none: its
    readers check no deleted rows, and a command run without the setting audits it again."""
    return os.environ.get("LINEAGE_AUDIT_NAMES", "").strip() != "0"


def bucket_of(key: int) -> int:
    return key >> (32 - _BUCKET_BITS)


def bucket_name(bucket: int) -> str:
    return f"names-{bucket:03x}.bin"


class NamesBatch:
    """The names of the verified records of one batch, until :meth:`packed`. An audit pays
    this for every record it reads, so the work is done by whole columns, in C where it can
    be (``map``, ``dict``, :mod:`itertools`), with one Python step per entry kept: about
    2 us a record where the packing of the previous version, record by record and then one
    sort of 128-bit integers, cost 4.8 (``bench/bench_audit_workers.py``)."""

    def __init__(self) -> None:
        self._clear()
        self._keep = kept()

    def _clear(self) -> None:
        # One row per record: its leaf, end time, and how many paths it writes and reads;
        # the paths themselves, not the decoded records (a task's 25,000 of those were 50 MB),
        # flat, in ledger order.
        self._leaves: list[int] = []
        self._ended: list[str] = []
        self._writes: list[int] = []
        self._reads: list[int] = []
        self._written: list[str] = []
        self._read: list[str] = []
        self._runs: list[str] = []  # one a record
        self.records = 0

    def add(self, first_leaf: int, views: Sequence[Any]) -> None:
        """Records ``first_leaf`` on, as :func:`.audit_rows.decode_views` reads them."""
        if not self._keep:
            return
        outputs, inputs = list(map(_outputs, views)), list(map(_inputs, views))
        self._leaves.extend(range(first_leaf, first_leaf + len(views)))
        self._ended.extend(map(_ended, views))
        self._writes.extend(map(len, outputs))
        self._reads.extend(map(len, inputs))
        self._written.extend(_flat(outputs))  # a dict iterates over its keys: the paths
        self._read.extend(_flat(inputs))
        self._runs.extend(map(_run_id, views))
        self.records += len(views)

    def _latest(self) -> list[tuple[dict[str, int], Counter[str]]]:
        """For each role (``INPUT``, ``OUTPUT``, ``RUN``, then ``DIRECTORY``: see
        :func:`_directories`): path (run id) -> ``leaf << 2 | role``
        of the record that named it in that role and ended last, then the latest in ledger
        order, and path -> how many records named it so, in the dict's order. A dict built
        from the pairs in that order keeps the last value of each path; the order is ledger
        order where the end times never go back (the usual case, checked in one pass), else a
        stable sort of the records by end time (ledger order among equals), applied to the
        flat columns by slices. Counts come from :class:`~collections.Counter` (counted in C)
        on the same column, so that its keys are in the dict's order (first seen)."""
        leaves, ended, writes, reads = self._leaves, self._ended, self._writes, self._reads
        written, read, runs = self._written, self._read, self._runs
        # Ledger order: a directory's entry keeps the last record of the batch naming a path below it.
        directories = _directories(((read, _per_path(leaves, reads)), (written, _per_path(leaves, writes))))
        if not all(map(le, ended, islice(ended, 1, None))):
            order = sorted(range(len(ended)), key=ended.__getitem__)
            written = list(_flat(map(written.__getitem__, _slices(writes, order))))
            read = list(_flat(map(read.__getitem__, _slices(reads, order))))
            leaves, writes, reads = ([column[i] for i in order] for column in (leaves, writes, reads))
            runs = list(map(runs.__getitem__, order))
        shifted = list(map(lshift, leaves, repeat(2)))
        as_output = map(or_, shifted, repeat(OUTPUT))
        as_run = map(or_, shifted, repeat(RUN))
        return [(dict(zip(read, _flat(map(repeat, shifted, reads)), strict=True)), Counter(read)),
                (dict(zip(written, _flat(map(repeat, as_output, writes)), strict=True)), Counter(written)),
                (dict(zip(runs, as_run, strict=True)), Counter(runs)),
                directories]

    def packed(self) -> tuple[list[int], bytes]:
        """(entries per bucket, the entries grouped by bucket in bucket order); then empty.
        Inside a bucket the order is of no meaning: a reader searches the whole file."""
        if not self._leaves:
            return [0] * BUCKETS, b""
        roles = self._latest()
        self._clear()
        return _pack(roles)

    def packed_apart(self, threshold: int) -> tuple[list[int], bytes, list[Hot]]:
        """:meth:`packed`, less the names that ``threshold`` or more records of the batch
        named in one role: those come back apart, for an audit's parent to join with the
        same name's of the other ranges into one entry (:class:`HotNames`). A file that
        every task reads otherwise has an entry a range (125 at a million records), each a
        record that a reader of its latest reader proves."""
        if not self._leaves:
            return [0] * BUCKETS, b"", []
        roles = self._latest()
        hot: list[Hot] = []
        ended_of: dict[int, str] | None = None
        for role, (latest, times) in enumerate(roles):
            # Removed from both, so that their other keys stay in the same order.
            for name in list(compress(times, map(ge, times.values(), repeat(threshold)))):
                if ended_of is None:
                    ended_of = dict(zip(self._leaves, self._ended, strict=True))
                low = latest.pop(name)
                hot.append(Hot(role, name, low, times.pop(name), ended_of[low >> 2]))
        self._clear()
        return (*_pack(roles), hot)


class Hot(NamedTuple):
    """A name many records of one batch named in one role, kept apart (:meth:`NamesBatch.packed_apart`)."""

    role: int
    name: str
    low: int  # leaf << 2 | role of the latest of them (by end time, then ledger order)
    records: int  # how many of them
    ended: str  # that record's end time


class HotNames:
    """An audit's parent joins the names kept apart by its ranges (in ledger order): one entry
    per name and role, the latest record of all and the sum of their counts, as a batch of
    all of them would have kept. Packed (:meth:`packed`) once the audit is done, or when
    :data:`MAX` names are held, so that memory stays bounded whatever the ledger's size."""

    MAX = 4096

    def __init__(self) -> None:
        self._held: dict[tuple[int, str], list] = {}

    def __len__(self) -> int:
        return len(self._held)

    def add(self, hot: Sequence[Hot]) -> None:
        held = self._held
        for role, name, low, records, ended in hot:
            kept = held.get((role, name))
            if kept is None:
                held[(role, name)] = [low, records, ended]
                continue
            kept[1] += records
            if (ended, low) >= (kept[2], kept[0]):  # a later range: ties go to it
                kept[0], kept[2] = low, ended

    def packed(self) -> tuple[list[int], bytes]:
        held, self._held = self._held, {}
        names = [name for _role, name in held]
        return _pack_entries(names, [kept[1] for kept in held.values()], [kept[0] for kept in held.values()])


_split = methodcaller("rpartition", "/")
_first = itemgetter(0)
_absolute = methodcaller("startswith", "/")


def parent_of(path: str) -> str:
    """The directory ``path`` lies in, as a directory's entries name it: no trailing slash,
    the root the empty string."""
    return path.rpartition("/")[0]


def directories_of(paths: Iterable[str]) -> set[str]:
    """Every directory that absolute ``paths`` lie below, at any depth (the root as ``""``)."""
    found: set[str] = set()
    for path in paths:
        if not path.startswith("/"):
            continue
        directory = parent_of(path)
        while directory not in found:
            found.add(directory)
            if not directory:
                break
            directory = parent_of(directory)
    return found


def _per_path(leaves: list[int], per_record: list[int]) -> list[int]:
    """``leaf << 2`` of each path of a flat column (``per_record[i]`` paths for record ``i``)."""
    return list(_flat(map(repeat, map(lshift, leaves, repeat(2)), per_record)))


def _directories(columns: Iterable[tuple[list[str], list[int]]]) -> tuple[dict[str, int], Counter[str]]:
    """``DIRECTORY`` entries of a batch from its flat columns of paths and ``leaf << 2`` (one
    per path, in ledger order): each directory's rows below it, and the last record of the
    batch in ledger order that names a path below it. Paths are counted by the directory they
    lie in, in C (a :class:`~collections.Counter`, and a dict over the column that keeps each
    directory's last leaf), and only those distinct directories are walked up in Python: a
    batch's paths share a few thousand of them."""
    direct: Counter[str] = Counter()
    last: dict[str, int] = {}
    for paths, lows in columns:
        if not all(map(_absolute, paths)):  # a relative name (none a recorder writes): below no directory
            kept_at = list(map(_absolute, paths))
            paths, lows = list(compress(paths, kept_at)), list(compress(lows, kept_at))
        parents = list(map(_first, map(_split, paths)))
        direct.update(parents)
        for parent, low in dict(zip(parents, lows, strict=True)).items():
            if low > last.get(parent, -1):
                last[parent] = low
    rows: Counter[str] = Counter()
    latest: dict[str, int] = {}  # in the same key order as rows (see _pack)
    for parent, count in direct.items():
        low = last[parent] | DIRECTORY
        directory = parent
        while True:
            if directory in latest:
                rows[directory] += count
                latest[directory] = max(latest[directory], low)
            else:
                rows[directory] = count
                latest[directory] = low
            if not directory:
                break
            directory = parent_of(directory)
    return latest, rows


def _pack(roles: list[tuple[dict[str, int], Counter[str]]]) -> tuple[list[int], bytes]:
    # Flattened in C (a Python loop over the entries cost 0.2 us a record of an audit).
    names = list(_flat(latest for latest, _times in roles))
    counts = list(_flat(times.values() for _latest, times in roles))
    lows = list(_flat(latest.values() for latest, _times in roles))
    return _pack_entries(names, counts, lows)


def _pack_entries(names: list[str], counts: list[int], lows: list[int]) -> tuple[list[int], bytes]:
    """Entries ``(count << 32 | crc32(name), low)`` grouped by bucket in bucket order."""
    if not names:
        return [0] * BUCKETS, b""
    crcs = list(map(zlib.crc32, _encoded(names)))
    shift = 32 - _BUCKET_BITS
    buckets: list[list[int]] = [[] for _ in range(BUCKETS)]
    for crc, count, low in zip(crcs, counts, lows, strict=True):  # the one Python step an entry
        bucket = buckets[crc >> shift]
        bucket.append(count << 32 | crc)
        bucket.append(low)
    flat = list(_flat(buckets))
    return [len(bucket) >> 1 for bucket in buckets], struct.pack(f">{len(flat)}Q", *flat)


def _slices(counts: list[int], order: list[int]) -> Iterator[slice]:
    """The slices of a flat column (``counts[i]`` items for record ``i``) in ``order``."""
    starts = [0, *accumulate(counts)]
    return map(slice, map(starts.__getitem__, order), map(starts.__getitem__, map((1).__add__, order)))


def _encoded(paths: list[str]) -> Iterator[bytes] | list[bytes]:
    """The paths in UTF-8 (lone surrogates, from undecodable file names, kept as they are):
    one encoding of them all, split at NUL, which no path holds (one per path where one does)."""
    parts = "\0".join(paths).encode("utf-8", "surrogatepass").split(b"\0")
    return parts if len(parts) == len(paths) else map(_encode, paths)


def candidates_of(data: bytes | Any, keys: Collection[int], size: int) -> dict[int, list[Candidate]]:
    """:func:`candidates` of each of ``keys`` in one bucket file's bytes (the same lists),
    worked out in one pass over its entries where that is the cheaper: where the file holds
    fewer than :data:`_ONE_PASS` entries a key asked (a window of thousands of files asks
    most of each file of a small ledger: a search per key was 3 us, an entry is read in
    0.3), else a search per key, as :func:`candidates` (the 3,000 entries a file holds at a
    million records would cost more read whole than 5 keys' searches)."""
    whole = len(data) - len(data) % ENTRY.size  # an entry a killed writer left half-written: ignored
    if whole > _ONE_PASS * ENTRY.size * len(keys):
        return {key: candidates(data, key, size) for key in keys}
    found: dict[int, list[Candidate]] = {key: [] for key in keys}
    for word, leaf_role in ENTRY.iter_unpack(memoryview(data)[:whole]):
        listed = found.get(word & 0xFFFFFFFF)
        if listed is not None and leaf_role >> 2 < size:
            listed.append(Candidate(leaf_role >> 2, leaf_role & 3, word >> 32))
    return found


_ONE_PASS = 6  # entries of a bucket file a key asked, past which each key is searched for instead


def candidates(data: bytes | Any, key: int, size: int) -> list[Candidate]:
    """The entries of ``key`` in one bucket file's bytes whose leaf is below ``size``."""
    needle = _KEY.pack(key)  # the low half of an entry's first word
    unpack, width = ENTRY.unpack_from, ENTRY.size
    found: list[Candidate] = []
    at = data.find(needle, 4)
    while at >= 0:
        if at % width != 4:  # the bytes of a count or a leaf, not of a key
            at = data.find(needle, at + 1)
            continue
        if at - 4 + width > len(data):
            break  # part of an entry a killed writer left (the next writer cuts it back)
        word, leaf_role = unpack(data, at - 4)
        leaf = leaf_role >> 2
        if leaf < size:
            found.append(Candidate(leaf, leaf_role & 3, word >> 32))
        at = data.find(needle, at - 4 + width)
    return found
