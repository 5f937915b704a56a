"""The memoizer: Parsl's ``BasicMemoizer``, plus a look at the files before launch or reuse.

The DataFlowKernel calls ``check_memo`` on its launch thread right before every try,
whether a cached result will be reused or the task sent to an executor. That is where
the task's ``File`` arguments are compared with the ledger:

* ``warn``: a file changed outside the workflow is logged; the task proceeds as Parsl would.
* ``strict``: the try fails with ``ArtifactMismatch`` naming the files (retries apply).
* ``rerun``: a cached result is ignored and the task runs again, rewriting its outputs.

A check that finds the ledger itself tampered with (an index row that disagrees with its
record, a deleted row, a broken chain: a ``VerificationError``) fails the try under
``strict``, recorded as refused. Under ``rerun`` the task's files count as changed, since
nothing vouched for them: a cached result is ignored and the task runs again (its record,
after the real run, lists the outputs it rewrote, unless it read files the ledger could not
vouch for, see below; ``extra["rerun_because_not_verified"]`` names them).
Under ``warn`` it is logged and the cached result reused, but the try recorded for the
cache hit lists none of the task's files (``extra["not_verified"]``, their digests as they
are on disk under ``extra["not_verified_digests"]``): a record naming them would give an
edit hidden that way a producer that later checks would trust. A task that
runs on such files (a cache miss under ``warn`` or ``rerun``: an edited input changes its
content key, so a hidden edit of a source file is always a miss) is recorded with
``check_failed``; its record lists neither the inputs the ledger could not vouch for nor its
outputs, which were made from them (``not_verified``, ``not_verified_digests``). A ledger
merely out of reach (no back-end, locked) is logged under ``warn`` and ``rerun``, and the
task goes on as Parsl decides.

A cache hit is recorded as a ``cached`` try. Parsl cannot memoize ``File`` arguments
(``id_for_memo`` has no rule for them); here they are keyed by URL, or with
``file_key="content"`` inputs by the BLAKE3 of their bytes, so an edited input is a miss.
Everything else (lookup table, checkpoint files and modes) is ``BasicMemoizer``'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from concurrent.futures import Future
from typing import Any

from parsl.data_provider.files import File
from parsl.dataflow.memoization import BasicMemoizer, Memoizer
from parsl.dataflow.taskrecord import TaskRecord

from lineage_ledger import (
    ArtifactCheck,
    ArtifactMismatch,
    LedgerError,
    VerificationError,
    check_each,
    hash_file,
    normalize_path,
    utcnow,
    verify_before_run,
)

from ._checkpoints import RunSaid, keep_private, start_loading_private
from ._code_check import MADE_BY, MadeBy
from ._ignored import (
    HANDED_DIRECTORIES,
    MadeHere,
    ignored_inputs_changed,
    keep_handed_directories,
    refuse_ignored_outputs,
)
from ._session import ParslLedger
from ._spooled import LeftInSpool, ship_left
from ._stale import outputs_gone, stale_outputs
from ._tasks import STREAMS, file_digest, read_digests, task_files, unverified_digests
from ._unrecordable import changes_key, not_utf8, refuse_unnamed, unnamed
from ._values import CachedValues, entry_digest, memo_result, record_join

__all__ = ["LedgerMemoizer"]

log = logging.getLogger("lineage_ledger.parsl")

_FILE_TAG = "lineage_ledger_parsl.File"


class LedgerMemoizer(Memoizer):
    """``Config(memoizer=LedgerMemoizer(ledger, checkpoint_mode=...))``."""

    def __init__(self, ledger: ParslLedger, *, inner: BasicMemoizer | None = None, **options: Any) -> None:
        if inner is not None and options:
            raise TypeError("give either inner= or BasicMemoizer options, not both")
        self.ledger = ledger
        self.inner = inner if inner is not None else BasicMemoizer(**options)
        self.cache_hits = 0
        self.reruns = 0
        self._said_unnamed = False  # a strict refusal of files the ledger cannot name was logged
        self._left: LeftInSpool | None = None  # records of earlier runs the ledger has not taken
        self._values = CachedValues({})  # what was loaded from checkpoints (see _values)
        self._run_said = RunSaid()  # which run wrote the checkpoint: its records vouch for its values
        self._run_id: str | None = None
        self._made_by = MadeBy()  # the code that made each value of the table this run
        self.made_here = MadeHere()  # the ignored inputs each value of the table this run was made from

    # -- the Memoizer interface ------------------------------------------------------
    def start(self, *, run_dir: str, config_run_dir: str) -> None:
        self.ledger.new_run()
        self._values = CachedValues(start_loading_private(self.inner, run_dir=run_dir, config_run_dir=config_run_dir))
        # Records earlier runs left in the spool (a ledger that was locked or down) are
        # shipped before the first check, or checked against (see _spooled).
        self._left = ship_left(self.ledger) if self.ledger.unrecordable is None else None

    def close(self) -> None:
        try:
            self.inner.close()
            self._run_said.say(getattr(self.inner, "run_dir", None), self._run_id)  # dfk_exit: written now
            keep_private(getattr(self.inner, "run_dir", None))
        finally:
            self.ledger.finish()  # a bounded wait: the records are in the spool already

    def update_memo_result(self, task: TaskRecord, r: Any) -> None:
        if task.get("join") and not task.get("from_memo"):  # its outer app ran where no ledger records
            record_join(self, task, r)
        self.inner.update_memo_result(task, r)
        self._made_by.ended(task, succeeded=True)
        if not task.get("from_memo"):
            self.made_here.succeeded(task)
        self._run_id = task["dfk"].run_id
        if self.inner.checkpoint_mode == "task_exit":  # written by now (others: at close, see RunSaid)
            self._run_said.say(self.inner.run_dir, self._run_id)

    def entry_digest(self, task: Mapping[str, Any], value: Any) -> str | None:
        """The digest of the checkpoint entry Parsl writes for ``task``'s ``value``, where it
        checkpoints one (see _values), else None."""
        hashsum = task.get("hashsum")
        if self.inner.checkpoint_mode is None or not self.inner.memoize or not task.get("memoize") \
                or not isinstance(hashsum, str):
            return None
        return entry_digest(hashsum, value)

    def update_memo_exception(self, task: TaskRecord, e: BaseException) -> None:
        self.inner.update_memo_exception(task, e)
        self._made_by.ended(task, succeeded=False)

    def checkpoint(self) -> None:
        """Parsl's manual checkpoint (``checkpoint_mode="manual"``)."""
        self.inner.checkpoint()
        self._run_said.say(getattr(self.inner, "run_dir", None), self._run_id)

    def __getattr__(self, name: str) -> Any:
        # Anything else a caller reaches for (memo_lookup_table, checkpoint_queue, ...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def check_memo(self, task: TaskRecord) -> Future[Any] | None:
        # What this check tells the try's record; the DataFlowKernel keeps one record for
        # every try of a task, so a mark left by the last try's check must not stick.
        marks: dict[str, Any] = task  # type: ignore[assignment]
        for mark in ("lineage_ledger_rerun", "lineage_ledger_unverified", "lineage_ledger_read", MADE_BY,
                     HANDED_DIRECTORIES):
            marks.pop(mark, None)
        refuse_ignored_outputs(self, task)  # before Parsl's make_hash fails on it
        inputs, outputs = task_files(task["args"], task["kwargs"])
        hashed: dict[str, Any] = {}  # the inputs' digests its content key was made of
        cached = self._inner_check(task, bool(inputs or outputs), hashed)
        if inputs and self.ledger.unrecordable is None:  # as the try is handed them: see read_digests
            marks["lineage_ledger_read"] = read_digests(inputs, hashed)
        tampered: list[str] = []
        unverified: dict[str, Any] = {}
        if (inputs or outputs) and self.ledger.unrecordable is None:  # else: said at the start
            tampered, unverified = self._verify(task, inputs + outputs)
        # An output of a cached result that is gone was deleted outside the workflow: the
        # check above compares only the files that exist (a missing input is a miss anyway).
        gone = outputs_gone(self, task, outputs) if cached is not None and outputs else []
        # An output a later run rewrote passes the check above (it is the last record's): see _stale.
        stale = self._outputs_stale(task, outputs, skip=[*tampered, *gone, *unverified.get("not_verified", ())]) \
            if cached is not None and outputs else []
        # An input the app leaves out of its memo key that changed since the result was made: see _ignored.
        ignored = ignored_inputs_changed(self, task, cached, skip=[*tampered, *unverified.get("not_verified", ())]) \
            if cached is not None else []
        tampered = [*tampered, *gone, *stale, *ignored]
        # A value loaded from a checkpoint: made by a recorded try? (strict raises here)
        unvouched = self._values.check(self, task, cached) if cached is not None and self.ledger.unrecordable is None \
            else None
        # Made by other code than the app has now? (strict raises here; see _code_check)
        code = self._made_by.check(self, marks, cached) if cached is not None and unvouched is None \
            and self.ledger.unrecordable is None else None
        if (unvouched is not None or code is not None) and self.ledger.policy == "rerun" and not (tampered or unverified):
            self.reruns += 1
            cached = None
        # Files a tampered ledger could not vouch for count as changed under rerun.
        if (tampered or unverified) and cached is not None and self.ledger.policy == "rerun":
            log.warning(
                "lineage-ledger: task %s (%s) runs again instead of reusing its cached result",
                task["id"], task["func_name"],
            )
            if tampered:
                marks["lineage_ledger_rerun"] = tampered
            if unverified:
                unverified = {**unverified, "reran": True}
            self.reruns += 1
            cached = None
        if unverified and cached is None:
            # The task runs (a miss: an edited input changes its content key, so a hidden edit
            # of a source is always one) on files the ledger could not vouch for. Its record
            # must not list those it reads, nor what it makes of them (see ParslLedger.task_run):
            # their digests are taken now, as the task is handed them.
            checked = set(unverified["not_verified"])
            read = [p for p in dict.fromkeys(inputs) if p in checked]
            marks["lineage_ledger_unverified"] = {**unverified, "read": {p: file_digest(p) for p in read}}
        if cached is None and self.ledger.unrecordable is None:  # the try runs: what a later hit is compared with
            keep_handed_directories(marks)
        if cached is not None:
            self.cache_hits += 1
            vouched = {"result_not_verified": unvouched} if unvouched else memo_result(self, task, cached)
            if code is not None:
                vouched["code_now"] = code[1]
            if unverified:
                # Reused, not rerun: the files are what is on disk now. Their digests are kept
                # apart like those of a try that ran on such files, never listed as read or
                # written. An unverified input casts doubt on every output (made from it, like a
                # try that ran on it); unverified outputs alone leave the verified inputs listed.
                left_out = _cached_left_out(inputs, outputs, unverified["not_verified"])
                digests = unverified_digests(inputs, outputs, left_out)
                self._record(task, "cached", {"from_memo": True, **vouched, **unverified, "not_verified_digests": digests},
                             leave_out={"not_verified": left_out, "modified_outside_workflow": tampered})
            else:
                self._record(task, "cached", {"from_memo": True, **vouched}, leave_out=tampered)
        return cached

    # -- internals ---------------------------------------------------------------------
    def _inner_check(self, task: TaskRecord, has_files: bool, hashed: dict[str, Any]) -> Future[Any] | None:
        if not has_files or not task["memoize"]:
            return self.inner.check_memo(task)
        # BasicMemoizer hashes what it is given: show it memoizable keys for the Files.
        proxy: dict[str, Any] = dict(task)
        proxy["args"] = tuple(self._key(v, output=False, hashed=hashed) for v in task["args"])
        proxy["kwargs"] = {
            k: self._key(v, output=(k == "outputs" or k in STREAMS), hashed=hashed) for k, v in task["kwargs"].items()
        }
        cached = self.inner.check_memo(proxy)  # type: ignore[arg-type]
        task["hashsum"] = proxy.get("hashsum")
        return cached

    def _key(self, value: Any, *, output: bool, hashed: dict[str, Any]) -> Any:
        if isinstance(value, list):
            return [self._key(v, output=output, hashed=hashed) for v in value]
        if isinstance(value, tuple):
            return tuple(self._key(v, output=output, hashed=hashed) for v in value)
        if not isinstance(value, File):
            return value
        if output or self.ledger.file_key == "path" or value.scheme != "file":
            return (_FILE_TAG, value.url)
        try:
            found = hashed[os.path.abspath(value.filepath)] = hash_file(value.filepath)
            digest: str | None = found.blake3
        except LedgerError:  # not there yet: key by name; the task itself will report it
            # A path the core will not hash (not UTF-8): keyed by its changes instead, so that
            # an edited input is a miss, as it is by content, and never a stale hit.
            digest = changes_key(value.filepath) if not_utf8(os.path.abspath(value.filepath)) else None
        return (_FILE_TAG, value.url, digest)

    def _verify(self, task: Mapping[str, Any], paths: list[str]) -> tuple[list[str], dict[str, Any]]:
        """The policy applied to the task's files. Returns the modified paths (warn, rerun),
        and where the ledger failed its own verification, what a record of the task should
        say instead of listing the files (``not_verified``: those whose own check fails, see
        :meth:`_one_by_one`; ``check_failed``)."""
        policy = self.ledger.policy
        # Files this process wrote in this run may not be in the ledger yet (write-behind).
        paths = [p for p in dict.fromkeys(paths) if not self.ledger.produced_here(p)]
        left = unnamed(paths)
        if left:  # the ledger cannot name them, so holds no record of them to compare with
            self._unnamed(task, left)
            paths = [p for p in paths if p not in left]
        if not paths:
            return [], {}
        try:
            checks = self._check(paths, policy)
        except LedgerError as err:  # the ledger cannot vouch for anything (broken chain, no back-end)
            log.error("lineage-ledger: could not check the files of task %s: %s", task["id"], err)
            failed = f"{type(err).__name__}: {err}"[:2000]
            if policy == "strict":  # refused, and recorded as refused, like a changed file
                unverified = {"not_verified": paths, "check_failed": failed}
                self._record(task, "failed", {"error": failed, "refused_by": "strict", **unverified},
                             leave_out=paths, left_out_as="not_verified")
                raise
            if not isinstance(err, VerificationError):
                return [], {}  # out of reach, not tampered with: the task goes on as Parsl decides
            checks, failing = self._one_by_one(task, paths, failed)
            tampered = [check.path for check in checks]
            return tampered, {"not_verified": failing, "check_failed": failed} if failing else {}
        tampered = [check.path for check in checks]
        if tampered and policy == "strict":
            refusal = ArtifactMismatch(
                f"lineage-ledger refuses to run task {task['id']} ({task['func_name']}): "
                "files changed outside the workflow: "
                + "; ".join(f"{c.path} (ledger {(c.expected or '-')[:12]}, disk {(c.actual or '-')[:12]})" for c in checks),
                path=tampered[0],
            )
            log.error("%s", refusal)
            self._record(task, "failed", {"error": str(refusal)[:2000], "refused_by": "strict"}, leave_out=tampered)
            raise refusal
        return tampered, {}

    def _outputs_stale(self, task: Mapping[str, Any], outputs: list[str], skip: list[str]) -> list[str]:
        """The outputs of a cached result that are not the ones it made (see _stale). ``strict``
        refuses the reuse (recorded as refused); ``warn`` and ``rerun`` say so, and reuse it or
        run the task again, as for a file edited outside the workflow."""
        left = set(skip)
        paths = [p for p in dict.fromkeys(outputs)
                 if p not in left and not self.ledger.produced_here(p) and os.path.exists(p)]
        paths = [p for p in paths if p not in unnamed(paths)]
        if not paths or self.ledger.unrecordable is not None:
            return []
        policy = self.ledger.policy
        try:
            stale = stale_outputs(self.ledger.capture.ledger, task.get("hashsum"), paths)
        except LedgerError as err:
            log.error("lineage-ledger: could not tell whether the outputs of task %s are the ones its cached "
                      "result made: %s", task["id"], err)
            if policy == "strict":
                failed = f"{type(err).__name__}: {err}"[:2000]
                self._record(task, "failed", {"error": failed, "refused_by": "strict", "check_failed": failed},
                             leave_out=paths, left_out_as="not_verified")
                raise
            return []
        if not stale:
            return []
        said = "; ".join(map(str, stale))
        if policy == "strict":
            refusal = ArtifactMismatch(
                f"lineage-ledger refuses to reuse the cached result of task {task['id']} ({task['func_name']}): "
                f"its outputs are not the ones it made (a later run of the workflow rewrote them): {said}. "
                "Run it again with policy rerun, or remove Parsl's checkpoint of it",
                path=stale[0].path,
            )
            log.error("%s", refusal)
            found = [s.path for s in stale]
            self._record(task, "failed", {"error": str(refusal)[:2000], "refused_by": "strict"}, leave_out=found)
            raise refusal
        for item in stale:
            log.warning("lineage-ledger: %s, an output of task %s (%s), is not the one its cached result made "
                        "(a later run of the workflow rewrote it); %s", item, task["id"], task["func_name"],
                        "the task runs again" if policy == "rerun" else "its cached result is reused all the same")
        return [s.path for s in stale]

    def _unnamed(self, task: Mapping[str, Any], left: list[str]) -> None:
        said, self._said_unnamed = self._said_unnamed, self._said_unnamed or self.ledger.policy == "strict"
        refuse_unnamed(self.ledger, task, left, said=said)

    def _one_by_one(self, task: Mapping[str, Any], paths: list[str], failed: str) -> tuple[list[ArtifactCheck], list[str]]:
        """Under warn or rerun, after the check of ``paths`` as one batch failed the ledger's
        own verification: each file checked on its own (``check_each``). Returns the modified
        files among those whose own check passed, and the files whose own check fails (all of
        them when the ledger fails as a whole, or cannot be read now: the safe side). One
        file with deleted index rows no longer makes every file of the task unverified: a
        source that checks out is listed as read, an output rewritten from it as written."""
        by_name = {normalize_path(p): p for p in paths}
        try:
            changed, failing, whole = check_each(self.ledger.capture.ledger, list(by_name))
        except Exception as again:  # noqa: BLE001 - out of reach now: nothing vouches for any of them
            log.error("lineage-ledger: could not check the files of task %s one by one either (%s: %s)",
                      task["id"], type(again).__name__, again)
            return [], paths
        unverified = [by_name.get(p, p) for p in failing]
        log.error("lineage-ledger: the ledger failed its own check (%s); %s, it cannot vouch for %d of the "
                  "%d file(s) of task %s: %s", failed, "it fails as a whole" if whole else "checked one by one",
                  len(unverified), len(paths), task["id"], " ".join(unverified))
        for check in changed:  # what verify_before_run logs of a batch that passes
            log.warning("lineage-ledger: %s changed outside the workflow (ledger %s, disk %s)%s",
                        check.path, (check.expected or "-")[:12], (check.actual or "-")[:12],
                        "; its task will run again" if self.ledger.policy == "rerun" else "")
        return changed, unverified

    def _check(self, paths: list[str], policy: str) -> list[ArtifactCheck]:
        # strict is applied by the caller, so that the refusal names the task as well as the files
        mode = "warn" if policy == "strict" else policy
        checks = verify_before_run(self.ledger.capture.ledger, paths, mode)  # type: ignore[arg-type]
        if self._left is not None:  # and against what waits in the spool, which the ledger lacks
            for check in self._left.changed(paths, already=[c.path for c in checks]):
                log.warning("lineage-ledger: %s changed outside the workflow (a record waiting in the spool wrote "
                            "%s, disk %s)%s", check.path, (check.expected or "-")[:12], (check.actual or "-")[:12],
                            "; its producer will run again" if policy == "rerun" else "")
                checks.append(check)
        return checks

    def _record(
        self, task: Mapping[str, Any], status: str, extra: dict[str, Any],
        leave_out: Collection[str] | Mapping[str, Collection[str]] = (),
        left_out_as: str = "modified_outside_workflow",
    ) -> None:
        """Record a try that never reaches an executor: a cache hit, or a refusal under strict.
        A refusal wrote nothing: its record lists no outputs (``outputs_not_written`` names
        them), or the ledger would name a failed try as their latest producer, and
        ``verify-lineage`` of an untouched output fail (tests/test_parsl_deployed_refusals.py)."""
        try:
            now = utcnow()
            if status == "failed":
                groups = dict(leave_out) if isinstance(leave_out, Mapping) else {left_out_as: leave_out}
                dropped = {p for paths in groups.values() for p in paths}
                unwritten = [p for p in task_files(task["args"], task["kwargs"])[1] if p not in dropped]
                leave_out = {**groups, "outputs_not_written": unwritten}
            run = self.ledger.task_run(
                task, task["func"], task["args"], task["kwargs"], status=status,
                started=now, ended=now, run_id=task["dfk"].run_id, extra=extra, leave_out=leave_out,
                left_out_as=left_out_as,
            )
            self.ledger.submit(run)
        except Exception:  # noqa: BLE001 - recording must never break the workflow
            log.exception("lineage-ledger: could not record task %s", task.get("id"))


def _cached_left_out(inputs: list[str], outputs: list[str], unverified: Collection[str]) -> list[str]:
    """What a cache hit's record leaves out as ``not_verified``: the unverified files, and
    every output as well when an input is among them (the result was made from it)."""
    doubtful = set(unverified)
    if any(p in doubtful for p in inputs):
        doubtful.update(outputs)
    return sorted(doubtful)

