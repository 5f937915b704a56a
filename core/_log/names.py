"""Which verified records name each path, kept beside the verified tree, so that a reader
notices an index row that was deleted.

A targeted read asks the back-end's index which records name a path, and proves each row
it gets. A row that was *deleted* is never returned, so nothing proves it: a pre-run check
would see an edited file's producer vanish and treat the file as a source, or answer from
an older record. Only the full audit noticed. This file set closes that gap without
trusting the database for completeness: while records are verified (the audit, and each
refresh of the head), the names they carry are written here, in the user's own state
directory, and a reader compares what the index returned with what is kept here.

What is kept, per verified record and path it names (two big-endian 64-bit words an entry,
see ``_ENTRY``):

* ``key``: the CRC-32 of the path (UTF-8). Collisions are harmless: an entry is only ever
  a *candidate*, whose record the reader fetches and proves before believing it names the
  path; only missing entries would be harmful, and a hash never makes one go missing.
* ``leaf << 1 | role``: the record's leaf index, and 1 for an output, 0 for an input.

(An end time per entry, to let readers skip candidates that ended before their answer,
cost the audit a microsecond a record to compute: the few candidates a path has are
read instead.)

Each batch of records verified together (a task of the audit, a refresh) keeps, per path
and role, the record that named it and ended last (then the latest in ledger order): what a
reader's "last record to write / to read this file" needs, at one entry a batch for a file
that every task reads or rewrites. A refresh that leaves more than a few entries for a path
it touched proves the records behind them and drops the older ones
(:meth:`.verified.Verifier._compact_names`). A batch's entries are appended to one of 1,024
files by the key's high bits (``names-KKK.bin``), so a look-up reads one file, a 1,024th
of the whole, and finds its key in C (:meth:`bytes.find`). Files only grow between
compactions, which replace a file whole; entries past the verified head (a writer that
crashed before committing it) are ignored, and appended again if those records are verified
later.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain, islice, repeat
from operator import attrgetter, le, lshift, methodcaller, or_
from typing import Any, NamedTuple

__all__ = ["BUCKETS", "ENTRY_SIZE", "FORMAT", "Candidate", "NamesBatch", "NamesWriter", "bucket_name", "bucket_of",
           "candidates", "drop_entries", "kept", "path_key"]

FORMAT = 1  # the version of these files a head records (0: none kept)
_BUCKET_BITS = 10
BUCKETS = 1 << _BUCKET_BITS  # a look-up reads a 1,024th of the entries: 50 KB at 1M records
_ENTRY = struct.Struct(">QQ")  # key, leaf << 1 | role (big-endian: one integer's bytes)
ENTRY_SIZE = _ENTRY.size
_ended, _outputs, _inputs = (attrgetter(name) for name in ("ended", "outputs", "inputs"))
_flat = chain.from_iterable
_encode = methodcaller("encode", "utf-8", "surrogatepass")  # a C call per path, in map()


class Candidate(NamedTuple):
    leaf: int
    output: bool


def path_key(path: str) -> int:
    return zlib.crc32(_encode(path))


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
        self.records += len(views)

    def _latest(self) -> tuple[dict[str, int], dict[str, int]]:
        """(written, read): path -> ``leaf << 1 | role`` of the record that named it in that
        role and ended last, then the latest in ledger order. A dict built from the pairs in
        that order keeps the last value of each path; the order is ledger order where the end
        times never go back (the usual case, checked in one pass), else a stable sort of the
        records by end time (ledger order among equals), applied to the flat columns by slices."""
        leaves, ended, writes, reads = self._leaves, self._ended, self._writes, self._reads
        written, read = self._written, self._read
        if not all(map(le, ended, islice(ended, 1, None))):
            order = sorted(range(len(ended)), key=ended.__getitem__)
            written = list(_flat(map(written.__getitem__, _slices(writes, order))))
            read = list(_flat(map(read.__getitem__, _slices(reads, order))))
            leaves, writes, reads = ([column[i] for i in order] for column in (leaves, writes, reads))
        as_output = map(or_, map(lshift, leaves, repeat(1)), repeat(1))
        as_input = map(lshift, leaves, repeat(1))
        return (dict(zip(written, _flat(map(repeat, as_output, writes)), strict=True)),
                dict(zip(read, _flat(map(repeat, as_input, reads)), strict=True)))

    def packed(self) -> tuple[list[int], bytes]:
        """(entries per bucket, the entries grouped by bucket in bucket order); then empty.
        Inside a bucket the order is of no meaning: a reader searches the whole file."""
        if not self._leaves:
            return [0] * BUCKETS, b""
        written, read = self._latest()
        self._clear()
        keys = list(map(zlib.crc32, _encoded([*written, *read])))
        shift = 32 - _BUCKET_BITS
        buckets: list[list[int]] = [[] for _ in range(BUCKETS)]
        for key, low in zip(keys, [*written.values(), *read.values()], strict=True):  # the one Python step an entry
            bucket = buckets[key >> shift]
            bucket.append(key)
            bucket.append(low)
        words = list(_flat(buckets))
        return [len(bucket) >> 1 for bucket in buckets], struct.pack(f">{len(words)}Q", *words)


def _slices(counts: list[int], order: list[int]) -> Iterator[slice]:
    """The slices of a flat column (``counts[i]`` items for record ``i``) in ``order``."""
    starts = [0, *accumulate(counts)]
    return map(slice, map(starts.__getitem__, order), map(starts.__getitem__, map((1).__add__, order)))


def _encoded(paths: list[str]) -> Iterator[bytes] | list[bytes]:
    """The paths in UTF-8 (lone surrogates, from undecodable file names, kept as they are):
    one encoding of them all, split at NUL, which no path holds (one per path where one does)."""
    parts = "\0".join(paths).encode("utf-8", "surrogatepass").split(b"\0")
    return parts if len(parts) == len(paths) else map(_encode, paths)


class NamesWriter:
    """Appends packed batches to the bucket files of one state directory (private files).
    Batches queued together are written with one open of each file they touch: an audit's
    parent queues several workers' ranges, so that it opens each of the 1,024 files once per
    few ranges, not once per range (the parent is the audit's serial part)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._queued: list[tuple[Sequence[int], bytes]] = []
        self.queued_bytes = 0

    def write(self, counts: Sequence[int], data: bytes) -> None:
        self.queue(counts, data)
        self.flush()

    def queue(self, counts: Sequence[int], data: bytes) -> None:
        if len(counts) != BUCKETS or sum(counts) * _ENTRY.size != len(data):
            raise ValueError("a names batch whose counts do not match its entries")
        self._queued.append((counts, data))
        self.queued_bytes += len(data)

    def flush(self) -> None:
        batches, self._queued, self.queued_bytes = self._queued, [], 0
        starts = [[0, *accumulate(count * _ENTRY.size for count in counts)] for counts, _data in batches]
        views = [memoryview(data) for _counts, data in batches]
        for bucket in range(BUCKETS):
            parts = [view[at[bucket] : at[bucket + 1]] for view, at in zip(views, starts, strict=True)
                     if at[bucket + 1] > at[bucket]]
            if parts:
                self._append(bucket, parts[0] if len(parts) == 1 else memoryview(b"".join(parts)))

    def _append(self, bucket: int, chunk: memoryview) -> None:
        fd = os.open(os.path.join(self.directory, bucket_name(bucket)),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # A writer killed mid-entry left a part of one: fill it up to a whole entry
            # (a candidate like any other, proved before it is believed), or every entry
            # appended after it would sit off the 16-byte grid, where readers skip it.
            # Cutting it instead could take a page from under a reader's map (SIGBUS).
            tail = os.fstat(fd).st_size % _ENTRY.size
            if tail:
                chunk = memoryview(bytes(_ENTRY.size - tail) + bytes(chunk))
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
        finally:
            os.close(fd)


def candidates(data: bytes | Any, key: int, size: int) -> list[Candidate]:
    """The entries of ``key`` in one bucket file's bytes whose leaf is below ``size``."""
    needle = _ENTRY.pack(key, 0)[:8]
    unpack, width = _ENTRY.unpack_from, _ENTRY.size
    found: list[Candidate] = []
    at = data.find(needle)
    while at >= 0:
        if at % width:  # the bytes of a leaf, not of a key
            at = data.find(needle, at + 1)
            continue
        if at + width > len(data):
            break  # part of an entry a killed writer left (the next writer fills it up)
        _key, leaf_role = unpack(data, at)
        leaf = leaf_role >> 1
        if leaf < size:
            found.append(Candidate(leaf, bool(leaf_role & 1)))
        at = data.find(needle, at + width)
    return found


def drop_entries(directory: str, bucket: int, dropped: set[tuple[int, int]]) -> None:
    """Rewrite one bucket file without the entries ``(key, leaf << 1 | role)`` in
    ``dropped``, replaced atomically: a reader holding the old file's bytes keeps them,
    whole. The caller holds the state's lock and has proved that newer entries stand for
    those dropped."""
    path = os.path.join(directory, bucket_name(bucket))
    with open(path, "rb") as handle:
        data = handle.read()
    width = _ENTRY.size
    gone = {_ENTRY.pack(*entry) for entry in dropped}
    entries = [data[at : at + width] for at in range(0, len(data) - width + 1, width)]
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".names-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(entry for entry in entries if entry not in gone))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
