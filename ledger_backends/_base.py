"""The thin contract every storage back-end implements.

A back-end stores what the core built and answers indexed look-ups. It never computes
a hash: ids, links and Merkle roots arrive ready-made and are handed back byte for byte,
so that verification can recompute them. Appends are atomic per call and idempotent
(a block already stored under the same id is skipped); a height or record id already
taken by something else raises :class:`~lineage_ledger.AppendConflict`, after which
the core rebuilds its block on the new head.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from lineage_ledger._model import BlockColumns, StoredBlock, StoredRecord

__all__ = ["Backend", "ChainHead", "Located", "Role"]

Role = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class ChainHead:
    height: int
    id: str


@dataclass(frozen=True, slots=True)
class Located:
    """A stored record and where it sits in the ledger (block height, position)."""

    height: int
    position: int
    record: StoredRecord


class Backend(ABC):
    """Base class of storage drivers; subclasses are chosen by URL scheme."""

    #: False where every process has its own store (``memory://``).
    shared_between_processes: ClassVar[bool] = True

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def identity(self) -> str:
        """What names this store, the same however its URL was spelled, with no secret in it.

        The spool directory is keyed by it: records a crash leaves behind must be replayed
        into the same store, never into another one opened from the same directory.
        """
        scheme, _, rest = self.url.partition("://")
        netloc, slash, path = rest.partition("/")
        if "@" in netloc:  # drop a password: the key is written to disk
            user, _, host = netloc.rpartition("@")
            netloc = user.split(":", 1)[0] + "@" + host
        return f"{scheme}://{netloc}{slash}{path}"

    @abstractmethod
    def append(self, blocks: Sequence[StoredBlock]) -> None:
        """Store ``blocks`` (consecutive, on the current head) in one atomic step."""

    @abstractmethod
    def head(self) -> ChainHead | None:
        """The highest block, or ``None`` for an empty ledger."""

    @abstractmethod
    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        """Blocks ``start <= height < stop`` in height order, records in block order."""

    def block_columns(self, start: int = 0, stop: int | None = None) -> Iterator[BlockColumns]:
        """The same blocks as :meth:`blocks`, each as (height, id, header, record ids, record
        bodies): what chain verification reads. Back-ends may override it to skip building
        an object per record; the bytes must be the stored ones, exactly as ``blocks`` gives."""
        for block in self.blocks(start, stop):
            records = block.records
            yield BlockColumns(
                block.height, block.id, block.header, [r.id for r in records], [r.body for r in records]
            )

    @abstractmethod
    def record_count(self) -> int:
        """How many records are stored, in blocks or not (verification compares)."""

    @abstractmethod
    def known(self, record_ids: Iterable[str]) -> set[str]:
        """The subset of ``record_ids`` already stored."""

    @abstractmethod
    def find(
        self, role: Role, *, path: str | None = None, digest: str | None = None
    ) -> list[Located]:
        """Records with an input (``in``) or output (``out``) matching path and/or digest."""

    @abstractmethod
    def by_run(self, run_id: str) -> list[Located]:
        """Records of one workflow run, in ledger order."""

    @abstractmethod
    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        """Records whose id starts with ``prefix`` (at most ``limit``)."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections; the default has nothing to release."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
