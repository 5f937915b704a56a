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

from blake3 import blake3

__all__ = ["MMAP_THRESHOLD", "file_digest", "signature"]

MMAP_THRESHOLD = 4 << 20  # below, plain reads: an mmap costs more than it saves (see .hashing)
_CHUNK = 1 << 20


def file_digest(path: str, size: int) -> str:
    """The BLAKE3 hex digest of the file at ``path``, of ``size`` bytes when stat'ed (large
    files through an mmap and BLAKE3's own threads). Raises ``OSError``.

    Another user may have put something else at ``path`` since the stat; the caller's stat
    after the read says so, but the read must end for it to be asked: a FIFO's open waited
    for a writer for ever (the hashing child, and verify-lineage reading its pipe, with it),
    and a device (``/dev/zero``) never ends. So the file is opened without waiting (no
    effect on a regular file), and at most one byte more than ``size`` is read: a file that
    grew is a changed one. An mmap of anything but a regular file fails."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if size >= MMAP_THRESHOLD:
            hasher = blake3(max_threads=blake3.AUTO)
            try:
                mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except ValueError as err:  # emptied since the stat (or a device): not the file stat'ed
                raise OSError(errno.EINVAL, str(err), path) from None
            with mapped:
                hasher.update(mapped)  # in BLAKE3's threads, without the interpreter lock
            return hasher.hexdigest()
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
