"""The ledger policy applied inside Snakemake's own run, between building the DAG and scheduling.

A logger plugin's handler hears events through a queue, after the fact: it cannot stop a run.
Two things in Snakemake give it a synchronous moment instead:

- a handler whose ``needs_rulegraph`` is true makes ``Workflow._build_dag`` log a
  ``rulegraph`` event right after the DAG is built (needrun decided, jobs numbered), and
  before ``execute`` takes the lock, decides "Nothing to be done" or schedules a job;
- a filter on Snakemake's logger runs in the thread that logs, and what it raises
  propagates to that logging call.

So :class:`PolicyHook` is a filter on ``snakemake.logging``'s logger. On the
``workflow_started`` event (logged only by ``Workflow.execute``) it arms; on the next
``rulegraph`` event it checks every existing file the run will consume or keep against the
ledger, in Snakemake's own DAG (no second DAG build), and applies the policy:

- ``warn``: logs each changed file and lets the run go on;
- ``strict``: raises ``LedgerPolicyRefusal`` (an ``ApiError``): Snakemake prints it, runs
  nothing and exits with status 1;
- ``rerun``: adds the outputs of the changed files' producers (for a changed source: of
  the jobs that read it) to the DAG's forced files and recomputes which jobs need to run,
  exactly as ``--forcerun`` on those files would have.

When the batch check fails the ledger's own verification (a ``VerificationError``: an index
row that disagrees with its record, a deleted row, a broken chain, a fork from the remembered
head), ``strict`` refuses; ``warn`` and ``rerun`` check each file again on its own
(:func:`one_by_one`), and only those whose own check fails are unverified (all of them when
the ledger fails as a whole). Under ``rerun`` they count as changed, and their producers
(readers, for sources) are forced as above: they come from Snakemake's DAG, not from the
ledger that failed. A ledger merely out of reach (back-end down, locked) is logged and the
run goes on, under ``warn`` and ``rerun`` alike. Under ``warn`` the records of the jobs that
read an unverified file do not list it, nor what those jobs wrote (:mod:`._unverified`): else
the next ``strict`` run would pass a hidden edit. Under ``rerun`` the same holds for an
unverified source (the forced readers read the same edit); other unverified files are
rewritten by their forced producers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._code_check import CodeChange, code_changes, code_now, describe_code

if TYPE_CHECKING:
    from ._unverified import Unverified

log = logging.getLogger("lineage_ledger.snakemake")

SNAKEMAKE_LOGGER = "snakemake.logging"


class SnakemakeLogHook(logging.Filter):
    """A filter on Snakemake's logger: it runs inside the logging call, on Snakemake's thread,
    before the call returns (unlike a handler, which hears the event later via a queue)."""

    def attach(self) -> None:
        logging.getLogger(SNAKEMAKE_LOGGER).addFilter(self)

    def detach(self) -> None:
        logging.getLogger(SNAKEMAKE_LOGGER).removeFilter(self)


@dataclass
class Plan:
    """What the DAG says the run will touch, as absolute paths, and what the ledger says of it."""

    checked: list[str] = field(default_factory=list)  # existing files the run consumes or keeps
    producers: dict[str, Any] = field(default_factory=dict)  # abs path -> the output as the DAG names it
    consumers: dict[str, list[Any]] = field(default_factory=dict)  # abs input -> its readers' outputs
    tampered: list[Any] = field(default_factory=list)  # lineage_ledger.ArtifactCheck, MODIFIED only
    unverified: list[str] = field(default_factory=list)  # asked about, but the ledger failed its own check
    # a kept job's first output (abs path) -> (rule, the rule's code digest now, the output)
    kept_code: dict[str, tuple[str, str, Any]] = field(default_factory=dict)
    code_changed: list[CodeChange] = field(default_factory=list)
    elsewhere: dict[str, str] = field(default_factory=dict)  # changed, made where no DAG job makes it again
    checkpoints: set[str] = field(default_factory=set)  # complete checkpoints' outputs: no DAG job makes them


def collect(jobs: Iterable[Any], needrun: Any, checkpoint_outputs: Iterable[Any] = ()) -> Plan:
    """Inputs of every job, outputs of the jobs that will not run again, and the outputs of
    complete checkpoints (``checkpoint_outputs``): Snakemake read them to build this DAG,
    through input functions that no job's inputs show, and dropped their jobs from it."""
    plan = Plan()
    checked: dict[str, None] = {}
    regenerated: set[str] = set()
    for job in jobs:
        outputs = [f for f in job.output if _local(f)]
        kept = not needrun(job)
        for f in outputs:
            path = os.path.abspath(f)
            plan.producers[path] = f
            if kept:
                checked[path] = None  # the run builds on it
            else:
                regenerated.add(path)
        if outputs:
            # Its log and benchmark files are its products too (its record lists them): one
            # that a reader takes as input (MultiQC reads tools' logs) is made again by forcing
            # this job, not its readers, which would read the edit again and leave it in place.
            # They are checked where a job reads them, as inputs, and not otherwise.
            for f in by_products(job):
                path = os.path.abspath(f)
                plan.producers.setdefault(path, outputs[0])
                if not kept:
                    regenerated.add(path)
        if kept and outputs:
            # Snakemake's --rerun-triggers may leave code out; the plugin compares it anyway.
            digest = code_now(job)
            if digest:
                plan.kept_code[os.path.abspath(outputs[0])] = (str(job.rule.name), digest, outputs[0])
        # Forcing a reader forces what it writes, a pipe() included (Snakemake then runs the pipe's
        # reader with it): a rule whose only output is a pipe is still a reader to force.
        forceable = [f for f in job.output if not getattr(f, "is_storage", False)]
        for f in job.input:
            if _local(f):
                path = os.path.abspath(f)
                checked[path] = None
                plan.consumers.setdefault(path, []).extend(forceable)
    # An input that a job of this run makes again is deleted and rewritten before its readers
    # run: what is on disk now is never read, so it is not checked (else strict refused the
    # very --forcerun that repairs a tampered intermediate).
    for f in checkpoint_outputs:
        if _local(f):
            path = os.path.abspath(f)
            if path not in regenerated:
                checked[path] = None
                plan.checkpoints.add(path)
    plan.checked = [path for path in checked if path not in regenerated]
    return plan


