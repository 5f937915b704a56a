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
from collections import Counter
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter, itemgetter, lshift, methodcaller, or_, rshift
from typing import Any, NamedTuple

__all__ = ["BUCKETS", "ENTRY_SIZE", "FORMAT", "Candidate", "NamesBatch", "NamesWriter", "bucket_name", "bucket_of",
           "candidates", "drop_entries", "kept", "path_key"]

FORMAT = 1  # the version of these files a head records (0: none kept)
_BUCKET_BITS = 10
BUCKETS = 1 << _BUCKET_BITS  # a look-up reads a 1,024th of the entries: 50 KB at 1M records
_ENTRY = struct.Struct(">QQ")  # key, leaf << 1 | role (big-endian: one integer's bytes)
ENTRY_SIZE = _ENTRY.size
_ended, _outputs, _inputs = (attrgetter(name) for name in ("ended", "outputs", "inputs"))
_second = itemgetter(1)
_encode = methodcaller("encode", "utf-8", "surrogatepass")  # a C call per path, in map()
_to_bytes = methodcaller("to_bytes", 16, "big")  # an entry's two words (byteorder: 3.10 has no default)


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
    """The names of a run of consecutive verified records, until :meth:`packed`. An audit
    pays this for every record it reads, so the work is kept to a few C-level steps a
    record and one Python step a path kept."""

    def __init__(self) -> None:
        self._records: list[tuple[int, str, Any, Any]] = []  # (leaf, ended, outputs, inputs)
        self.records = 0
        self._keep = kept()

    def add(self, first_leaf: int, views: Sequence[Any]) -> None:
        """Records ``first_leaf`` on, as :func:`.audit_rows.decode_views` reads them."""
        if not self._keep:
            return
        # The paths only, not the decoded records: a task's 25,000 of those were 50 MB.
        self._records.extend(zip(range(first_leaf, first_leaf + len(views)), map(_ended, views),
                                 map(tuple, map(_outputs, views)), map(tuple, map(_inputs, views)), strict=True))
        self.records += len(views)

    @staticmethod
    def _latest(records) -> tuple[dict[str, int], dict[str, int]]:
        """(written, read): path -> the leaf of the record that named it in that role and
        ended last, then the latest in ledger order: each record's paths overwrite those of
        the records before it in that order (a stable sort by end time keeps ledger order
        among equals)."""
        written: dict[str, int] = {}
        read: dict[str, int] = {}
        fromkeys, write, reading = dict.fromkeys, written.update, read.update
        for leaf, _ended, outputs, inputs in sorted(records, key=_second):
            write(fromkeys(outputs, leaf))
            reading(fromkeys(inputs, leaf))
        return written, read

    def packed(self) -> tuple[list[int], bytes]:
        """(entries per bucket, the entries grouped by bucket in bucket order); then empty.

        Column by column, in C where it can be: each entry is one integer (key, then leaf
        and role, as the 16 bytes it is written as), so one sort of plain integers groups
        them by bucket (the key's high bits). Sorting tuples instead cost three times as much."""
        records = self._records
        self._records, self.records = [], 0
        if not records:
            return [0] * BUCKETS, b""
        written, read = self._latest(records)
        paths = [*written, *read]
        low = [*(leaf << 1 | 1 for leaf in written.values()), *(leaf << 1 for leaf in read.values())]
        keys = list(map(zlib.crc32, map(_encode, paths)))
        entries = list(map(or_, map(lshift, keys, repeat(64)), low))
        entries.sort()
        per_bucket = [0] * BUCKETS
        for bucket, count in Counter(map(rshift, keys, repeat(32 - _BUCKET_BITS))).items():
            per_bucket[bucket] = count
        return per_bucket, b"".join(map(_to_bytes, entries))


class NamesWriter:
    """Appends packed batches to the bucket files of one state directory (private files).
    Each file is opened for its write only: a batch touches most of the 1,024."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def write(self, counts: Sequence[int], data: bytes) -> None:
        if len(counts) != BUCKETS or sum(counts) * _ENTRY.size != len(data):
            raise ValueError("a names batch whose counts do not match its entries")
        view = memoryview(data)
        at = 0
        for bucket, count in enumerate(counts):
            if not count:
                continue
            size = count * _ENTRY.size
            fd = os.open(os.path.join(self.directory, bucket_name(bucket)),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                # A writer killed mid-entry left a part of one: fill it up to a whole entry
                # (a candidate like any other, proved before it is believed), or every entry
                # appended after it would sit off the 16-byte grid, where readers skip it.
                # Cutting it instead could take a page from under a reader's map (SIGBUS).
                tail = os.fstat(fd).st_size % _ENTRY.size
                chunk = view[at : at + size]
                if tail:
                    chunk = memoryview(bytes(_ENTRY.size - tail) + bytes(chunk))
                while chunk:
                    written = os.write(fd, chunk)
                    chunk = chunk[written:]
            finally:
                os.close(fd)
            at += size


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
