"""Digests of files already hashed in this deployment, reused while a file is provably unchanged.

A DAG's intermediate file is hashed when its producer finishes (as an output), and again
when each consumer starts (as an input, before the task can change it). Between the two
nothing may have touched it, and a stat proves that: the digest is reused when the file's
signature (size, mtime_ns, ctime_ns, inode) is the one it had when it was hashed. ctime is
in the signature because ``touch -r`` can restore an edited file's mtime but nothing a user
runs can restore its ctime; the inode catches a file replaced by a rename.

Supervised task processes are separate processes, so a memo of a file of at least
:data:`MEMO_MIN_SIZE` bytes is also written beside the ledger's spool (one small JSON file
per path, replaced atomically). Smaller files are rehashed: on this kind of disk creating a
file costs about what hashing a megabyte does. The memo is a cache, never evidence: the
pre-run check (``check_before_run``) always reads the files.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from typing import Any

from blake3 import blake3

from lineage_ledger import hash_file, normalize_path

log = logging.getLogger("lineage_ledger.airflow")

MEMO_MIN_SIZE = 1 << 20

Signature = tuple[int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class DigestMemo:
    """``{path: (signature, blake3)}`` in memory, and on disk for files worth it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Signature, str]] = {}
        self._directory_ready = False
        self.hits = 0  # digests reused (tests and the benchmark read this)

    def _file(self, path: str) -> str:
        return os.path.join(self.directory, blake3(path.encode("utf-8", "surrogateescape")).hexdigest()[:40])

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The digest of ``path`` if it was hashed with exactly this signature, else None."""
        with self._lock:
            entry = self._entries.get(path)
        if entry is None and st.st_size >= MEMO_MIN_SIZE:
            entry = self._read(path)
        if entry is None or entry[0] != signature(st):
            return None
        self.hits += 1
        return entry[1]

    def remember(self, path: str, sig: Signature, digest: str) -> None:
        with self._lock:
            if self._entries.get(path) == (sig, digest):
                return
            self._entries[path] = (sig, digest)
        if sig[0] >= MEMO_MIN_SIZE:
            self._write(path, sig, digest)

    def hash(self, path: str) -> dict[str, Any]:
        """``{"blake3", "size"}`` of ``path``: reused if unchanged since it was hashed, else read.

        Raises what :func:`lineage_ledger.hash_file` raises for a missing or unreadable file.
        """
        path = normalize_path(path)
        try:
            before = os.stat(path)
        except OSError:
            return hash_file(path).entry()  # raises the ArtifactError that names the problem
        if stat.S_ISDIR(before.st_mode):
            # A directory's own stat does not change when a file in it is rewritten: its
            # manifest is hashed every time (the core's stat cache keeps that cheap).
            return hash_file(path).entry()
        digest = self.lookup(path, before)
        if digest is not None:
            return {"blake3": digest, "size": before.st_size}
        artifact = hash_file(path)
        try:
            after = os.stat(path)
        except OSError:
            return artifact.entry()
        # Only a digest read between two identical stats describes that signature.
        if signature(after) == signature(before) and artifact.size == after.st_size:
            self.remember(path, signature(after), artifact.blake3)
        return artifact.entry()

    def _read(self, path: str) -> tuple[Signature, str] | None:
        try:
            with open(self._file(path), "rb") as handle:
                data = json.loads(handle.read())
            if data.get("path") != path:  # a prefix collision: not this file's memo
                return None
            sig = (int(data["size"]), int(data["mtime_ns"]), int(data["ctime_ns"]), int(data["ino"]))
            digest = str(data["blake3"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # absent, torn or foreign: hash the file instead
        with self._lock:
            self._entries[path] = (sig, digest)
        return sig, digest

    def _write(self, path: str, sig: Signature, digest: str) -> None:
        target = self._file(path)
        temporary = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
        data = {"path": path, "size": sig[0], "mtime_ns": sig[1], "ctime_ns": sig[2], "ino": sig[3], "blake3": digest}
        try:
            if not self._directory_ready:
                os.makedirs(self.directory, exist_ok=True)
                self._directory_ready = True
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(data))
            os.replace(temporary, target)  # readers see the old memo or the new one, never half
        except OSError as err:
            log.debug("lineage-ledger: cannot keep the digest memo of %s: %s", path, err)
            try:
                os.unlink(temporary)
            except OSError:
                pass
