"""``memory://name``: an in-process store for tests; stores of one name are shared."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from lineage_ledger._errors import AppendConflict
from lineage_ledger._model import StoredBlock

from ._base import Backend, ChainHead, Located, Role

__all__ = ["MemoryBackend"]


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocks: list[StoredBlock] = []
        self.where: dict[str, tuple[int, int]] = {}  # record id -> (height, position)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class MemoryBackend(Backend):
    shared_between_processes = False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        name = url.split("://", 1)[1] if "://" in url else ""
        with _STORES_LOCK:
            self._store = _STORES.setdefault(name, _Store())

    def append(self, blocks: Sequence[StoredBlock]) -> None:
        store = self._store
        with store.lock:
            staged: list[StoredBlock] = []
            new_ids: set[str] = set()
            for block in blocks:
                if block.height < len(store.blocks):
                    if store.blocks[block.height].id == block.id:
                        continue
                    raise AppendConflict(f"height {block.height} is taken by another block")
                if block.height != len(store.blocks) + len(staged):
                    raise AppendConflict(f"block {block.height} does not follow the head")
                for record in block.records:
                    if record.id in store.where or record.id in new_ids:
                        raise AppendConflict(f"record {record.id[:16]} is already stored")
                    new_ids.add(record.id)
                staged.append(block)
            for block in staged:
                for position, record in enumerate(block.records):
                    store.where[record.id] = (block.height, position)
                store.blocks.append(block)

    def head(self) -> ChainHead | None:
        with self._store.lock:
            if not self._store.blocks:
                return None
            last = self._store.blocks[-1]
            return ChainHead(last.height, last.id)

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        with self._store.lock:
            selected = self._store.blocks[start:stop]
        return iter(selected)

    def known(self, record_ids: Iterable[str]) -> set[str]:
        where = self._store.where
        return {i for i in record_ids if i in where}

    def _scan(self, keep) -> list[Located]:
        with self._store.lock:
            blocks = list(self._store.blocks)
        return [
            Located(block.height, position, record)
            for block in blocks
            for position, record in enumerate(block.records)
            if keep(record)
        ]

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        def keep(record) -> bool:
            pairs = record.inputs if role == "in" else record.outputs
            return any(
                (path is None or p == path) and (digest is None or d == digest) for p, d in pairs
            )

        return self._scan(keep)

    def by_run(self, run_id: str) -> list[Located]:
        return self._scan(lambda record: record.run_id == run_id)

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        return self._scan(lambda record: record.id.startswith(prefix))[:limit]
