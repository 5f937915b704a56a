"""Whether a value reused from Parsl's checkpoint is one a recorded try made.

The pre-run check compares a cache hit's files with the ledger; a value-only app has none,
and what it hands the next task is the value in ``runinfo/NNN/checkpoint/tasks.pkl``. A value
edited there by hand (or damaged), or one that no recorded try made (a checkpoint plain Parsl
wrote), was reused under every policy (tests/test_parsl_deployed_cached_values.py).

So each try that ends with a value Parsl will checkpoint records the BLAKE3 of the entry
Parsl pickles for it (``extra["memo_result"]``: the bytes of ``{"hash", "exception",
"result"}``, as ``BasicMemoizer`` writes them), and each run says beside its checkpoint which
run it was (``_checkpoints.RUN_FILE``). A value loaded from a checkpoint is reused only where
a try (``succeeded``, or a ``cached`` one that was vouched for in turn) of a run that holds
an entry with those very bytes recorded them under the same memo key. The entry's bytes are
compared as they are in the file, before anything else is made of them; nothing is
unpickled for the check. A cached value whose entry was pickled again (a run that reused it
checkpoints it anew) is recorded with the new entry's digest.

The records of a run are read once per DataFlowKernel (``Ledger.run_pages``, each proved), at
the first cache hit from that run's checkpoint. Only tasks whose tries a ledger records are
checked: an executor left unwrapped records nothing that could vouch for its values.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from lineage_ledger import ArtifactMismatch, utcnow

from ._checkpoints import Loaded
from ._tasks import task_files

if TYPE_CHECKING:
    from ._memoizer import LedgerMemoizer

__all__ = ["CachedValues", "entry_digest", "memo_result", "record_join", "result_digest"]

log = logging.getLogger("lineage_ledger.parsl")

_VOUCHING = ("succeeded", "cached")


def entry_digest(memo_hash: str, value: Any) -> str | None:
    """BLAKE3 of the checkpoint entry ``BasicMemoizer`` pickles for ``value`` under
    ``memo_hash`` (the same bytes, in the same process: ``pickle.dump`` to its file writes
    what ``pickle.dumps`` gives); None for a value that does not pickle (Parsl cannot
    checkpoint it either)."""
    try:
        return blake3(pickle.dumps({"hash": memo_hash, "exception": None, "result": value})).hexdigest()
    except Exception:  # noqa: BLE001 - an unpicklable value: nothing to vouch for
        return None


def result_digest(task: Mapping[str, Any], value: Any) -> str | None:
    """``extra["memo_result"]`` of a try of ``task`` that returned ``value``: the digest of the
    entry Parsl will checkpoint, where the DataFlowKernel's memoizer is the ledger's and
    checkpoints (else None: nothing is written that a later run could reuse)."""
    memoizer = getattr(task.get("dfk"), "memoizer", None)
    digest_of = getattr(type(memoizer), "entry_digest", None)
    return digest_of(memoizer, task, value) if digest_of is not None else None


class CachedValues:
    """The values a memoizer loaded from checkpoints, by memo key, and the (key, entry digest)
    pairs each run's records vouch for."""

    def __init__(self, loaded: Mapping[str, Loaded]) -> None:
        self.loaded = dict(loaded)
        self._runs: dict[str, dict[tuple[str, str], set[str | None]]] = {}

    def check(self, memoizer: LedgerMemoizer, task: Mapping[str, Any], cached: Future) -> str | None:
        """Where ``cached`` (the future Parsl's table handed out for ``task``) was loaded from a
        checkpoint, and no recorded try made its entry: under ``strict`` the reuse is refused
        (recorded as refused, raises ``ArtifactMismatch``); else returns what to say of it.
        None where the value is vouched for, made in this run, or not the ledger's to check."""
        entry = self.loaded.get(task.get("hashsum") or "")
        if entry is None or entry.future is not cached or not _recorded_executor(task):
            return None
        ledger = memoizer.ledger
        try:
            if self._vouched(ledger.capture.ledger, task["hashsum"], entry):
                return None
            left = memoizer._left  # the run that made it ended with the ledger locked or down
            if left is not None and left.vouches(task["hashsum"], entry.versions[-1][1]):
                return None
        except Exception as err:  # noqa: BLE001 - a ledger out of reach, or a record it cannot read
            log.error("lineage-ledger: could not tell whether the cached value of task %s (%s) is one a recorded try "
                      "made: %s: %s", task["id"], task["func_name"], type(err).__name__, err)
            if ledger.policy == "strict":
                failed = f"{type(err).__name__}: {err}"[:2000]
                memoizer._record(task, "failed", {"error": failed, "refused_by": "strict", "check_failed": failed})
                raise
            return None
        said = (f"its return value in Parsl's checkpoint {entry.folder} is not one a recorded try of it made "
                "(edited or damaged since, or checkpointed without the ledger)")
        if ledger.policy == "strict":
            refusal = ArtifactMismatch(
                f"lineage-ledger refuses to reuse the cached result of task {task['id']} ({task['func_name']}): "
                f"{said}. Run it again with policy rerun, or remove Parsl's checkpoint of it", path=entry.folder)
            log.error("%s", refusal)
            memoizer._record(task, "failed", {"error": str(refusal)[:2000], "refused_by": "strict",
                                              "result_not_verified": entry.folder})
            raise refusal
        log.warning("lineage-ledger: task %s (%s): %s; %s", task["id"], task["func_name"], said,
                    "the task runs again" if ledger.policy == "rerun" else "its cached result is reused all the same")
        return entry.folder

    def code_of(self, memoizer: LedgerMemoizer, task: Mapping[str, Any], cached: Future) -> set[str | None]:
        """The code digests of the recorded tries that vouch for ``cached``, a value loaded from
        a checkpoint (see _code_check); empty where none does, or it is not the ledger's to say
        (a value made in this run, a ledger out of reach: :meth:`check` said so)."""
        entry = self.loaded.get(task.get("hashsum") or "")
        if entry is None or entry.future is not cached or not _recorded_executor(task):
            return set()
        try:
            return self._vouching(memoizer.ledger.capture.ledger, task["hashsum"], entry)
        except Exception as err:  # noqa: BLE001 - check() logged and applied the policy to it
            log.debug("lineage-ledger: no code digest for the cached value of task %s: %s", task.get("id"), err)
            return set()

    def _vouched(self, ledger: Any, memo_hash: str, entry: Loaded) -> bool:
        return bool(self._vouching(ledger, memo_hash, entry))

    def _vouching(self, ledger: Any, memo_hash: str, entry: Loaded) -> set[str | None]:
        """The code digests of the recorded tries that made ``entry``'s value (none: not vouched for)."""
        digest = entry.versions[-1][1]
        codes: set[str | None] = set()
        for run_id, made in entry.versions:
            if made == digest and run_id is not None:
                codes |= self._made_in(ledger, run_id).get((memo_hash, digest), set())
        return codes

    def _made_in(self, ledger: Any, run_id: str) -> dict[tuple[str, str], set[str | None]]:
        made = self._runs.get(run_id)
        if made is None:
            made = {}
            for page in ledger.run_pages(run_id):
                for found in page:
                    extra = found.record.extra or {}
                    if found.record.status in _VOUCHING and extra.get("memo_hash") and extra.get("memo_result"):
                        key = (str(extra["memo_hash"]), str(extra["memo_result"]))
                        made.setdefault(key, set()).add(found.record.code_digest)
            self._runs[run_id] = made
        return made


