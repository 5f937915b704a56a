"""What was derived from a file: the consumers of each version and what they made, page by
page (``depends``). A mixin of :class:`~.ledger.Ledger`, apart from :mod:`.lineage` (what
a file was derived from): every answer comes from the ledger's proved look-ups
(``consumers``, ``listing``), so nothing here reads the store directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._model import is_alias
from .walks import Nested, run_nested

if TYPE_CHECKING:
    from .lineage import LedgerRecord

__all__ = ["MORE_COUNTED", "DerivedQueries", "More", "RecordBits"]


class RecordBits:
    """Proved records, a bit each by their leaf index: the million consumers `depends --all`
    has listed of a file every task read take 125 KB, where their ids took about 150 MiB."""

    __slots__ = ("_bits", "_start")

    def __init__(self, block_start: Callable[[int], int]) -> None:
        self._bits = bytearray()
        self._start = block_start  # a block's first leaf index, from the verified tree

    def _index(self, entry: LedgerRecord) -> int:
        return self._start(entry.height) + entry.position

    def __contains__(self, entry: LedgerRecord) -> bool:
        index = self._index(entry)
        return index >> 3 < len(self._bits) and bool(self._bits[index >> 3] >> (index & 7) & 1)

    def add(self, entry: LedgerRecord) -> None:
        index = self._index(entry)
        if index >> 3 >= len(self._bits):
            self._bits.extend(bytes((index >> 3) + 1 - len(self._bits) + (len(self._bits) >> 1)))
        self._bits[index >> 3] |= 1 << (index & 7)


MORE_COUNTED = 100_000  # consumers left out of a page that derived() counts exactly


class More(int):
    """How many consumers a page of :meth:`LineageQueries.derived` left out; ``exact`` is
    False where there are more than that (it counted :data:`MORE_COUNTED` and stopped)."""

    exact: bool

    def __new__(cls, value: int, *, exact: bool = True) -> More:
        more = super().__new__(cls, value)
        more.exact = exact
        return more

    def __str__(self) -> str:
        return f"{int(self)}" if self.exact else f"more than {int(self) - 1}"


class DerivedQueries:
    """:meth:`derived`, answered from the ledger's proved look-ups."""

    if TYPE_CHECKING:  # the look-ups of Ledger this builds on
        query_path: Callable[[str], str]
        query_paths: Callable[[str], list[str]]
        consumers: Callable[..., list[LedgerRecord]]
        count_consumers: Callable[..., int]
        listing: Callable[..., Any]
        record_bits: Callable[[], RecordBits]

    def derived(self, path: str, digest: str | None = None, _seen: RecordBits | None = None, *,
                limit: int | None = None) -> list[tuple[LedgerRecord, list]]:
        """What was derived from ``path``: [(consumer record, [(its outputs' subtrees)...])].

        With ``limit``, at most that many consumers of each file (oldest first), and a last
        item ``(None, n)`` where ``n`` more were left out (a :class:`More`: ``n.exact`` is
        False where there are more than :data:`MORE_COUNTED`, and ``n`` says one more).
        Walked without Python recursion, as :meth:`lineage` is.
        """
        seen = self.record_bits() if _seen is None else _seen
        if _seen is None:
            keys = self.query_paths(path)
            if len(keys) > 1:
                return self._derived_spellings(keys, digest, seen, limit)
            path = keys[0]
        return run_nested(self._derived(path, digest, seen, limit))

    def _derived_spellings(self, keys: list[str], digest: str | None, seen: RecordBits,
                           limit: int | None) -> list[tuple[LedgerRecord, list]]:
        """:meth:`derived` of a path behind a symbolic link that records name by several
        spellings (:meth:`query_paths`): a task that read it through the link names both, one
        that read it by its real path one. Each spelling's readers, each record once (``seen``),
        oldest first; with ``limit``, the oldest ``limit`` and how many more (a record under
        both spellings may be counted twice in that number)."""
        found: list[tuple[Any, Any]] = []
        more, exact = 0, True
        for key in keys:
            for consumer, children in run_nested(self._derived(key, digest, seen, limit)):
                if consumer is None:
                    more, exact = more + int(children), exact and children.exact
                else:
                    found.append((consumer, children))
        found.sort(key=lambda item: item[0].order)
        if limit and len(found) > limit:
            more += len(found) - limit
            del found[limit:]
        if more:
            found.append((None, More(more, exact=exact)))
        return found

    def _derived(self, path: str, digest: str | None, seen: RecordBits,
                 limit: int | None) -> Nested[list[tuple[LedgerRecord, list]]]:
        # Below the top, each path is a key as its producer's record names it: resolving it on
        # disk again was a fifth of `depends --all`.
        tree: list[tuple[Any, Any]] = []
        # A first page that is not the whole list is checked against the names kept too
        # (the counts, before the index is asked), with the index's count of the rest.
        listing = self.listing("in", path) if limit and digest is None else None
        consumers = self.consumers(path, digest, limit=limit or None, as_key=True)
        for consumer in consumers:
            if consumer in seen:
                continue
            seen.add(consumer)
            children = []
            for out_path, entry in sorted(consumer.record.outputs.items()):
                if not is_alias(entry):
                    children.append((out_path, (yield self._derived(out_path, entry["blake3"], seen, limit))))
            tree.append((consumer, children))
        if limit and len(consumers) == limit:
            # Counted only so far: counting the ten million readers of a reference genome
            # took 0.7 s of a 0.85 s `depends`.
            # Among the records the names were read for: a reader's row moved past the head
            # (out of the page) then no longer counts, and the count falls short of theirs.
            counted = self.count_consumers(path, digest, at_most=limit + MORE_COUNTED + 1, as_key=True,
                                           below=listing.bound if listing is not None else None)
            if listing is not None:
                listing.add(consumers)
                listing.finish_first_page(counted, exact=counted <= limit + MORE_COUNTED)
            if counted > limit:
                tree.append((None, More(counted - limit, exact=counted <= limit + MORE_COUNTED)))
        return tree
