"""The executor wrapper: any Parsl executor, recording every task try it runs.

Delegation does not work for Parsl: the DataFlowKernel hands ``BlockProviderExecutor``
instances to its job-status poller, which scales blocks through their provider, reads
``outstanding`` and ``status_facade``, and marks bad blocks. A delegating wrapper is not
such an instance, so ``HighThroughputExecutor`` is never scaled and the run hangs. The
wrapper is therefore a subclass made on the fly for the inner executor's class, taking
over the inner object's state: everything Parsl touches (label, provider, status
polling, scaling, monitoring radio, storage_access) is the inner class's own code.
Only ``submit`` and ``shutdown`` are extended.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import CancelledError, Future
from typing import Any

from parsl.app.errors import RemoteExceptionWrapper
from parsl.executors.base import ParslExecutor

from lineage_ledger import ConfigError, utcnow

from ._session import ParslLedger
from ._staging import WorkerDigests, worker_hashing_used
from ._tasks import calling_task_record, stream_paths
from ._values import result_digest

__all__ = ["LedgerExecutorMixin", "wrap_executor"]

log = logging.getLogger("lineage_ledger.parsl")

_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


class LedgerExecutorMixin:
    """Placed before the inner executor's class in the wrapper's MRO."""

    _lineage_ledger: ParslLedger
    run_id: str | None
    label: str

    def submit(self, func: Any, resource_specification: dict, *args: Any, **kwargs: Any) -> Future:
        task = calling_task_record()
        started = utcnow()
        future: Future = super().submit(func, resource_specification, *args, **kwargs)  # type: ignore[misc]
        try:
            try_ = _Try(self._lineage_ledger, task, func, args, kwargs, started, self.run_id)
            # Digests come back with the result when the worker hashes; Parsl must see the bare result.
            return try_.relayed(future, unwrap=worker_hashing_used(task["func"] if task is not None else func))
        except Exception:  # noqa: BLE001 - recording must never break the workflow
            log.exception("lineage-ledger: could not watch a task try; it runs unrecorded")
        return future

    def start(self, *args: Any, **kwargs: Any) -> Any:
        started = super().start(*args, **kwargs)  # type: ignore[misc]
        # Open the ledger (and replay a crashed run's spool) now, not on the first result.
        try:
            self._lineage_ledger.open()
        except Exception as err:  # noqa: BLE001 - each try will log why it is not recorded
            log.error("lineage-ledger: cannot open the ledger; tries will not be recorded: %s", err)
        return started

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().shutdown(*args, **kwargs)  # type: ignore[misc]
        finally:
            # A bounded wait for the back-end (the records are in the spool already); if it
            # does not take them in time, the ledger says once where they wait.
            self._lineage_ledger.close()


class _Try:
    """One try in flight; turns its outcome into a TaskRun on the thread that completes it."""

    __slots__ = ("ledger", "task", "func", "args", "kwargs", "started", "run_id")

    def __init__(self, ledger, task, func, args, kwargs, started, run_id) -> None:
        self.ledger, self.task, self.func = ledger, task, func
        self.args, self.kwargs, self.started, self.run_id = args, kwargs, started, run_id

    def finished(self, future: Future, known: dict | None = None) -> None:
        # Runs on Parsl's result thread (or the worker thread for ThreadPoolExecutor):
        # only cheap bookkeeping here; hashing happens in the recording process (or, with
        # record_in="thread", on the capture's worker).
        try:
            status, extra, value = _outcome(future)
            if status == "succeeded" and self.task is not None:
                digest = result_digest(self.task, value)  # the checkpoint entry Parsl will write of it
                if digest is not None:
                    extra["memo_result"] = digest
            logs = stream_paths(self.kwargs)
            if logs:  # written by this try, though not recorded: a reader must not find them changed
                self.ledger.produced(logs)
            if known:
                extra["hashed_on"] = "worker"
            run = self.ledger.task_run(
                self.task, self.func, self.args, self.kwargs, status=status, started=self.started,
                run_id=self.run_id, known=known, extra=extra,
            )
            self.ledger.submit(run)
        except Exception:  # noqa: BLE001
            log.exception("lineage-ledger: could not record a task try")

    def relayed(self, inner: Future, *, unwrap: bool) -> Future:
        """The future Parsl watches: done as ``inner`` is, once this try's report is handed
        over. Parsl completes the AppFuture and launches the tries that depend on it from
        its callback. On ``inner`` itself, a try that ended between ``submit`` and Parsl
        adding that callback ran ours on the worker's thread and Parsl's at once on its own:
        ``result()`` could return before the ledger had the report (a flush right after
        missed it), and a dependent's pre-launch check not know that its input was produced
        in this run. ``unwrap``: the result carries the worker's digests, which Parsl must
        not see."""
        outer: Future = Future()
        if hasattr(inner, "parsl_executor_task_id"):
            outer.parsl_executor_task_id = inner.parsl_executor_task_id  # type: ignore[attr-defined]

        def relay(done: Future) -> None:
            if done.cancelled():
                self.finished(done)
                outer.cancel()
                return
            error = done.exception()
            if error is not None:
                self.finished(done)
                outer.set_exception(error)
                return
            value = done.result()
            if unwrap and isinstance(value, WorkerDigests):
                value, known = value.result, value.digests
                self.finished(_settled(value), known)
            else:
                self.finished(done)
            outer.set_result(value)

        inner.add_done_callback(relay)
        return outer


def _settled(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _outcome(future: Future) -> tuple[str, dict[str, Any], Any]:
    # One result() call: each Future method takes the future's lock, on Parsl's thread.
    try:
        value = future.result()
    except CancelledError:
        return "failed", {"error": "cancelled"}, None
    except BaseException as error:  # noqa: BLE001 - the app's failure, recorded as such
        return "failed", {"error": f"{type(error).__name__}: {error}"[:2000]}, None
    if isinstance(value, RemoteExceptionWrapper):
        return "failed", {"error": f"{value.e_type.__name__}: {value.e_value}"[:2000]}, None
    return "succeeded", {}, value


def _wrapper_class(cls: type) -> type:
    with _classes_lock:
        made = _classes.get(cls)
        if made is None:
            made = type(f"Ledger{cls.__name__}", (LedgerExecutorMixin, cls), {"__module__": __name__})
            _classes[cls] = made
        return made


def wrap_executor(executor: ParslExecutor, ledger: ParslLedger) -> ParslExecutor:
    """A new executor of a subclass of ``type(executor)`` that records every try in ``ledger``.

    It takes over ``executor``'s state, so wrap before the DataFlowKernel starts it and use
    only the returned object afterwards. It stays a ``BlockProviderExecutor`` (scaled,
    polled, monitored by Parsl as usual) when ``executor`` is one.
    """
    if isinstance(executor, LedgerExecutorMixin):
        raise ConfigError(f"executor {executor.label!r} already records to a ledger")
    if not isinstance(executor, ParslExecutor):
        raise ConfigError(f"not a Parsl executor: {executor!r}")
    cls = _wrapper_class(type(executor))
    wrapped: Any = object.__new__(cls)
    wrapped.__dict__.update(executor.__dict__)
    wrapped._lineage_ledger = ledger
    return wrapped
