"""A file's BLAKE3 digest, read once, and the stat signature that says it did not change
meanwhile: the one piece of hashing that :mod:`.hashing` and the hashing child of
:mod:`.hash_ahead` share.

This module imports nothing of the package, so that it runs as the child's script
(``python .../_digest.py``) in a twentieth of the time importing the package would take: the
child starts while its parent reads the ledger. Errors are the system's (``OSError``); the
package's callers turn them into their own.

The child's protocol: its standard input holds paths, each ended by a NUL byte (bytes as
the file system has them); it writes one line a path, in their order: ``DIGEST SIZE`` for a
regular file whose stat signature was the same before and after it was read, ``-`` for
anything else (not there, not a regular file, unreadable, changed while it was read), which
the parent then hashes itself, for the answer or the error it gives on its own.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import sys
from typing import Any

from blake3 import blake3

__all__ = ["LARGE", "file_digest", "signature"]

# From this size on, a file is read in blocks that BLAKE3 hashes in its own threads while
# the next block is read; below, plainly (a thread and two buffers cost more than they save).
LARGE = 4 << 20
_CHUNK = 1 << 20
_BLOCK = 2 << 20  # a large file's blocks: two of them, reused by each thread that hashes
_buffers: Any = None  # a threading.local(), made by the first large file


def file_digest(path: str, size: int) -> str:
    """The BLAKE3 hex digest of the file at ``path``, of ``size`` bytes when stat'ed (large
    files hashed in BLAKE3's own threads as they are read). Raises ``OSError``.

    Another user may have put something else at ``path`` since the stat; the caller's stat
    after the read says so, but the read must end for it to be asked: a FIFO's open waited
    for a writer for ever (the hashing child, and verify-lineage reading its pipe, with it),
    and a device (``/dev/zero``) never ends. So the file is opened without waiting (no
    effect on a regular file), and at most one byte more than ``size`` is read: a file that
    grew is a changed one.

    A large file is mapped only where no other user can write it (:func:`_only_ours`):
    another user who truncates a mapped file while it is hashed (``: > big.dat``) takes the
    pages past its new end away, and the next touch of one kills this process with SIGBUS,
    with nothing reported and nothing saved. Any other large file is read (:func:`_large_digest`):
    a read past the new end just ends, and the caller's stat says the file changed. Mapped is
    1.6 times as fast on two processors (BLAKE3 hashes the page cache where it lies; a read
    copies it first: ``bench/bench_hashing.py``, 0.61x of BLAKE3's own mmap read, 1.0x mapped).
    This user's own processes can still truncate a mapped file of theirs under a check: the
    check then dies with SIGBUS (docs/security.md)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if size >= LARGE:
            if _only_ours(fd):
                return _mapped_digest(fd, path)
            return _large_digest(fd, size)
        hasher = blake3()
        # A descriptor, not a file object: 9.8 against 12.5 us a file of 4 KiB; no fstat to
        # check its type (a tenth of the cost): the bound and the caller's stat do.
        left = size + 1
        while left > 0 and (chunk := os.read(fd, min(left, _CHUNK))):
            hasher.update(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return hasher.hexdigest()


def _only_ours(fd: int) -> bool:
    """Whether the file open at ``fd`` is a regular file that no other user can write, so
    none can truncate it: this user's, with no write permission for its group or others (an
    ACL that lets another user write sets the group's write bit, its mask). Root can; root
    is trusted."""
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _mapped_digest(fd: int, path: str) -> str:
    """The digest of the file open at ``fd`` through an mmap, hashed in BLAKE3's own threads
    without the interpreter lock."""
    hasher = blake3(max_threads=blake3.AUTO)
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except ValueError as err:  # emptied since the stat: not the file stat'ed
        raise OSError(errno.EINVAL, str(err), path) from None
    with mapped:
        hasher.update(mapped)
    return hasher.hexdigest()


def _large_digest(fd: int, size: int) -> str:
    """Read ``fd`` (at most ``size`` + 1 bytes) into two buffers in turn while a thread has
    BLAKE3 hash the other one (``update`` lets go of the interpreter lock, and hashes in
    BLAKE3's own threads): copying a block out of the page cache costs about half what
    hashing it does, and is done meanwhile. Only this thread touches the descriptor; the
    hashing thread touches the buffers and the hasher, and has stopped before this returns."""
    global _buffers
    # Imported here: the hashing child, given small files mostly, starts 2 ms sooner.
    import threading
    from queue import SimpleQueue

    if _buffers is None:
        _buffers = threading.local()
    hasher = blake3(max_threads=blake3.AUTO)
    buffers: list[memoryview] | None = getattr(_buffers, "pair", None)
    _buffers.pair = None  # not shared with a nested or interrupted call
    if buffers is None:
        buffers = [memoryview(bytearray(_BLOCK)), memoryview(bytearray(_BLOCK))]
    full: SimpleQueue[tuple[memoryview, int] | None] = SimpleQueue()
    free: SimpleQueue[memoryview] = SimpleQueue()
    for buffer in buffers:
        free.put(buffer)

    def hash_blocks() -> None:
        while (block := full.get()) is not None:
            hasher.update(block[0][: block[1]])
            free.put(block[0])

    worker = threading.Thread(target=hash_blocks, name="blake3-blocks", daemon=True)
    worker.start()
    left = size + 1
    try:
        while left > 0:
            buffer = free.get()
            got = os.readv(fd, [buffer[: min(left, _BLOCK)]])
            if not got:  # the end, where a file emptied or cut short since its stat ends
                break
            full.put((buffer, got))
            left -= got
    finally:
        full.put(None)
        worker.join()
    _buffers.pair = buffers
    return hasher.hexdigest()


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must not change while a file is read (ctime: see the stat cache's key)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _serve() -> None:
    """The hashing child's loop (see the module's docstring)."""
    paths = sys.stdin.buffer.read().split(b"\0")[:-1]
    out = sys.stdout.buffer
    lines = []
    for raw in paths:
        try:
            before = os.stat(raw)
            if not stat.S_ISREG(before.st_mode):
                raise OSError("not a regular file")
            digest = file_digest(os.fsdecode(raw), before.st_size)
            after = os.stat(raw)
            line = f"{digest} {after.st_size}\n" if signature(before) == signature(after) else "-\n"
        except (OSError, ValueError):
            line = "-\n"
        lines.append(line)
        if len(lines) == 64:  # a few syscalls, and the parent never waits long for a line
            out.write("".join(lines).encode())
            out.flush()
            lines.clear()
    out.write("".join(lines).encode())
    out.flush()


if __name__ == "__main__":
    try:
        _serve()
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the parent went away or stopped: nothing to say to anyone