def by_products(job: Any) -> list[Any]:
    """The job's local ``log:`` and ``benchmark:`` files (Snakemake writes both for it)."""
    files = list(getattr(job, "log", None) or ())
    benchmark = getattr(job, "benchmark", None)
    if benchmark:
        files.append(benchmark)
    return [f for f in files if _local(f)]


def _local(f: Any) -> bool:
    flags = getattr(f, "flags", {}) or {}
    return not (getattr(f, "is_storage", False) or "pipe" in flags or "service" in flags)


def check(url: str | None, plan: Plan) -> None:
    """Fill ``plan.tampered`` (MODIFIED files among ``plan.checked``) and ``plan.code_changed``
    (kept outputs made by other code than their rule's now); the caller applies the policy."""
    paths = [p for p in plan.checked if os.path.exists(p)]
    if not paths:
        return  # a missing file is not tampering: a fresh run does not even open the ledger
    from ._urls import maybe_remembered, surely_no_ledger

    if surely_no_ledger(url):
        if maybe_remembered():
            from lineage_ledger._ledger.ledger import gone_if_remembered

            from ._urls import effective_url

            gone_if_remembered(effective_url(url))  # a verified ledger gone: HistoryRewritten
        return  # no ledger file yet: nothing to check against, and nothing to import (see _urls)
    from lineage_ledger import NoLedger, check_before_run, open_ledger

    try:  # the check only reads: no ledger is created, no spool replayed, no SQLAlchemy imported
        ledger = open_ledger(url, read_only=True)
    except NoLedger:  # (a ledger this account verified that is gone raised HistoryRewritten instead)
        return  # nothing was ever recorded there: nothing can vouch for, or against, a file
    try:
        plan.tampered = check_before_run(ledger, paths, "warn")
        plan.code_changed = code_changes(ledger, plan.kept_code)
        if plan.tampered:
            from ._outside import made_elsewhere

            plan.elsewhere = made_elsewhere(ledger, plan.tampered, plan.producers, plan.checkpoints)
    finally:
        ledger.close()


def one_by_one(url: str | None, paths: list[str]) -> tuple[list[Any], list[str], bool]:
    """After the batch check raised a ``VerificationError``: each of ``paths`` checked on its
    own (``lineage_ledger.check_each``): (the MODIFIED or unreadable files among those whose own
    check passed, the files whose own check fails, whether the ledger failed as a whole)."""
    from lineage_ledger import check_each, open_ledger

    ledger = open_ledger(url, read_only=True)
    try:
        return check_each(ledger, paths)
    finally:
        ledger.close()


def forced_outputs(plan: Plan) -> list[Any]:
    """The outputs to regenerate: each changed file's producer's, or a changed source's readers',
    and those of each job whose rule's code changed."""
    forced: dict[Any, None] = {change.output: None for change in plan.code_changed}
    for path in [changed.path for changed in plan.tampered] + plan.unverified:
        produced = plan.producers.get(path)
        if produced is not None:
            forced[produced] = None
        else:
            forced.update(dict.fromkeys(plan.consumers.get(path, [])))
    return list(forced)


