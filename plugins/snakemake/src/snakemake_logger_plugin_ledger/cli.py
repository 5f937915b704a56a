"""``snakemake-ledger``: ``snakemake`` with ``--ledger URL`` and ``--ledger-policy``.

Snakemake lets a plugin add flags only under its own prefix, so the two flags live in
this wrapper. It takes every ``snakemake`` argument, and:

1. builds the DAG of the run through Snakemake's own argument handling and API (profiles,
   config, ``--directory``, targets and ``--forcerun`` all apply as they would),
2. checks every existing file the run will consume or keep against the ledger
   (:func:`lineage_ledger.check_before_run`): sources, intermediate files, and the
   outputs of jobs that will not run again,
3. ``warn``: prints what changed and runs; ``strict``: refuses, exit status 1, naming
   every changed file; ``rerun``: forces the jobs that produce the changed files (or, for
   a changed source, the jobs that read it) to run again,
4. runs ``snakemake`` with the ledger logger (``--logger ledger``) in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lineage_ledger import ArtifactCheck, LedgerError, VerificationError, check_before_run, open_ledger

POLICIES = ("warn", "strict", "rerun")


@dataclass
class Plan:
    """What the DAG says the run will touch, in the workflow's working directory."""

    workdir: str = ""
    url: str | None = None  # the ledger both the check and the logger use
    checked: list[str] = field(default_factory=list)  # absolute paths of files to verify
    producers: dict[str, str] = field(default_factory=dict)  # abs path -> output as Snakemake names it
    consumers: dict[str, list[str]] = field(default_factory=dict)  # abs source -> consumers' outputs
    tampered: list[ArtifactCheck] = field(default_factory=list)
    error: BaseException | None = None
    inspected: bool = False  # the DAG was built and checked
    snakemake_ok: bool = True  # what Snakemake's own argument handling returned


def split_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our two flags out of the command line; everything else is Snakemake's."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--ledger", default=None)
    parser.add_argument("--ledger-policy", default="warn", choices=POLICIES)
    ours, rest = parser.parse_known_args(list(argv))
    return ours, rest


def absolute_url(url: str | None) -> str | None:
    """A relative ledger path means the invocation directory, not Snakemake's ``--directory``."""
    if url is None:
        return None
    if "://" not in url:
        return os.path.abspath(url)
    if url.startswith("sqlite:///") and not url[len("sqlite:///"):].startswith("/"):
        return "sqlite:///" + os.path.abspath(url[len("sqlite:///"):])
    return url


def inspect_run(snakemake_args: list[str], url: str | None, policy: str) -> Plan:
    """Build the DAG with Snakemake's CLI-to-API path and verify its files."""
    from snakemake import cli
    from snakemake.workflow import Workflow

    plan = Plan()
    _, args = cli.parse_args(snakemake_args)
    # Without --ledger, the logger's own setting (flag, profile or environment) names the
    # ledger, so that the check reads the ledger the run will write to.
    configured = getattr(args, "logger_ledger_url", None)  # unset: a sentinel, not None
    plan.url = url = url if url is not None else absolute_url(configured if isinstance(configured, str) else None)
    args.logger = [name for name in (args.logger or []) if name != "ledger"]
    args.filegraph = True  # routes args_to_api to the DAG API's printfilegraph(), replaced below
    original = Workflow.printfilegraph

    def collect(workflow: Any) -> None:
        try:
            workflow._prepare_dag(forceall=workflow.dag_settings.forceall, ignore_incomplete=True,
                                  lock_warn_only=True)
            workflow._build_dag()
            _collect(workflow.dag, plan)
            plan.tampered = _check(url, plan.checked)
            plan.inspected = True
        except BaseException as err:  # noqa: BLE001 - reported by main(), not by Snakemake
            plan.error = err

    Workflow.printfilegraph = collect  # type: ignore[method-assign]
    try:
        plan.snakemake_ok = bool(cli.args_to_api(args, cli.get_argument_parser()))
    except Exception as err:  # noqa: BLE001 - Snakemake's own error (or its error printer's)
        plan.error = plan.error or err
    finally:
        Workflow.printfilegraph = original  # type: ignore[method-assign]
    return plan


