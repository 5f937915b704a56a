"""The shared-storage ledger (Protocol 4's remote copy): a directory on a parallel file system.

Layout (a key-value store keyed by block hash, plus the order of the chain)::

    DIR/blocks/ab/<block id>.json   one block: header and records, bytes kept as latin-1
    DIR/chain.log                   "<height> <block id>" per line, in chain order

A block file is written to a temporary name, fsync'd and renamed, so a reader never sees
half a block. ``put`` first looks the hash up: a block already on storage is not written a
second time (the paper's "one look-up"), which is what makes a retried commit after a
crash harmless. The log line is what commits the block: a block file without its line is
an orphan a later ``put`` reuses. Only one writer at a time: the MPI job's gateway rank
while the job runs, the daemon while it is down.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from lineage_ledger._errors import ConfigError, CorruptStore, describe_os_error
from lineage_ledger._model import StoredBlock

from ._wire import block_from_wire, block_to_wire, parse_json
from .access import unsafe_directory

__all__ = ["SharedStore"]


class SharedStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.blocks_dir = os.path.join(self.root, "blocks")
        self.log_path = os.path.join(self.root, "chain.log")
        # Whoever may write the storage (or swap it, through a directory above) could put a
        # history and rank keys of their own in place of the ledger's, as the allow-list in it
        # is refused then: only this user or root may own and write it. An existing one is
        # checked before anything is made in it (`--storage /tmp` is refused, nothing left).
        existed = os.path.isdir(self.root)
        if existed:
            self._refuse_unsafe()
        # Private whatever the umask: the blocks hold every record, parameters included, and
        # only the service's own uid reads them (clients go through the allow-listed socket).
        # A root that existed is the user's (a home, /tmp as root): its mode is left as it is
        # (it was made 0700, which closed /tmp to every other user of the machine).
        try:
            for directory in (self.root, self.blocks_dir):
                os.makedirs(directory, mode=0o700, exist_ok=True)
                info = os.stat(directory)
                ours = directory == self.blocks_dir or not existed
                if ours and info.st_uid == os.getuid() and info.st_mode & 0o777 != 0o700:
                    os.chmod(directory, 0o700)  # only a change: read-only storage is served as it is
        except OSError as exc:
            raise ConfigError(f"the BAASH storage {self.root}: {exc.strerror}") from exc
        if not existed:
            self._refuse_unsafe()
        self.ids: list[str] = []          # block id by height, as far as read
        self._log_offset = 0
        self.lookups = 0                  # how often storage was asked for a hash
        self.writes_skipped = 0           # blocks found already stored by that look-up
        self._lock = threading.Lock()     # the daemon's threads share one store

    def _refuse_unsafe(self) -> None:
        unsafe = unsafe_directory(self.root, {os.getuid(), 0})
        if unsafe is not None:
            raise ConfigError(f"the BAASH storage {self.root}: {unsafe}; refusing to use it (only the service's "
                              "user or root may own and write it and the directories above it)")

    # -- the chain's order ---------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Read log lines appended since the last call; return the new block ids."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> list[str]:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                tail = log.read()
        except FileNotFoundError:
            return []
        new: list[str] = []
        consumed = 0
        for line in tail.split(b"\n")[:-1]:  # an unterminated last line is a torn write
            consumed += len(line) + 1
            height_text, _, block_id = line.decode("ascii", "replace").partition(" ")
            if not height_text.isdigit() or int(height_text) != len(self.ids) or len(block_id) != 64:
                raise CorruptStore(f"{self.log_path}: line for height {len(self.ids)} is malformed: {line[:80]!r}")
            self.ids.append(block_id)
            new.append(block_id)
        self._log_offset += consumed
        return new

    @property
    def height(self) -> int:
        """Blocks committed to storage (after the last ``refresh``)."""
        return len(self.ids)

    # -- blocks by hash --------------------------------------------------------------------
    def _path(self, block_id: str) -> str:
        return os.path.join(self.blocks_dir, block_id[:2], block_id + ".json")

    def has(self, block_id: str) -> bool:
        self.lookups += 1
        return os.path.exists(self._path(block_id))

    def get(self, block_id: str) -> StoredBlock:
        path = self._path(block_id)
        try:
            with open(path, "rb") as handle:
                return block_from_wire(parse_json(handle.read()))
        except (OSError, ValueError) as exc:
            raise CorruptStore(f"{path}: cannot read block {block_id[:16]}: {exc}") from exc

    def _stage(self, block: StoredBlock) -> tuple[str, str] | None:
        """Write a block to a temporary file beside its place; ``None`` if already stored."""
        path = self._path(block.id)
        if self.has(block.id):
            self.writes_skipped += 1
            return None
        # Private, as every file under the storage (not only through its directory's 0700).
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(block_to_wire(block), separators=(",", ":")).encode())
        except BaseException:
            _discard([(tmp, path)])
            raise
        return tmp, path

    @staticmethod
    def _fsync(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, blocks: Sequence[StoredBlock]) -> None:
        """Store ``blocks`` (the next heights, in order) and append them to the chain log.

        The block files of a round are fsync'd concurrently (the file system folds them
        into one journal commit instead of one per block), renamed, and their directories
        fsync'd; only then does the log line, which is what commits, get written.
        """
        if not blocks:
            return
        self.refresh()
        if blocks[0].height != len(self.ids):
            stored = [b for b in blocks if b.height < len(self.ids)]
            if any(self.ids[b.height] != b.id for b in stored):
                raise CorruptStore(f"storage already holds another block at height {blocks[0].height}")
            blocks = [b for b in blocks if b.height >= len(self.ids)]
            if not blocks:
                return
        staged: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max_workers=16) as pool:
            try:
                for block in blocks:
                    entry = self._stage(block)
                    if entry is not None:
                        staged.append(entry)
                list(pool.map(self._fsync, [tmp for tmp, _ in staged]))
            except BaseException:
                _discard(staged)  # a full disk: no half-written temporary file stays behind
                raise
            if staged:
                for tmp, path in staged:
                    os.replace(tmp, path)
                directories = {os.path.dirname(path) for _, path in staged} | {self.blocks_dir}
                if not os.path.exists(self.log_path):
                    directories.add(self.root)  # the log is about to be created there
                list(pool.map(self._fsync, sorted(directories)))
        lines = "".join(f"{b.height} {b.id}\n" for b in blocks).encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            # The refresh above read every whole line; anything past them is a line a crash
            # cut short (never committed). Appended to, it would glue onto our first line.
            if os.fstat(fd).st_size > self._log_offset:
                os.ftruncate(fd, self._log_offset)
            try:
                data = memoryview(lines)
                while data:  # a full disk cuts a write short and returns the count, no error
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                # Lines only partly written commit nothing: take them back, so the caller's
                # error is the whole truth and a retry appends where the log really ends.
                os.ftruncate(fd, self._log_offset)
                raise
        finally:
            os.close(fd)
        self.refresh()

    def refusal(self, exc: OSError) -> str:
        """What a client is told when storage refuses a round (a full or read-only disk)."""
        return f"shared storage could not keep the round: {describe_os_error(exc)} ({self.root})"

    def load(self, start: int = 0) -> Iterator[StoredBlock]:
        """Blocks from height ``start`` on, as committed (for restoring a rank or the daemon)."""
        self.refresh()
        for block_id in self.ids[start:]:
            yield self.get(block_id)


def _discard(staged: Sequence[tuple[str, str]]) -> None:
    for tmp, _ in staged:
        try:
            os.unlink(tmp)
        except OSError:
            pass