def failed_its_own_check(err: BaseException) -> bool:
    """A ``VerificationError``: the ledger was read and found tampered with, not out of reach.
    (Not imported here: an error raised before the core was imported cannot be one.)"""
    core = sys.modules.get("lineage_ledger")
    return core is not None and isinstance(err, core.VerificationError)


def describe(changed: Any) -> str:
    """One line for a file the check reports: a directory names the files inside that differ."""
    reason = getattr(changed, "reason", None)
    if getattr(getattr(changed, "status", None), "value", None) == "UNREADABLE":
        return f"{changed.path}: could not be checked ({reason})"
    text = (f"{changed.path}: changed since the last recorded run "
            f"(ledger {(changed.expected or '-')[:16]}, disk {(changed.actual or '-')[:16]})")
    changes = getattr(changed, "changes", None)  # a directory's: changed, appeared, disappeared
    if changes:
        text += f"; inside it, {changes.describe()}"
    if reason:
        text += f"; {reason}"
    return text


def refusal_class() -> type[Exception]:
    """An ``ApiError``: Snakemake prints it as ``Error: <message>`` (no traceback) and exits 1."""
    from snakemake_interface_common.exceptions import ApiError

    class LedgerPolicyRefusal(ApiError):
        pass

    return LedgerPolicyRefusal


