"""The full audit's check that no record appears twice in the chain, in bounded memory.

A record's place is its leaf in the log tree, and readers find a record by its id: the same
record appended twice (a replayed block) would give one id two places. The block checks
(:mod:`.chain`) refuse a repeat inside a block; this check covers the whole ledger. It takes
the record ids of the ranges in ledger order, as the workers or the sequential audit verified
them, and answers once at the end (:meth:`IdDedup.duplicates`). Memory stays bounded
whatever the ledger's size (``docs/verification.md``, "The full audit"):

* up to :data:`BLOOM_RECORDS` records, a Bloom filter of 64 bits a record (16 MiB at most,
  so that ten workers and the parent stay under the audit's 512 MiB), with two probes taken
  from each leaf hash; its rare suspects (a few a million) are then looked
  up exactly by the caller. About 1 us a record as the ranges arrive and nothing after them,
  which matters where ten workers finish a million records in a few seconds.
* above it, every id goes into one table of a scratch SQLite database in the audit's own new
  state directory (private, removed with it), appended in C from each range's packed ids; at
  the end one ``GROUP BY ... HAVING count(*) > 1`` sorts them on disk. Exact, with SQLite's
  few MiB of page cache and sorter in memory: 0.6 us a record as they arrive and about 1 us a
  record at the end (measured at 1M and 4M records). A Bloom filter sized for ten million
  records would hold 80 MB, and its suspects grow with the ledger.

``LINEAGE_AUDIT_BLOOM_MAX`` moves the threshold (the tests use ``0`` to run small ledgers
through the scratch table).
"""

from __future__ import annotations

import os
from pathlib import Path

from .found import scratch_table

__all__ = ["BLOOM_RECORDS", "IdDedup"]

BLOOM_RECORDS = 2_000_000  # 64 bits a record: 16 MiB of filter at most

# The ids of a range arrive as one buffer of 32 bytes each; a recursive query cuts it into
# rows inside SQLite, a tenth of the cost of an executemany() of Python slices.
_APPEND = """INSERT INTO ids (id) WITH RECURSIVE at(i) AS (SELECT 0 WHERE ?2 > 0
  UNION ALL SELECT i + 32 FROM at WHERE i + 32 < ?2) SELECT substr(?1, i + 1, 32) FROM at"""


class IdDedup:
    """Record ids in, duplicates (hex ids) out; :meth:`close` in every case."""

    def __init__(self, expected: int, scratch: str | os.PathLike[str]) -> None:
        limit = os.environ.get("LINEAGE_AUDIT_BLOOM_MAX", "").strip()
        most = int(limit) if limit.isdigit() else BLOOM_RECORDS
        bloom = 0 < most and expected <= most  # 0: never (the tests' way to the table)
        self._bloom = _Bloom(expected) if bloom else None
        self._table = None if bloom else _Table(Path(scratch) / "dedup.db")
        self._suspects: list[str] = []

    def add(self, ids: bytes, leaves: bytes) -> None:
        """A range's record ids and their leaf hashes, each 32 raw bytes a record, in order."""
        if self._bloom is not None:
            for i in self._bloom.seen(leaves):
                self._suspects.append(ids[i * 32 : i * 32 + 32].hex())
        else:
            assert self._table is not None
            self._table.add(ids)

    @property
    def exact(self) -> bool:
        """Whether :meth:`duplicates` are certain (else suspects, to be looked up)."""
        return self._table is not None

    def duplicates(self) -> list[str]:
        """Ids seen more than once (exact), or the Bloom filter's suspects (see :attr:`exact`)."""
        if self._table is not None:
            return self._table.repeated()
        return self._suspects

    def close(self) -> None:
        if self._table is not None:
            self._table.close()
            self._table = None

    def __enter__(self) -> IdDedup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Bloom:
    """64 bits a record, two probes: a leaf's first two 8-byte words (leaves are hashes)."""

    def __init__(self, expected: int) -> None:
        self.bits = max(1 << 23, expected * 64)
        self.table = bytearray(self.bits // 8 + 1)

    def seen(self, leaves: bytes) -> list[int]:
        """Add the leaves; the positions of those whose probes were all set already."""
        table, bits = self.table, self.bits
        seen = []
        # The probes are read in C for the whole buffer: half the time of slicing each leaf.
        words = memoryview(leaves).cast("Q")
        for i, (a, b) in enumerate(zip(words[0::4].tolist(), words[1::4].tolist(), strict=True)):
            a %= bits
            b %= bits
            ma, mb = 1 << (a & 7), 1 << (b & 7)
            a >>= 3
            b >>= 3
            if table[a] & ma and table[b] & mb:
                seen.append(i)
            table[a] |= ma
            table[b] |= mb
        return seen


class _Table:
    """The ids appended to a scratch table, sorted once at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # In the audit's new private state directory: a crash leaves only what that
        # directory's removal takes away.
        self.conn = scratch_table(str(path), "ids (id BLOB NOT NULL)")

    def add(self, ids: bytes) -> None:
        self.conn.execute(_APPEND, (ids, len(ids)))

    def repeated(self) -> list[str]:
        rows = self.conn.execute("SELECT id FROM ids GROUP BY id HAVING count(*) > 1 LIMIT 100").fetchall()
        return [bytes(row[0]).hex() for row in rows]

    def close(self) -> None:
        self.conn.close()
        self.path.unlink(missing_ok=True)