def _recorded_executor(task: Mapping[str, Any]) -> bool:
    """Whether the executor that runs ``task`` records its tries (is wrapped by a ledger)."""
    from ._executor import LedgerExecutorMixin

    if task.get("join"):  # the memoizer records its outer app's end: see record_join
        return True
    executors = getattr(task.get("dfk"), "executors", {})
    return isinstance(executors.get(task.get("executor")), LedgerExecutorMixin)


def memo_result(memoizer: LedgerMemoizer, task: Mapping[str, Any], cached: Future) -> dict[str, Any]:
    """``{"memo_result": digest}`` for a cache hit whose value is vouched for (or was made in
    this run): the entry Parsl checkpoints for it again, which a later run may reuse."""
    digest = memoizer.entry_digest(task, cached.result()) if cached.done() and not cached.exception() else None
    return {"memo_result": digest} if digest else {}


def record_join(memoizer: LedgerMemoizer, task: Mapping[str, Any], value: Any) -> None:
    """A join app ran, and the values of its inner apps are joined: record its outer app, which
    ran on Parsl's internal executor (wrapped by no ledger), as a ``succeeded`` try
    (``extra["join"]``), with the digest of the entry Parsl checkpoints for its value. Its
    ``outputs=`` are the inner apps' to record (their tries wrote them): named in
    ``extra["made_by_inner_apps"]``, not listed. Before, a join app's value reused from the
    checkpoint was checked by nothing (tests/test_parsl_deployed_cached_values.py)."""
    try:
        now = utcnow()
        started = _aware(task.get("try_time_launched")) or _aware(task.get("time_invoked")) or now
        extra: dict[str, Any] = {"join": True}
        digest = memoizer.entry_digest(task, value)
        if digest is not None:
            extra["memo_result"] = digest
        run = memoizer.ledger.task_run(
            task, task["func"], task["args"], task["kwargs"], status="succeeded", started=min(started, now),
            ended=now, run_id=task["dfk"].run_id, extra=extra,
            leave_out=task_files(task["args"], task["kwargs"])[1], left_out_as="made_by_inner_apps")
        memoizer.ledger.submit(run)
    except Exception:  # noqa: BLE001 - recording must never break the workflow
        log.exception("lineage-ledger: could not record join app %s", task.get("id"))


def _aware(moment: Any) -> datetime | None:
    """Parsl's task times are naive local times."""
    return moment.astimezone(timezone.utc) if isinstance(moment, datetime) else None
