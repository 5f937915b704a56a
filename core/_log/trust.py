"""The tree head this user last verified for a ledger, and that tree's nodes, kept locally.

The Go checksum-database client keeps the last tree head it verified and the tiles it
fetched outside the log; this is the same idea for a ledger whose whole body can be read.
After a verification, the user's own state directory holds, per ledger:

* ``head.json``: origin, tree size and root, how many blocks and the id of the last one;
* ``level-KK.bin``: every complete perfect subtree of the log tree at level ``KK`` (level 0
  is the leaf hashes), 32 bytes each, in order: 64 bytes per record in all;
* ``starts.bin``: the leaf index of each block's first record (8 bytes, little-endian);
* ``names-KKK.bin``: which verified records name each path (:mod:`.names`), so that readers
  notice an index row that was deleted.

Nothing in it comes from the ledger unverified: the leaves are hashed from record ids
whose bodies were hashed, in blocks whose headers, links and Merkle roots were checked.
So a reader proves a record is in the verified tree by comparing one leaf, and the root at
any earlier size (a checkpoint) comes from O(log n) stored nodes. Files only grow; the head
names how much of them is valid, and is replaced atomically, so readers need no lock.
Writers take ``<directory>.lock`` (``flock``), a file beside the directory, not in it: a full
audit swaps a new directory in, and a lock inside the directory swapped would be a different
file before and after the swap (two writers each held "the" lock; see :meth:`TrustStore.adopt`).
The directories are private to their user (0700, files 0600), as is the root that holds them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from blake3 import blake3

from .._canonical import CONTROL
from .._environment import checked_makedirs, state_root
from .._errors import ConfigError, CorruptStore, HistoryRewritten
from .names import FORMAT as NAMES_FORMAT
from .names import (
    Candidate,
    bucket_name,
    bucket_of,
    candidates_of,
    path_keys,
)
from .tree_head import _EMPTY, _NODE, _STARTS, TreeHead, TreeWriter

__all__ = ["TreeHead", "TreeWriter", "TrustStore", "state_root", "trust_identity"]

# The files of the tree's levels by level, named once: a verification of 10,000 files reads
# a leaf of each record it proves.
_LEVEL_FILES = tuple(f"level-{level:02d}.bin" for level in range(64))

def _covered(head: TreeHead) -> dict[str, int]:
    """The files of the state that ``head`` covers, and the bytes it needs of each."""
    need = {"starts.bin": head.blocks * _STARTS.size}
    level, nodes = 0, head.size
    while nodes:
        need[_LEVEL_FILES[level] if level < len(_LEVEL_FILES) else f"level-{level:02d}.bin"] = nodes * _NODE
        level, nodes = level + 1, nodes >> 1
    return need


_NAMES_HELD = 64 << 20  # bytes of name files a process keeps read


def trust_identity(backend: Any) -> str:
    """The name ``backend``'s remembered head is kept under (``Backend.trust_identity``: a
    ledger file by its path as named, links not resolved; any other store by its identity)."""
    return getattr(backend, "trust_identity", None) or backend.identity


def _is_file_at(fd: int, path: str) -> bool:
    """Whether the open file ``fd`` is the one at ``path`` now (not one renamed away or replaced)."""
    try:
        held, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


class _StateMoved(Exception):
    """The state directory was moved away while its head was read (TrustStore._read_head)."""


_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Any = None


def _exchange(first: str, second: str) -> bool:
    """Swap the directories ``first`` and ``second`` in one step; False where this system or
    file system cannot (then nothing was changed). Raises FileNotFoundError if one is missing."""
    global _renameat2
    if _renameat2 is None:
        import ctypes  # imported here: only a full audit swaps a state in

        call: Any = False
        try:
            call = ctypes.CDLL(None, use_errno=True).renameat2
            call.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
            call.restype = ctypes.c_int
        except (AttributeError, OSError):  # not Linux, or a C library without it (glibc < 2.28)
            call = False
        _renameat2 = call
    if _renameat2 is False:
        return False
    import ctypes

    at_cwd = -100  # AT_FDCWD
    if _renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    # A file system without the exchange (EINVAL), a kernel without the call (ENOSYS), or a
    # seccomp filter that does not know it (EPERM: older container runtimes, systemd's
    # SystemCallFilter): the two renames, which an EPERM of the directories' own refuses too
    # (tests/test_attack_s48.py).
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), second)


class TrustStore:
    """The state directory of one ledger (by its identity) for the current user."""

    def __init__(self, identity: str, origin: str, root: str | None = None, earlier: Iterable[str] = ()) -> None:
        if not isinstance(origin, str) or not origin or CONTROL.search(origin) or "\n" in origin:
            # Every head remembered, and every checkpoint written, names it: one a checkpoint
            # cannot carry is refused here by name, before it is remembered.
            raise CorruptStore(f"{identity}: the ledger's origin {origin!r} in ll_meta has control characters "
                               "or is empty; a ledger's origin is one line of text")
        self.identity = identity
        self.origin = origin
        base = root or state_root()
        self.directory = self.directory_for(identity, base)
        self._maps: dict[str, tuple[int, mmap.mmap | bytes]] = {}
        self._names_maps: dict[str, tuple[tuple[int, int], bytes]] = {}
        self._names_held = 0
        self.lock_path = self.directory + ".lock"
        for attempt in range(400):
            try:
                unsafe = checked_makedirs(base)  # checked before it is made: nothing left in another user's tree
                if unsafe is None:
                    self._settle(base, earlier)
                    st = os.lstat(self.directory)
                break
            except FileNotFoundError as err:
                # Another process's adopt() on a file system without an atomic exchange renamed
                # the directory away and not yet the new one in (microseconds; _settle waits for
                # it where it sees it). Tried again; some 4 s at the most.
                if attempt == 399:
                    raise ConfigError(f"cannot keep the verified tree head in {self.directory}: {err.strerror} "
                                      "(set LINEAGE_STATE_DIR to a private directory)") from err
                time.sleep(0.01)
            except OSError as err:
                raise ConfigError(f"cannot keep the verified tree head in {self.directory}: {err.strerror} "
                                  "(set LINEAGE_STATE_DIR to a private directory)") from err
        if unsafe is not None:
            raise ConfigError(f"refusing to keep the verified tree head in {base}: {unsafe}, so another user "
                              "could move it aside or replace it (set LINEAGE_STATE_DIR to a private directory)")
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise ConfigError(f"{self.directory}: not a directory of this user; refusing to trust it")
        if st.st_mode & 0o022:
            # Others could have removed or replaced what it holds: made private, it would be
            # trusted as it is now. Left as found, for the user to look at.
            raise ConfigError(f"{self.directory}: other users could write it, so what it holds is not trusted; "
                              "run `lineage-ledger reset-trust` and verify again")
        if st.st_mode & 0o077:
            os.chmod(self.directory, 0o700)  # read access given away: private again, nothing lost
        self.head: TreeHead | None = None
        self.reload()

    def _adopt_earlier(self, base: str, earlier: Iterable[str]) -> None:
        """Where nothing is kept under this identity yet, take over the state kept under an
        earlier name of the same ledger (a PostgreSQL URL named with its connection-tuning
        keys before they left the identity): renamed whole, so that the head verified before
        is still what every later command checks consistency from, instead of a first audit
        that would trust whatever the ledger holds now. Only a private directory of this user
        whose head names this ledger's origin is taken; anything else is left where it is."""
        if os.path.lexists(self.directory):
            return
        for name in earlier:
            candidate = self.directory_for(name, base)
            try:
                if self._ours(candidate):
                    os.rename(candidate, self.directory)
                    return
            except OSError:
                continue

    def _settle(self, base: str, earlier: Iterable[str]) -> None:
        """Make this ledger's directory where there is none, taking over an earlier name's
        state or putting back what a killed :meth:`adopt` set aside, under the lock: done by a
        process while another swaps the state in, it would take the swap's half-done state
        for a killed one. A directory with a head is there already (the common case: no lock)."""
        if os.path.lexists(os.path.join(self.directory, "head.json")):
            return
        deadline = time.monotonic() + 60
        while True:
            fd = self._open_lock()
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # A writer holds it. Between an adopt's two renames (an .old with this
                    # ledger's head, no directory) wait for its second; else (an audit at work,
                    # perhaps in this very process) go on: a directory made empty here is one
                    # its rename replaces, and the head is read again under the lock by
                    # whatever writes.
                    between = not os.path.lexists(self.directory) and self._ours(self.directory + ".old")
                    if between and time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                    os.makedirs(self.directory, mode=0o700, exist_ok=True)
                    return
                self._adopt_earlier(base, earlier)
                self._restore_interrupted()
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                return
            finally:
                os.close(fd)

    def _restore_interrupted(self) -> None:
        """Put back the state an :meth:`adopt` killed between its two renames left aside
        (``<directory>.old``, with nothing or no head at ``<directory>``): else the head
        verified before would be lost, and the next command would trust whatever the ledger
        holds then as a first audit. Only a private directory of this user whose head names
        this ledger's origin is put back. Call under the lock (so no adopt is in progress)."""
        old = self.directory + ".old"
        if os.path.lexists(os.path.join(self.directory, "head.json")) or not self._ours(old):
            return
        with contextlib.suppress(OSError):
            if os.path.lexists(self.directory):  # made by a command since: no head, nothing verified
                shutil.rmtree(self.directory)
            os.rename(old, self.directory)

    def _ours(self, candidate: str) -> bool:
        """Whether ``candidate`` is a private directory of this user whose head names this
        ledger's origin."""
        try:
            st = os.lstat(candidate)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
            with open(os.path.join(candidate, "head.json"), "rb") as handle:
                return TreeHead.from_json(handle.read()).origin == self.origin
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _own_file(self, name: str, st: os.stat_result) -> None:
        """A file of the state is this user's own regular file, which no other user may write:
        one read through a link, or another user's, could be rewritten by them at will (a head
        of a shorter tree lets a rewrite past it pass), as the directory's own check says."""
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise ConfigError(f"{self.directory}/{name} is not a file of this user's own that only it may write "
                              "(a link, another user's file, or one others may write), so it is not trusted; "
                              "run `lineage-ledger reset-trust` and verify again")

    def _read_head(self) -> TreeHead | None:
        for _ in range(20):
            try:
                return self._read_head_once()
            except _StateMoved:
                continue  # read again: the state there now, or none
        return self._read_head_once(moved_is_damage=True)

    def _read_head_once(self, moved_is_damage: bool = False) -> TreeHead | None:
        try:
            fd = os.open(os.path.join(self.directory, "head.json"), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:  # a link in its place
                self._own_file("head.json", os.lstat(os.path.join(self.directory, "head.json")))
            raise ConfigError(f"{self.directory}/head.json is unreadable ({err.strerror}); "
                              "run `lineage-ledger reset-trust` and verify again") from err
        try:
            with open(fd, "rb") as handle:
                opened = os.fstat(handle.fileno())
                self._own_file("head.json", opened)
                head = TreeHead.from_json(handle.read())
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{self.directory}/head.json is unreadable ({err}); "
                              "run `lineage-ledger reset-trust` and verify again") from err
        try:
            self._check_files(head)
        except ConfigError:
            # The files the head covers are gone because the state itself moved away since the
            # head was read (reset-trust renames it aside; tests/test_attack_s48.py): a state
            # that changed, read again, not a damaged one.
            try:
                there = os.lstat(os.path.join(self.directory, "head.json"))
                moved = (there.st_dev, there.st_ino) != (opened.st_dev, opened.st_ino)
            except FileNotFoundError:
                moved = True
            if moved and not moved_is_damage:
                raise _StateMoved from None
            raise
        if head.origin != self.origin:
            raise HistoryRewritten(
                f"{self.identity}: this ledger's origin is {self.origin!r}, but the ledger verified "
                f"here before was {head.origin!r}: it was replaced. If that was deliberate, run "
                "`lineage-ledger reset-trust` and verify it again"
            )
        return head

    def _check_files(self, head: TreeHead) -> None:
        """The node and block files hold at least what ``head`` covers (they only grow, and
        the head is written after them): one cut short is a damaged state, named as such,
        not a ledger blamed for a node that reads short."""
        for name, size in _covered(head).items():
            try:
                st = os.lstat(os.path.join(self.directory, name))
                self._own_file(name, st)
                have = st.st_size
            except FileNotFoundError:
                have = 0
            if have < size:
                raise ConfigError(f"{self.directory}/{name} is cut short ({have} of the {size} bytes its head "
                                  "covers); run `lineage-ledger reset-trust` and verify again")

    @staticmethod
    def directory_for(identity: str, base: str | None = None) -> str:
        return os.path.join(base or state_root(), blake3(identity.encode()).hexdigest()[:32])

    @classmethod
    def at(cls, directory: str, origin: str, head: TreeHead) -> TrustStore:
        """Read-only view of a tree being built in ``directory`` (its head not yet written)."""
        view = cls.__new__(cls)
        view.identity, view.origin, view.directory = "", origin, directory
        view.lock_path = directory + ".lock"
        view._maps = {}
        view._names_maps = {}
        view._names_held = 0
        view.head = head
        return view

    def reload(self) -> TreeHead | None:
        for _ in range(20):
            head = self._read_head()
            if head == self.head:
                return head
            self._maps.clear()  # files grew: map them again
            if head is not None:
                try:
                    self._map_covered(head)
                except FileNotFoundError:
                    self._maps.clear()
                    continue  # the state moved away after its head was read: read it again
            self.head = head
            # The root the head states is the one its kept nodes give (O(log n) of them): an
            # edited or damaged head is never published (checkpoint) nor trusted.
            if head is not None and self.root_at(head.size) != head.root:
                self.head = None
                raise ConfigError(f"{self.directory}/head.json states a root its kept nodes do not give; "
                                  "run `lineage-ledger reset-trust` and verify again")
            return head
        raise ConfigError(f"{self.directory} kept being reset or moved while this command read it; "
                          "run the command again")

    def _open_lock(self) -> int:
        """The lock file beside the directory, opened (made, private, where there is none)."""
        path = self.lock_path
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:  # a link in its place (ELOOP), a full or read-only disk
            raise ConfigError(f"cannot take the lock {path}: {err.strerror}; if it is a link or not "
                              "this user's file, run `lineage-ledger reset-trust` and verify again") from err

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive while a writer extends or replaces the tree (readers need no lock).

        The lock is a file beside the directory, which nothing renames: a lock inside the
        directory moved with each swap of :meth:`adopt`, and a process that opened it between
        the swap's renames found no directory (two workflows' first audits at once failed with
        exit 2, tests/test_parsl_deployed_ledgers.py) or made a lock of its own there, and two
        writers then each held one. One removed by hand while held is taken again."""
        for _ in range(100):
            fd = self._open_lock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _is_file_at(fd, self.lock_path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # removed or replaced while we waited: the lock is the file there now
        else:
            raise ConfigError(f"cannot take the lock {self.lock_path}: it was replaced again and again; is "
                              "another process removing it? (run `lineage-ledger reset-trust` and verify again)")
        try:
            # What an adopt killed between its renames set aside, put back before anything
            # reads the head under this lock (else an audit now would start as a first one).
            self._restore_interrupted()
            yield
        finally:
            os.close(fd)

    def writer(self) -> TreeWriter:
        return TreeWriter(self.directory, self.head, self.origin)

    def fresh_writer(self) -> TreeWriter:
        """A writer into an empty directory beside this one; :meth:`adopt` swaps it in. Call
        under :meth:`locked`: what an audit of this ledger killed before adopting left beside
        it (its tree and a copy of the names, about 110 MB at a million records) is removed
        first; another ledger's are not this one's to touch."""
        parent, prefix = os.path.dirname(self.directory), f".audit-{os.path.basename(self.directory)}-"
        with os.scandir(parent) as entries:
            left = [e.path for e in entries if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)]
        for path in left:
            shutil.rmtree(path, ignore_errors=True)
        fresh = tempfile.mkdtemp(dir=parent, prefix=prefix)
        return TreeWriter(fresh, None, self.origin)

    def adopt(self, writer: TreeWriter) -> None:
        """Replace this ledger's state with what ``writer`` built (call under :meth:`locked`).

        One atomic exchange of the two directories where the file system has it (Linux's
        ``renameat2(RENAME_EXCHANGE)``: ext4, XFS, Btrfs, tmpfs), so that a reader, which takes
        no lock, finds the old state or the new one and never none. Elsewhere (NFS) two
        renames; a reader between them waits in :meth:`_settle`, and one killed between
        them is put back by the next writer."""
        try:
            exchanged = _exchange(writer.directory, self.directory)
        except FileNotFoundError:  # nothing there (removed by hand): the new state is all
            exchanged = False
        if exchanged:  # the old state is where the new one was built
            shutil.rmtree(writer.directory, ignore_errors=True)
        else:
            old = self.directory + ".old"
            shutil.rmtree(old, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.directory, old)
            os.rename(writer.directory, self.directory)
            shutil.rmtree(old, ignore_errors=True)
        self.reload()

    def forget(self) -> TreeHead | None:
        """Drop the remembered head (after a deliberate restore); returns what was dropped."""
        head = self.head
        with self.locked():
            for name in os.listdir(self.directory):
                os.unlink(os.path.join(self.directory, name))
        self.reload()
        return head

    # -- reading nodes (no lock: files only grow, the head bounds what is valid) -------------
    def _map_covered(self, head: TreeHead) -> None:
        """Map every node file and the block starts that ``head`` covers, as it is read: a
        map outlives the file's removal, so a reset-trust that moves the state away and
        removes it later in this command (after an audit let the lock go) leaves this
        process the state it read, instead of a file not found half-way through
        (tests/test_attack_s48.py). About twenty files at a million records."""
        for name in _covered(head):
            self._map(name)

    def _map(self, name: str) -> mmap.mmap | bytes:
        cached = self._maps.get(name)
        if cached is None:
            with open(os.path.join(self.directory, name), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                data: mmap.mmap | bytes = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            cached = (size, data)
            self._maps[name] = cached
        return cached[1]

    def node(self, level: int, index: int) -> bytes:
        """The hash of the perfect subtree at ``level`` covering leaves ``index << level`` on."""
        head = self.head
        if head is None or index < 0 or (index + 1) << level > head.size:
            raise IndexError(f"no complete node ({level}, {index}) in a tree of {head.size if head else 0}")
        data = self._map(_LEVEL_FILES[level] if level < len(_LEVEL_FILES) else f"level-{level:02d}.bin")
        start = index * _NODE
        return bytes(data[start : start + _NODE])

    def leaf(self, index: int) -> bytes:
        return self.node(0, index)

    def find_leaf(self, leaf: bytes) -> int | None:
        """The index of the verified leaf ``leaf``, or None: a scan of the leaves (32 bytes a
        record, mapped), for a record the store has no row for."""
        head = self.head
        if head is None or not head.size or len(leaf) != _NODE:
            return None
        data = self._map(_LEVEL_FILES[0])
        end, at = head.size * _NODE, data.find(leaf)
        while 0 <= at < end:
            if at % _NODE == 0:
                return at // _NODE
            at = data.find(leaf, at + 1)
        return None

    def block_start(self, height: int) -> int:
        """The leaf index of block ``height``'s first record (``size`` for ``height == blocks``)."""
        head = self.head
        assert head is not None
        if height == head.blocks:
            return head.size
        if not 0 <= height < head.blocks:
            raise IndexError(f"block {height} is not in the verified tree ({head.blocks} blocks)")
        data = self._map("starts.bin")
        return _STARTS.unpack_from(data, height * _STARTS.size)[0]

    def place(self, index: int) -> tuple[int, int]:
        """(block height, position) of leaf ``index``: a binary search of the block starts."""
        head = self.head
        assert head is not None and 0 <= index < head.size
        low, high = 0, head.blocks - 1
        data = self._map("starts.bin")
        unpack = _STARTS.unpack_from
        while low < high:  # the last block whose start is <= index
            middle = (low + high + 1) // 2
            if unpack(data, middle * _STARTS.size)[0] <= index:
                low = middle
            else:
                high = middle - 1
        return low, index - unpack(data, low * _STARTS.size)[0]

    def names(self, path: str) -> list[Candidate] | None:
        """The records that may name ``path`` (see :mod:`.names`), past this head too: for
        each role, the latest verified record that names it is among them, or a later one
        that does. Some may not name it (a hash collision): callers prove and read each
        before believing it. None where this tree keeps no names: refresh() audits such a
        tree first, so only a tree verified under ``LINEAGE_AUDIT_NAMES=0`` (a benchmark's)
        is read without them."""
        found = self.names_many([path])
        return None if found is None else found[path]

    def names_many(self, paths: Sequence[str]) -> dict[str, list[Candidate]] | None:
        """:meth:`names` of each of ``paths``, each file they fall in looked at once."""
        head = self.head
        if head is None or head.names != NAMES_FORMAT:
            return None
        paths = list(paths)
        keys = path_keys(paths)
        by_file: dict[int, list[int]] = {}  # bucket -> the places in paths of its keys
        for at, bucket in enumerate(map(bucket_of, keys)):
            by_file.setdefault(bucket, []).append(at)
        found: dict[str, list[Candidate]] = {}
        for bucket, places in by_file.items():
            data = self._names_file(bucket_name(bucket))
            # Past the head too: a reader that finds entries there knows its head is behind
            # what another process kept (see complete.StaleNames).
            listed = candidates_of(data, {keys[at] for at in places}, 1 << 62) if data else {}
            for at in places:
                found[paths[at]] = listed[keys[at]].copy() if data else []  # a list a path: a caller may change it
        return found

    def _names_file(self, name: str) -> bytes:
        # Checked against the file on every look-up, not only when the head changes: another
        # process may have appended to it or replaced it (a compaction) since it was read,
        # and bytes kept from before would lack what this head's records named.
        try:
            st = os.lstat(os.path.join(self.directory, name))
        except FileNotFoundError:
            return b""
        self._own_file(name, st)
        cached = self._names_maps.get(name)
        if cached is None or cached[0] != (st.st_ino, st.st_size):
            with open(os.path.join(self.directory, name), "rb") as handle:
                opened = os.fstat(handle.fileno())
                data = handle.read()
            # Read, not mapped (a map holds a file descriptor, and a verification of thousands
            # of files touches all 1,024 files), and kept up to a budget: 50 KB a file at 1M records.
            self._names_held += len(data) - (len(cached[1]) if cached else 0)
            if self._names_held > _NAMES_HELD:
                self._names_maps.clear()
                self._names_held = len(data)
            cached = self._names_maps[name] = ((opened.st_ino, opened.st_size), data)
        return cached[1]

    def root_at(self, size: int) -> str:
        """The root of the first ``size`` leaves, from O(log n) stored nodes."""
        digest: bytes | None = None
        level = 0
        while size >> level:
            if (size >> level) & 1:
                node = self.node(level, (size >> level) - 1)
                digest = node if digest is None else blake3(b"\x01" + node + digest).digest()
            level += 1
        return (digest or _EMPTY).hex()
