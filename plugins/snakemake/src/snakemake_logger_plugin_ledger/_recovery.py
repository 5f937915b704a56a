"""Jobs a killed Snakemake saw finish but whose events never reached the logger plugin.

Snakemake hands log events to plugins through a queue read by a listener thread, so a
``kill -9`` can land after Snakemake has finished a job (written its metadata, printed
"Finished jobid") and before the plugin heard of it. Snakemake's own metadata is the
durable trace of such a job: one record per output, written before ``job_finished`` is
logged, with the rule, inputs, logs, code, params and start and end times.

After a crash (a pending-jobs journal whose writer is gone), the next run looks up, for
every output of its DAG, metadata newer than the crashed run's start that the journal
does not account for, and records those jobs from it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from lineage_ledger import TaskRun, code_digest

from ._jobs import _current_dag, utc, utc_text

log = logging.getLogger("lineage_ledger.snakemake")


def jobs_from_metadata(since: float, until: float, accounted: Iterable[str], run_id: str) -> list[TaskRun]:
    """Jobs of the crashed run ``run_id`` that ended in [since, until), known only to Snakemake."""
    dag = _current_dag()
    persistence = getattr(getattr(dag, "workflow", None), "persistence", None)
    if dag is None or persistence is None:
        return []
    skip = set(accounted)
    runs: list[TaskRun] = []
    for job in list(dag.jobs):
        try:
            run = _from_job(job, persistence, (since, until), skip, run_id)
        except Exception as err:  # noqa: BLE001 - one unreadable record must not stop the rest
            log.warning("lineage-ledger: could not read Snakemake's metadata for %s: %s", job, err)
            continue
        if run is not None:
            runs.append(run)
    return runs


def _from_job(job: Any, persistence: Any, window: tuple[float, float], skip: set[str], run_id: str
              ) -> TaskRun | None:
    outputs = [f for f in job.output if not f.is_storage and "pipe" not in f.flags]
    paths = [os.path.abspath(f) for f in outputs]
    if not outputs or any(p in skip for p in paths) or not all(os.path.exists(p) for p in paths):
        return None
    meta = persistence.metadata(outputs[0])
    # The window keeps out older runs' jobs and jobs this run has already finished.
    if meta is None or meta.incomplete or meta.endtime is None or not window[0] <= meta.endtime < window[1]:
        return None
    inputs = [os.path.abspath(p) for p in (meta.input or []) if p not in ("<pipe>", "<service>")]
    logs = [os.path.abspath(p) for p in (meta.log or [])]
    started = meta.starttime if meta.starttime is not None else meta.endtime
    return TaskRun(
        task_id=f"recovered:{paths[0]}",
        task_name=str(meta.rule or job.rule.name),
        status="succeeded",
        started=utc(min(started, meta.endtime)),
        ended=utc(meta.endtime),
        inputs=inputs,
        outputs=[*paths, *logs],
        code_digest=code_digest(meta.code) if meta.code else None,
        # Snakemake keeps params only as repr() strings; they are recorded as it kept them.
        parameters={"snakemake_params": list(meta.params or [])},
        environment_extra={k: v for k, v in (
            ("conda_env_digest", code_digest(meta.conda_env) if meta.conda_env else None),
            ("container", meta.container_img_url)) if v},
        extra={"recovered_from": "snakemake metadata", "shellcmd": meta.shellcmd,
               "recovered_after_interruption": True},
        run_id=run_id,
    )


def metadata_end(job: Any, since: float) -> float | None:
    """When Snakemake's metadata says ``job`` finished, if after ``since``; else None.

    Used at the end of a run for jobs that started but whose ``job_finished`` never came:
    with ``--quiet progress`` (or ``-q``) Snakemake does not log finished jobs at all.
    """
    dag = _current_dag()
    persistence = getattr(getattr(dag, "workflow", None), "persistence", None)
    if job is None or persistence is None:
        return None
    outputs = [f for f in job.output if not f.is_storage and "pipe" not in f.flags]
    # A temp() output may already be deleted; its metadata record outlives it.
    if not outputs or not all(os.path.exists(f) for f in outputs if "temp" not in f.flags):
        return None
    fresh_metadata(persistence)
    meta = persistence.metadata(outputs[0])
    if meta is None or meta.incomplete or meta.endtime is None or meta.endtime < since:
        return None
    return float(meta.endtime)


def fresh_metadata(persistence: Any) -> None:
    """Drop Snakemake's in-memory cache of its metadata, as Snakemake does itself before each
    change of it: under ``--batch`` it still held "no metadata" for the last job's output (read
    while the DAG was built), and that job was never recorded. It only costs re-reading files."""
    clear = getattr(persistence, "_clear_cache", None)
    if callable(clear):
        try:
            clear()
        except Exception:  # noqa: BLE001 - a Snakemake without it: read what it has
            log.debug("lineage-ledger: could not clear Snakemake's metadata cache", exc_info=True)


#: Seconds a recovered output's mtime may pass its job's end before it counts as changed since:
#: file systems keep coarse times (FAT: 2 s), and the end is the event's or metadata's time.
CHANGED_SINCE_SLACK = 2.0


def leave_out_changed_since(run: TaskRun, journal_written: float | None) -> None:
    """A recovered job's outputs are hashed by the next run, not when the job ended: one
    modified after the job's end (a hand "fix" of what the killed run left) is not its product.
    It is left out of the record's outputs and named in ``extra.not_verified`` and
    ``extra.changed_after_interruption`` (path -> its mtime), so that no record vouches for the
    edit: ``verify-lineage`` of it, and of what is made from it, fails. A digest taken at the
    job's end (``known``: a temp() output) is the job's own and stays.

    The job's end is by this host's clock, an output's mtime by its file server's. An mtime
    also past the killed run's last write to its journal (``journal_written``, by the clock of
    the file system that holds the working directory, as a rule the outputs' own) is after the
    kill, so a file server whose clock runs ahead does not make the outputs of every
    recovered job look edited."""
    deadline = run.ended.timestamp() + CHANGED_SINCE_SLACK
    if journal_written is not None:
        deadline = max(deadline, journal_written + CHANGED_SINCE_SLACK)
    known = run.known_outputs if run.known_outputs is not None else run.known
    changed: dict[str, str] = {}
    for path in run.outputs:
        if path in known:
            continue
        modified = _last_modified(path)
        if modified is not None and modified > deadline:
            changed[path] = utc_text(modified)
    if changed:
        log.warning("lineage-ledger: %d output(s) of job %s (%s) of the interrupted run were modified after it "
                    "ended, and its record leaves them out: %s", len(changed), run.task_id, run.task_name,
                    " ".join(sorted(changed)))
        run.outputs = [p for p in run.outputs if p not in changed]
        not_verified = sorted({*run.extra.get("not_verified", ()), *changed})
        run.extra = {**run.extra, "changed_after_interruption": changed, "not_verified": not_verified}


def _last_modified(path: str) -> float | None:
    """The latest mtime of ``path``, or of anything inside it for a directory (not following links)."""
    try:
        latest = os.lstat(path).st_mtime
    except OSError:
        return None  # gone: the capture says so as for any missing output
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                try:
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    continue
    return latest
