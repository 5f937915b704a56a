"""The names files on disk (:mod:`.names` says what they hold): appending packed batches,
cutting back what a writer that died left, copying and dropping a state's files, and
rewriting one file without the entries a compaction drops. Every file is private to the
user (0600, links never followed) and replaced whole where it shrinks, so a reader holding
a file's old bytes keeps them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from itertools import accumulate

from .names import BUCKETS, ENTRY, PENDING, bucket_name

__all__ = ["NamesWriter", "copy_names", "drop_entries", "drop_names", "recover", "write_atomic"]


class NamesWriter:
    """Appends packed batches to the bucket files of one state directory (private files).
    Batches queued together are written with one open of each file they touch: an audit's
    parent queues several workers' ranges, so that it opens each of the 1,024 files once per
    few ranges, not once per range (the parent is the audit's serial part).

    Before a file first grows, its size is noted in ``names-pending`` with the size of the
    head the batches extend; :meth:`committed` (after the new head is written) removes the
    note, and :func:`recover` (the next writer, under the state's lock) cuts back the files a
    writer that died in between had grown."""

    def __init__(self, directory: str, extends: int = 0) -> None:
        self.directory = directory
        self.extends = extends  # the size of the head these names extend
        self._queued: list[tuple[Sequence[int], bytes]] = []
        self.queued_bytes = 0
        self._noted: set[int] = set()

    def write(self, counts: Sequence[int], data: bytes) -> None:
        self.queue(counts, data)
        self.flush()

    def queue(self, counts: Sequence[int], data: bytes) -> None:
        if len(counts) != BUCKETS or sum(counts) * ENTRY.size != len(data):
            raise ValueError("a names batch whose counts do not match its entries")
        self._queued.append((counts, data))
        self.queued_bytes += len(data)

    def flush(self) -> None:
        batches, self._queued, self.queued_bytes = self._queued, [], 0
        starts = [[0, *accumulate(count * ENTRY.size for count in counts)] for counts, _data in batches]
        views = [memoryview(data) for _counts, data in batches]
        touched = [bucket for bucket in range(BUCKETS) if any(at[bucket + 1] > at[bucket] for at in starts)]
        self._note(sorted(set(touched) - self._noted))
        for bucket in touched:
            # One file's part at a time: joining every file's before writing any copied the
            # whole queue, 8 MiB of an audit's parent.
            parts = [view[at[bucket] : at[bucket + 1]] for view, at in zip(views, starts, strict=True)
                     if at[bucket + 1] > at[bucket]]
            self._append(bucket, parts[0] if len(parts) == 1 else memoryview(b"".join(parts)))

    def _note(self, buckets: list[int]) -> None:
        """Write down the sizes of files about to grow for the first time in this batch."""
        if not buckets:
            return
        lines = [] if self._noted else [f"extends {self.extends}"]
        for bucket in buckets:
            try:
                size = os.stat(os.path.join(self.directory, bucket_name(bucket))).st_size
            except FileNotFoundError:
                size = 0
            lines.append(f"{bucket} {size}")
        fd = os.open(os.path.join(self.directory, PENDING),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)
        self._noted.update(buckets)

    def committed(self) -> None:
        """The head that covers every batch written is in place: nothing is pending."""
        if self._noted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, PENDING))
            self._noted.clear()

    def _append(self, bucket: int, chunk: memoryview) -> None:
        fd = os.open(os.path.join(self.directory, bucket_name(bucket)),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # A part of an entry (a writer killed mid-entry whose note was lost): fill it up
            # to a whole entry (a candidate like any other, proved before it is believed), or
            # every entry appended after it would sit off the 16-byte grid, where readers
            # skip it. Cutting it instead could take a page from under a reader's map (SIGBUS).
            tail = os.fstat(fd).st_size % ENTRY.size
            if tail:
                chunk = memoryview(bytes(ENTRY.size - tail) + bytes(chunk))
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
        finally:
            os.close(fd)


def recover(directory: str, size: int) -> None:
    """Under the state's lock, before appending names to a head of ``size`` records: where a
    writer died after growing the files and before committing its head (``names-pending``
    names a head of ``size`` or more), put each file back as it was, whole (replaced, never
    cut in place), so the records it had named are counted once when verified again."""
    path = os.path.join(directory, PENDING)
    try:
        with open(path, "rb") as handle:
            lines = handle.read().decode("ascii", "replace").split("\n")
    except FileNotFoundError:
        return
    first, *rest = lines
    words = first.split()
    extends = int(words[1]) if len(words) == 2 and words[0] == "extends" and words[1].isdigit() else -1
    if extends >= size or extends < 0:
        # A part of a line: the writer died writing the note, before any file grew past it.
        sizes = [line.split() for line in rest]
        for bucket_size in sizes:
            if len(bucket_size) == 2 and all(word.isdigit() for word in bucket_size):
                _cut(directory, int(bucket_size[0]), int(bucket_size[1]))
    os.unlink(path)


def copy_names(source: str, target: str) -> None:
    """Copy the bucket files and the pending note of one state directory into another
    (private files; links are not followed), for :func:`recover` to cut back there."""
    for name in [*map(bucket_name, range(BUCKETS)), PENDING]:
        try:
            src = os.open(os.path.join(source, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            dst = os.open(os.path.join(target, name),
                          os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                while os.sendfile(dst, src, None, 1 << 30):
                    pass
            finally:
                os.close(dst)
        finally:
            os.close(src)


def drop_names(directory: str) -> None:
    """Remove the bucket files and the pending note of a state directory."""
    for name in [*map(bucket_name, range(BUCKETS)), PENDING]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))


def _cut(directory: str, bucket: int, size: int) -> None:
    """Replace one bucket file by its first ``size`` bytes (whole entries: they were)."""
    if not 0 <= bucket < BUCKETS:
        return
    path = os.path.join(directory, bucket_name(bucket))
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return
    if len(data) > size:
        _replace(directory, path, data[:size])


def _replace(directory: str, path: str, data: bytes) -> None:
    write_atomic(path, data, ".names-")


def write_atomic(path: str, data: bytes, prefix: str) -> None:
    """Replace ``path`` by ``data`` whole: a reader sees the old file or the new one."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def drop_entries(directory: str, bucket: int, dropped: set[tuple[int, int, int]],
                 counted: dict[tuple[int, int], int]) -> None:
    """Rewrite one bucket file without the entries ``(key, leaf << 2 | role, count)`` in
    ``dropped``, adding their counts to the entries ``(key, leaf << 2 | role)`` that stand
    for them in ``counted`` (how many to add); replaced atomically, so a reader holding the
    old file's bytes keeps them, whole, and either file adds up to the same counts. The
    caller holds the state's lock and has proved that the entries kept stand for those
    dropped."""
    path = os.path.join(directory, bucket_name(bucket))
    with open(path, "rb") as handle:
        data = handle.read()
    width = ENTRY.size
    gone = {ENTRY.pack(count << 32 | key, low) for key, low, count in dropped}
    kept = []
    for at in range(0, len(data) - width + 1, width):
        entry = data[at : at + width]
        if entry in gone:
            gone.discard(entry)  # once: two equal entries are two batches' counts
            continue
        word, low = ENTRY.unpack(entry)
        added = counted.pop((word & 0xFFFFFFFF, low), 0)
        kept.append(ENTRY.pack(word + (added << 32), low) if added else entry)
    if gone or counted:
        raise ValueError("the names to drop or to add to are not all in the file")
    _replace(directory, path, b"".join(kept))
