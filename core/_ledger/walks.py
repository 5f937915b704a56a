"""How lineage walks run: without Python recursion, and with a memo of the versions walked
that a failed walk leaves as it found it.

A walk is written as generators that yield the walks they need (a parent's subtree) and are
sent the result: :func:`run_nested` keeps them on a list instead of Python's call stack, so
a lineage thousands of tasks deep costs memory, not recursion. Trees of several targets
share one memo (:class:`~.lineage.LineageQueries.lineage`); :class:`NotedMemo` notes what one
walk adds to it, for a walk that fails to take out.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

__all__ = ["CONTAINERS", "SUMMARY", "WALKED", "Nested", "NotedMemo", "run_nested"]

# The lineage memo's own entries beside its nodes (which are keyed ``(path, digest)``): keyed by
# these objects, which no record can name. Keyed by words ("walked", "summary"), a record
# that read the relative path "summary" in a version spelled as another record's id had its
# node taken for that record's summary, and verify-lineage crashed (exit 2).
WALKED = object()  # (WALKED, record id): the parents and summary of a record walked
SUMMARY = object()  # (SUMMARY, record id): producer_summary of a record
CONTAINERS = object()  # (CONTAINERS, None): what container_of found for each directory


class NotedMemo:
    """A lineage memo as one walk from the top (:meth:`LineageQueries.lineage`) uses it, noting
    the keys it adds: where the walk fails, they all go. Not only the node whose walk failed:
    a node can complete inside a walk that then fails (in a loop through the ledger, a version
    read again further back reaches the half-built node of the first), and kept, it answered a
    later target OK with a lineage cut short."""

    __slots__ = ("memo", "added")

    def __init__(self, memo: Any) -> None:
        self.memo = memo
        self.added: list[Any] = []

    def __contains__(self, key: Any) -> bool:
        return key in self.memo

    def __getitem__(self, key: Any) -> Any:
        return self.memo[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in self.memo:
            self.added.append(key)
        self.memo[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self.memo.get(key, default)

    def pop(self, key: Any, default: Any = None) -> Any:
        return self.memo.pop(key, default)

    def setdefault(self, key: Any, default: Any) -> Any:
        if key in self.memo:
            return self.memo[key]
        self[key] = default
        return default

    def forget(self) -> None:
        for key in self.added:
            self.memo.pop(key, None)
        self.added.clear()


T = TypeVar("T")
Nested = Generator[Any, Any, T]


def run_nested(walk: Nested[T]) -> T:
    """Run a walk whose nested walks are yielded: each yielded generator runs to its
    return value, which is sent back to the one that yielded it. Depth is only memory."""
    stack: list[Generator[Any, Any, Any]] = [walk]
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                inner = stack[-1].send(value)
            else:  # raised by the walk it had yielded: raised there, as a call would have
                failed, error = error, None
                inner = stack[-1].throw(failed)
        except StopIteration as done:
            stack.pop()
            if not stack:
                return done.value
            value = done.value
            continue
        except BaseException as exc:
            stack.pop()
            if not stack:
                raise
            error = exc
            continue
        stack.append(inner)
        value = None