def _check(url: str | None, paths: list[str]) -> list[ArtifactCheck]:
    """The MODIFIED files among ``paths``; the policy is applied by main(), which names them all."""
    ledger = open_ledger(url)
    try:
        return check_before_run(ledger, paths, "warn")
    finally:
        ledger.close()


def _collect(dag: Any, plan: Plan) -> None:
    plan.workdir = os.getcwd()
    checked: dict[str, None] = {}
    for job in dag.jobs:
        needrun = dag.needrun(job)
        outputs = [f for f in job.output if _local(f)]
        for f in outputs:
            plan.producers[os.path.abspath(f)] = str(f)
            if not needrun:
                checked[os.path.abspath(f)] = None  # kept: the run builds on it
        for f in job.input:
            if not _local(f):
                continue
            path = os.path.abspath(f)
            checked[path] = None  # consumed
            plan.consumers.setdefault(path, []).extend(str(o) for o in outputs)
    plan.checked = list(checked)


def _local(f: Any) -> bool:
    flags = getattr(f, "flags", {}) or {}
    return not (getattr(f, "is_storage", False) or "pipe" in flags or "service" in flags)


def forced_targets(plan: Plan) -> list[str]:
    """The outputs to regenerate: each changed file's producer, or a changed source's readers."""
    targets: dict[str, None] = {}
    for check in plan.tampered:
        produced = plan.producers.get(check.path)
        if produced is not None:
            targets[produced] = None
        else:
            targets.update(dict.fromkeys(plan.consumers.get(check.path, [])))
    return list(targets)


def describe(check: ArtifactCheck) -> str:
    return (f"{check.path}: changed since the last recorded run "
            f"(ledger {(check.expected or '-')[:16]}, disk {(check.actual or '-')[:16]})")


def main(argv: Sequence[str] | None = None) -> None:
    ours, snakemake_args = split_args(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in snakemake_args):
        print("usage: snakemake-ledger [--ledger URL] [--ledger-policy {warn,strict,rerun}] "
              "[snakemake arguments...]\n\n" + (__doc__ or ""))
        sys.exit(0)
    url = absolute_url(ours.ledger)
    policy = ours.ledger_policy
    plan = inspect_run(snakemake_args, url, policy)
    if plan.error is not None:
        kind = "lineage check failed" if isinstance(plan.error, LedgerError) else "could not inspect the run"
        print(f"snakemake-ledger: {kind}: {type(plan.error).__name__}: {plan.error}", file=sys.stderr)
        sys.exit(1 if isinstance(plan.error, VerificationError) else 2)
    if not plan.inspected:
        if plan.snakemake_ok:
            sys.exit(0)  # a mode that runs no jobs (--list-rules, --lint, ...): Snakemake has done it
        print("snakemake-ledger: Snakemake could not build the DAG (see its message above)", file=sys.stderr)
        sys.exit(2)
    forced: list[str] = []
    if plan.tampered:
        lines = "\n  ".join(describe(c) for c in plan.tampered)
        if policy == "strict":
            print(f"snakemake-ledger: refusing to run (--ledger-policy strict); files changed outside "
                  f"the workflow:\n  {lines}", file=sys.stderr)
            sys.exit(1)
        print(f"snakemake-ledger: files changed outside the workflow:\n  {lines}", file=sys.stderr)
        if policy == "rerun":
            forced = forced_targets(plan)
            print("snakemake-ledger: running again the jobs that produce: " + " ".join(forced), file=sys.stderr)
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *run_args(snakemake_args, plan.url, forced)])


def run_args(snakemake_args: list[str], url: str | None, forced: list[str]) -> list[str]:
    """Snakemake's arguments plus the ledger logger and any forced targets."""
    from snakemake import cli

    _, args = cli.parse_args(snakemake_args)
    extra = ["--logger", *dict.fromkeys([*(args.logger or []), "ledger"])]
    if url is not None:
        extra += ["--logger-ledger-url", url]
    if forced:
        extra += ["--forcerun", *sorted(set(args.forcerun or ())), *forced]
    # Last, so that they win over the user's own --logger/--forcerun, whose values they include.
    return [*snakemake_args, *extra]