class PolicyHook(SnakemakeLogHook):
    """Applies ``policy`` once per ``Workflow.execute``; see the module docstring."""

    def __init__(self, policy: str, url: str | None) -> None:
        super().__init__()
        self.policy = policy
        self.url = url
        self.armed = False
        self.applied = False  # the check ran for the current execute()
        self.started = False  # some execute() began while this hook was attached
        self.cpu = 0.0  # CPU seconds the check cost Snakemake's main thread
        self.warned_not_applied = False
        self.unrecordable: str | None = None  # why no job of this run could be recorded here
        #: Under warn, the files a ledger that failed its own check could not vouch for: the
        #: recorder leaves them, and what jobs make from them, out of the records' lists.
        self.unverified: Unverified | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if event == "workflow_started":
            self.armed = self.started = True
            self.applied = False
            self.unverified = None
            self.nothing_recordable()
        elif event == "rulegraph" and self.armed:
            self.armed = False
            if self.unrecordable:
                self.applied = True  # no file here has a record to check; the handler said why
            else:
                self.apply()  # a strict refusal propagates to Snakemake's logging call, by design
        return True

    def nothing_recordable(self) -> None:
        """At workflow start: where no job could be recorded (see _unrecordable), strict refuses
        to start (the refusal propagates to Snakemake's logging call, before any job runs); the
        other policies check nothing."""
        from ._unrecordable import SAID, why_nothing_is_recorded

        self.unrecordable = why_nothing_is_recorded(self.url)
        if self.unrecordable is not None and self.policy == "strict":
            raise refusal_class()(f"lineage-ledger: refusing to run (--logger-ledger-policy strict): {SAID}: "
                                  f"{self.unrecordable}")

    def apply(self) -> None:
        import time

        import snakemake.workflow as workflow_module

        workflow: Any = getattr(workflow_module, "workflow", None)
        dag = getattr(workflow, "dag", None)
        if dag is None:
            log.warning("lineage-ledger: no workflow DAG at the rulegraph event; --logger-ledger-policy "
                        "%s not applied", self.policy)
            return
        if not getattr(workflow, "is_main_process", True):
            self.applied = True  # a job's own Snakemake process (group or remote job): the parent checked
            return
        from ._outside import touch_run

        began = time.thread_time()
        plan = Plan()
        touch = touch_run()  # --touch runs no job: what it marks up to date is checked as kept
        try:
            plan = collect(list(dag.jobs), (lambda job: False) if touch else dag.needrun,
                           getattr(getattr(workflow, "checkpoints", None), "created_output", ()))
            check(self.url, plan)
        except Exception as err:  # noqa: BLE001 - an unreadable ledger: strict refuses, others say so
            if self.policy == "strict":
                raise refusal_class()(
                    f"lineage-ledger: refusing to run (--logger-ledger-policy strict): the ledger "
                    f"could not be checked: {type(err).__name__}: {err}") from err
            self.applied = True
            if not failed_its_own_check(err):
                log.error("lineage-ledger: could not check files against the ledger (%s: %s); running "
                          "without the %s policy", type(err).__name__, err, self.policy)
                return
            self.after_failed_check(workflow, dag, plan, err)
            return
        finally:
            self.cpu += time.thread_time() - began
        self.applied = True
        log.debug("lineage-ledger: checked %d file(s) against the ledger (%.3f s CPU)",
                  len(plan.checked), self.cpu)
        if not plan.tampered and not plan.code_changed:
            return
        reasons = []
        if plan.tampered:
            reasons.append("files changed outside the workflow:\n  "
                           + "\n  ".join(describe(c) for c in plan.tampered))
        if plan.code_changed:
            reasons.append("outputs kept although their rule's code changed:\n  "
                           + "\n  ".join(describe_code(c) for c in plan.code_changed))
        text = "\n".join(reasons)
        if plan.elsewhere:
            from ._outside import describe_elsewhere

            text += "\n" + describe_elsewhere(plan.elsewhere)
        if self.policy == "strict" or self.policy == "rerun" and plan.elsewhere and not touch:
            # rerun cannot make those again in this DAG, and their readers would record the edit
            raise refusal_class()(f"lineage-ledger: refusing to run (--logger-ledger-policy {self.policy}); {text}")
        log.warning("lineage-ledger: %s", text)
        if plan.elsewhere:  # warn: their readers' records leave them, and what is made of them, out
            from ._unverified import Unverified

            self.unverified = Unverified(plan.elsewhere, "ArtifactMismatch: changed outside the workflow, "
                                         "inside a directory an earlier job wrote", self.policy)
        if self.policy == "rerun" and touch:
            log.warning("lineage-ledger: --touch makes nothing again: their producers are not forced")
        elif self.policy == "rerun":
            self.force(workflow, dag, plan)

    def after_failed_check(self, workflow: Any, dag: Any, plan: Plan, err: BaseException) -> None:
        """Under warn or rerun, after the batch check failed the ledger's own verification: each
        file is checked on its own (:func:`one_by_one`), and only those whose own check fails are
        unverified. Under rerun they count as changed (their producers, or a source's readers,
        run again), and a source among them (no rule makes it) is left out of its readers'
        records as under warn (:mod:`._unverified`): they read the same edit, and records listing
        it would make the next strict run pass it. Under warn the jobs that read any of them
        list them, and what they write, as ``not_verified``."""
        from ._unverified import Unverified

        failed = f"{type(err).__name__}: {err}"
        existing = [p for p in plan.checked if os.path.exists(p)]
        whole = True
        try:
            plan.tampered, plan.unverified, whole = one_by_one(self.url, existing)
        except Exception as again:  # noqa: BLE001 - out of reach now: nothing vouches for any of them
            log.error("lineage-ledger: could not check the files one by one either (%s: %s)",
                      type(again).__name__, again)
            plan.tampered, plan.unverified, whole = [], existing, False  # each one singled out: the safe side
        log.error("lineage-ledger: the ledger failed its own check (%s); checked one by one, it cannot vouch "
                  "for %d of the %d file(s) the run builds on: %s", failed, len(plan.unverified),
                  len(existing), " ".join(plan.unverified[:20]) + (" ..." if len(plan.unverified) > 20 else ""))
        if plan.tampered:
            log.warning("lineage-ledger: files changed outside the workflow:\n  %s",
                        "\n  ".join(describe(c) for c in plan.tampered))
        if self.policy == "rerun":
            # A ledger failed as a whole names no file: every one is rerun, none singled out (that
            # failure persists, so the next strict run refuses whatever these records list).
            sources = [] if whole else [p for p in plan.unverified if p not in plan.producers]
            if sources:
                self.unverified = Unverified(sources, failed, "rerun")
                log.error("lineage-ledger: under rerun the jobs that read the %d source(s) the ledger cannot "
                          "vouch for run again, and their records list them, and what they write, as "
                          "not_verified", len(sources))
            self.force(workflow, dag, plan)
            return
        self.unverified = Unverified(plan.unverified, failed)
        log.error("lineage-ledger: the records of the jobs that read them list them, and what they write, "
                  "as not_verified")

    @staticmethod
    def force(workflow: Any, dag: Any, plan: Plan) -> None:
        """As ``--forcerun`` on the outputs :func:`forced_outputs` names, in this DAG."""
        forced = forced_outputs(plan)
        if not forced:
            return
        log.warning("lineage-ledger: running again the jobs that produce: %s",
                    " ".join(str(f) for f in forced))
        dag.forcefiles.update(forced)
        workflow.async_run(dag.update_needrun())
