"""``memory://name``: an in-process store for tests; stores of one name are shared.

Also the store behind :meth:`Ledger.snapshot`, which loads a verified chain once so that
a whole-ledger audit answers its queries from dictionaries instead of the back-end.
"""

from __future__ import annotations

import threading
from collections import defaultdict
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
        # (role, path) and (role, digest) -> places, in ledger order
        self.by_path: defaultdict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        self.by_digest: defaultdict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        self.by_run: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)

    def index(self, block: StoredBlock) -> None:
        for position, record in enumerate(block.records):
            place = (block.height, position)
            self.where[record.id] = place
            self.by_run[record.run_id].append(place)
            for role, pairs in (("in", record.inputs), ("out", record.outputs)):
                for path, digest in pairs:
                    self.by_path[(role, path)].append(place)
                    self.by_digest[(role, digest)].append(place)
        self.blocks.append(block)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class MemoryBackend(Backend):
    shared_between_processes = False

    def __init__(self, url: str, *, private: bool = False) -> None:
        super().__init__(url)
        if private:
            self._store = _Store()
            return
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
                store.index(block)

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

    def record_count(self) -> int:
        return len(self._store.where)

    def known(self, record_ids: Iterable[str]) -> set[str]:
        where = self._store.where
        return {i for i in record_ids if i in where}

    def _at(self, places: Iterable[tuple[int, int]]) -> list[Located]:
        blocks = self._store.blocks
        return [Located(h, p, blocks[h].records[p]) for h, p in sorted(set(places))]

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        store = self._store
        with store.lock:
            if path is not None:
                places = store.by_path.get((role, path), [])
                found = self._at(places)
                if digest is not None:
                    side = "inputs" if role == "in" else "outputs"
                    found = [f for f in found if (path, digest) in getattr(f.record, side)]
                return found
            if digest is not None:
                return self._at(store.by_digest.get((role, digest), []))
            return self._at(p for (r, _), places in store.by_path.items() if r == role for p in places)

    def by_run(self, run_id: str) -> list[Located]:
        with self._store.lock:
            return self._at(self._store.by_run.get(run_id, []))

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        with self._store.lock:
            return self._at(p for i, p in self._store.where.items() if i.startswith(prefix))[:limit]
