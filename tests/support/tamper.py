"""Tampering as the engine tests do it: a file edited so that no engine notices, and the
index rows naming it deleted behind the ledger's back."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def tamper_keep_size_and_mtime(path: Path) -> None:
    """Change the last character before the final newline, in place, and put the mtime back:
    an engine that keys on a file's path, size or mtime sees nothing."""
    stat = path.stat()
    content = bytearray(path.read_bytes())
    content[-2] = ord("8") if content[-2] != ord("8") else ord("9")
    with open(path, "r+b") as handle:
        handle.write(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size


def delete_rows(db: Path, path: Path) -> int:
    """Delete every index row naming ``path``; how many there were (at least one)."""
    with sqlite3.connect(db) as conn:
        deleted = conn.execute("DELETE FROM ll_artifacts WHERE path = ?", (str(path),)).rowcount
    assert deleted, f"no index row named {path}: nothing to hide"
    return deleted
