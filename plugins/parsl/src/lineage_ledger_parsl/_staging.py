"""Hashing on the worker, for workers that do not share the submit side's file system.

Parsl's own data providers change a task by wrapping its function (``replace_task`` for
stage-in, ``replace_task_stage_out`` for stage-out); this provider does the same for
``file://`` Files, and the wrapper hashes each file where the task runs: inputs before
the app starts, outputs after it returns. The digests travel back with the result in a
:class:`WorkerDigests`, which the executor wrapper unpacks before Parsl sees the result.

Put it first in ``storage_access`` of an executor wrapped with ``ParslLedger.wrap``::

    HighThroughputExecutor(storage_access=[WorkerHashingStaging()], ...)

Files stay where they are, as with Parsl's default ``NoOpFileStaging``; combine it with a
provider that moves files if the worker needs a copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parsl.data_provider.files import File
from parsl.data_provider.staging import Staging
from parsl.utils import RepresentationMixin

__all__ = ["WorkerDigests", "WorkerHashingStaging", "worker_hashing_used"]

_MARK = "__lineage_ledger_worker_hashing__"


@dataclass
class WorkerDigests:
    """An app's result with the digests of its files as the worker saw them."""

    result: Any
    digests: dict[str, dict[str, Any]] = field(default_factory=dict)


class WorkerHashingStaging(Staging, RepresentationMixin):
    """Hash every local ``File`` of a task on the worker that runs it."""

    def can_stage_in(self, file: File) -> bool:
        return file.scheme == "file"

    def can_stage_out(self, file: File) -> bool:
        return file.scheme == "file"

    def replace_task(self, dm: Any, executor: str, file: File, func: Callable) -> Callable:
        return _hashing_wrapper(func, file.url, before=True)

    def replace_task_stage_out(self, dm: Any, executor: str, file: File, func: Callable) -> Callable:
        return _hashing_wrapper(func, file.url, before=False)


def worker_hashing_used(func: Any) -> bool:
    return bool(getattr(func, _MARK, False))


def _hashing_wrapper(func: Callable, url: str, *, before: bool) -> Callable:
    # Each File adds one layer; layers merge their digests into one WorkerDigests.
    @functools.wraps(func)
    def hashing(*args: Any, **kwargs: Any) -> Any:
        digest = _hash(url) if before else None
        value = func(*args, **kwargs)
        if not before:
            digest = _hash(url)
        if not isinstance(value, WorkerDigests):
            value = WorkerDigests(value)
        if digest is not None:
            value.digests.update(digest)
        return value

    setattr(hashing, _MARK, True)
    return hashing


def _hash(url: str) -> dict[str, dict[str, Any]] | None:
    from lineage_ledger import LedgerError, hash_file

    path = File(url).filepath
    try:
        artifact = hash_file(path)
    except (LedgerError, OSError):  # missing or unreadable here: the record will say so
        return None
    # Keyed by the path as the app spelled it: the submit side resolves it the same way.
    return {path: artifact.entry()}
