"""What a Snakemake job is, in the terms of a ledger record.

Snakemake's ``job_info`` log event carries the rule, job id, files, wildcards, threads,
resources and shell command; ``job_finished`` carries only the job id. Params, the code of
``run:`` blocks and scripts, and the conda env or container come from the job object in
the running workflow, looked up by job id. Nothing here hashes data files: this runs on
Snakemake's logging thread.

Nor does anything here import ``lineage_ledger``: its import costs Snakemake's process
about 0.1 s of CPU at start-up, and the recording process is the one that needs it. A job
leaves here as the JSON message :func:`._journal.decode_run` turns into a ``TaskRun``;
``TaskCapture`` gives its values their one JSON spelling (``jsonable``) there.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from blake3 import blake3

log = logging.getLogger("lineage_ledger.snakemake")

# Snakemake prints flags after a file name: "x.txt (temp)", "p (pipe)", "o (protected)".
_ANNOTATION = re.compile(r"^(?P<path>.*?) \((?P<flags>[a-z_:, -]+)\)$")
_NOT_FILES = {"<pipe>", "<service>"}


@dataclass
class FileRef:
    path: str  # absolute
    flags: frozenset[str] = frozenset()

    @property
    def hashable(self) -> bool:
        # A pipe or service is a stream, not a file with a version: there is nothing to hash.
        return not ({"pipe", "service"} & self.flags)


def parse_files(entries: Iterable[Any] | None, cwd: str | None = None) -> list[FileRef]:
    """Snakemake's formatted file list -> absolute paths with their flags.

    ``cwd``: the working directory, if the caller knows it; ``os.path.abspath`` asks the
    kernel for it once per path, and each such call may hand the GIL to another thread.
    """
    refs: list[FileRef] = []
    base = cwd or os.getcwd()
    for entry in entries or ():
        text = str(entry)
        if text in _NOT_FILES:
            continue
        match = _ANNOTATION.match(text)
        flags: frozenset[str] = frozenset()
        # A real file named "a (b)" wins over reading "(b)" as Snakemake's annotation.
        if match and not os.path.lexists(text):
            text = match.group("path")
            flags = frozenset(f.strip() for f in match.group("flags").split(","))
        refs.append(FileRef(os.path.normpath(os.path.join(base, text)), flags))
    return refs


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def utc_text(timestamp: float) -> str:
    """``lineage_ledger.format_time(utc(timestamp))``: its one spelling of a UTC time."""
    return utc(timestamp).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def code_digest(code: str | bytes) -> str:
    """``lineage_ledger.code_digest``: BLAKE3 of the code's UTF-8 bytes."""
    return blake3(code.encode("utf-8") if isinstance(code, str) else code).hexdigest()


def json_default(value: Any) -> Any:
    """What ``json.dumps`` cannot encode: close to ``lineage_ledger.jsonable``, which the
    recording process applies afterwards."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


@dataclass
class JobReport:
    """A started job as the ``job_info`` event described it, completed when it ends."""

    jobid: int
    rule: str
    started: float
    inputs: list[FileRef]
    outputs: list[FileRef]
    logs: list[FileRef]
    wildcards: dict[str, Any]
    threads: Any
    resources: dict[str, Any]
    shellcmd: str | None
    details: dict[str, Any] = field(default_factory=dict)
    #: Its ``benchmark:`` file: Snakemake writes it when the job's code ends, a product of the
    #: job like its log (a resources report may read it).
    benchmarks: list[FileRef] = field(default_factory=list)

    @classmethod
    def from_event(cls, record: logging.LogRecord, cwd: str | None = None) -> JobReport:
        get = record.__dict__.get
        cwd = cwd or os.getcwd()
        return cls(
            jobid=int(get("jobid")),  # type: ignore[arg-type]
            rule=str(get("rule_name")),
            started=record.created,
            inputs=parse_files(get("input"), cwd),
            outputs=parse_files(get("output"), cwd),
            logs=parse_files(get("log"), cwd),
            wildcards={str(k): v for k, v in dict(get("wildcards") or {}).items()},
            threads=get("threads"),
            resources=_resources(get("resources")),
            shellcmd=get("shellcmd"),
            benchmarks=parse_files([get("benchmark")] if get("benchmark") else [], cwd),
        )

    def parameters(self) -> dict[str, Any]:
        """What the rule's code ran with: its ``params:``, and (under ``_``-names, like
        ``_positional``, so that no ``params:`` name is taken) the job's wildcards, threads
        and resources. They are the job's parameters, never part of its code digest: the
        same rule keeps one code digest across samples, thread counts, retries (a resource
        that grows with ``attempt``) and executors."""
        params: dict[str, Any] = dict(self.details.get("params") or {})
        params["_wildcards"] = self.wildcards
        params["_threads"] = self.threads
        params["_resources"] = self.resources
        return params

    def task_run(self, status: str, ended: float, known: Mapping[str, Mapping[str, Any]] | None = None,
                 error: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The job as a ``TaskRun`` message (the fields of ``_journal.encode_run``)."""
        details = self.details
        code = details.get("code_digest")
        code_of = "rule" if code else None
        if code is None and self.shellcmd:
            # The job object was not found: the command as run is all there is. It is marked,
            # so that the pre-run check never compares it with a rule's code.
            code, code_of = code_digest(self.shellcmd), "command"
        environment: dict[str, Any] = {}
        if details.get("conda_env"):
            environment["conda_env"] = details["conda_env"]
        if details.get("container"):
            environment["container"] = details["container"]
        extra: dict[str, Any] = {
            "snakemake_jobid": self.jobid,
            "code_kind": details.get("code_kind", "shell" if self.shellcmd else "unknown"),
        }
        if code_of:
            extra["code_of"] = code_of
        if self.shellcmd:
            extra["shellcmd"] = self.shellcmd
        for key in ("script", "script_digest", "temp_files", "details_error"):
            if details.get(key):
                extra[key] = details[key]
        streams = [r.path for r in (*self.inputs, *self.outputs) if not r.hashable]
        if streams:
            extra["streams"] = streams  # pipes: consumed as they were written, never on disk to hash
        if error:
            extra["error"] = dict(error)
        # Log and benchmark files are outputs of the job: the record vouches for them like any
        # product (else a report made from them traced back to them as sources, and an edit
        # passed every check). A failed try vouches for its logs only; what is at its output
        # paths by the time it is hashed is Snakemake's clean-up or a retry's work, not this
        # try's product (Snakemake writes no benchmark for a failed try).
        outputs = [r.path for r in (*self.outputs, *self.logs, *self.benchmarks) if r.hashable]
        if status == "failed":
            extra["declared_outputs"] = [r.path for r in self.outputs]
            # ... and only the logs this try wrote: an older one left at the path is not its product.
            logs = [r.path for r in self.logs if r.hashable]
            outputs = [p for p in logs if written_since(p, self.started)]
            if len(outputs) < len(logs):
                extra["outputs_not_written"] = [p for p in logs if p not in outputs]
        return {
            "task_id": str(self.jobid), "task_name": self.rule, "status": status,
            "started": utc_text(self.started), "ended": utc_text(max(ended, self.started)),
            "inputs": [r.path for r in self.inputs if r.hashable], "outputs": outputs,
            "known": {path: dict(entry) for path, entry in (known or {}).items()},
            "code_digest": code, "parameters": self.parameters(),
            "environment_extra": environment, "attempt": 1, "extra": extra, "run_id": None,
        }


# -- what a failed job leaves to say why ------------------------------------------------------
#: How much of an error text, and of each log file's end, a failed job's record keeps.
ERROR_TAIL = 2048
_EXIT_STATUS = re.compile(r"returned non-zero exit status (-?\d+)")
_DIED = re.compile(r"died with <Signals\.(SIG\w+): (\d+)>")
_RECENT = 30.0  # seconds: an error text older than this belongs to another job


def written_since(path: str, started: float) -> bool:
    """Whether ``path`` was created or changed since ``started`` (a second's slack for coarse
    file-system clocks)."""
    try:
        return os.stat(path).st_mtime >= started - 1.0
    except OSError:
        return False


def _tail_text(text: str) -> str:
    data = text.encode("utf-8", "backslashreplace")
    return data[-ERROR_TAIL:].decode("utf-8", "ignore")


def _tail_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - ERROR_TAIL))
            return handle.read(ERROR_TAIL).decode("utf-8", "backslashreplace")
    except OSError:
        return None


def _take_error(recent: Any, shellcmd: str | None, rule: str, now: float) -> str | None:
    """The text of the ``error`` event Snakemake logged for this job, taken out of ``recent``:
    the one that quotes its shell command, else one naming its rule, else the latest."""
    candidates = [(i, text) for i, (when, text) in enumerate(recent) if now - when <= _RECENT]
    if not candidates:
        return None
    command = (shellcmd or "").strip()
    chosen = None
    if command:
        chosen = next((c for c in reversed(candidates) if command in c[1]), None)
    if chosen is None:
        chosen = next((c for c in reversed(candidates) if f"rule {rule}" in c[1]), None)
    if chosen is None:
        chosen = candidates[-1]
    del recent[chosen[0]]
    return chosen[1]


def error_details(report: JobReport, shellcmd: str | None, recent: Any, now: float) -> dict[str, Any]:
    """What a failed try's record keeps of why it failed: the exit status and the tail of the
    error text, where Snakemake gives them, and the tail of each log the try wrote."""
    details: dict[str, Any] = {}
    text = _take_error(recent, shellcmd or report.shellcmd, report.rule, now)
    if text:
        details["text_tail"] = _tail_text(text)
        if match := _DIED.search(text):
            details["signal"] = match.group(1)
            details["exit_status"] = 128 + int(match.group(2))
        elif match := _EXIT_STATUS.search(text):
            status = int(match.group(1))
            details["exit_status"] = 128 - status if status < 0 else status
    tails = {}
    for ref in report.logs:
        if ref.hashable and written_since(ref.path, report.started):
            tail = _tail_file(ref.path)
            if tail is not None:
                tails[ref.path] = tail
    if tails:
        details["log_tails"] = tails
    return details


def _resources(resources: Any) -> dict[str, Any]:
    if resources is None:
        return {}
    try:
        items = resources.items() if hasattr(resources, "items") else resources._allitems()
        return {str(k): v for k, v in items if not str(k).startswith("_")}
    except Exception:  # noqa: BLE001 - resources are informational
        return {"repr": str(resources)}


# -- the job object behind a job id --------------------------------------------------------
class JobLookup:
    """Finds Snakemake's job object by job id in the running workflow's DAG."""

    def __init__(self) -> None:
        self._by_id: dict[int, Any] = {}
        self._dag: Any = None

    def find(self, jobid: int) -> Any:
        dag = _current_dag()
        if dag is None:
            return None
        if dag is not self._dag:
            self._dag, self._by_id = dag, {}
        job = self._by_id.get(jobid)
        if job is None:
            # The DAG's job -> id map grows (checkpoints); rebuilding on a miss keeps this
            # O(1) per job on average.
            ids = getattr(dag, "_jobid", None)
            if isinstance(ids, dict):
                self._by_id = {v: k for k, v in list(ids.items())}
                job = self._by_id.get(jobid)
        return job


def _current_dag() -> Any:
    # Looked up per job: sys.modules is cheaper than an import statement's module lock.
    workflow_module = sys.modules.get("snakemake.workflow")
    workflow = getattr(workflow_module, "workflow", None)
    return getattr(workflow, "dag", None) if workflow is not None else None


def job_details(job: Any) -> dict[str, Any]:
    """Params, code digest and software environment of ``job`` (never raises)."""
    details: dict[str, Any] = {}
    if job is None:
        details["details_error"] = "job not found in the workflow's DAG"
        return details
    try:
        details["params"] = _params(job)
        details.update(rule_code(job))
        temp = [os.path.abspath(f) for f in (*job.input, *job.output) if getattr(f, "flags", {}).get("temp")]
        if temp:
            details["temp_files"] = sorted(set(temp))
        conda = job.conda_env_spec
        if conda:
            details["conda_env"] = str(conda)
        container = job.container_img_url
        if container:
            details["container"] = str(container)
    except Exception as err:  # noqa: BLE001 - a detail we cannot read must not lose the job
        details["details_error"] = f"{type(err).__name__}: {err}"
    return details


def rule_code(job: Any) -> dict[str, Any]:
    """The code of ``job``'s rule, and nothing else: ``code_kind`` and ``code_digest``.

    For ``shell:`` the digest is of the rule's command *template* (``rule.shellcmd``, as
    written, before ``{threads}``, ``{wildcards}``, ``{resources}`` or ``{input}`` are filled
    in); for ``script:`` of the script file's bytes; for ``run:`` of the block's source. What
    the template is filled with is a parameter (:meth:`JobReport.parameters`). The pre-run
    check calls this too, to compare a kept output's producer with the rule as it is now.
    """
    rule = job.rule
    details: dict[str, Any] = {}
    if rule.shellcmd:
        details["code_kind"] = "shell"
        details["code_digest"] = code_digest(rule.shellcmd)
    elif getattr(rule, "script", None):
        details["code_kind"] = "script"
        script_path = _script_path(job, rule.script)
        details["script"] = script_path
        digest = _file_digest(script_path) if script_path else None
        details["script_digest"] = digest
        details["code_digest"] = digest or code_digest(str(rule.script))
    elif getattr(rule, "run_func_src", None):
        details["code_kind"] = "run"
        details["code_digest"] = code_digest(rule.run_func_src)
    elif getattr(rule, "wrapper", None) or getattr(rule, "notebook", None):
        details["code_kind"] = "wrapper" if rule.wrapper else "notebook"
        details["code_digest"] = code_digest(str(rule.wrapper or rule.notebook))
    else:
        details["code_kind"] = "none"
    return details


def _params(job: Any) -> dict[str, Any]:
    params = job.params
    named = dict(params._names.items()) if hasattr(params, "_names") else {}
    out: dict[str, Any] = {}
    for name, (start, end) in named.items():
        value = params[start] if end is None else list(params[start:end])
        out[name] = value if not callable(value) else f"<function {getattr(value, '__name__', '?')}>"
    positional = [params[i] for i in range(len(params)) if not any(
        (s == i if e is None else s <= i < e) for s, e in named.values())]
    if positional:
        out["_positional"] = positional
    return out


def _script_path(job: Any, script: str) -> str | None:
    source = job._path_to_source_file(script)
    path = source.get_path_or_uri(secret_free=True)
    return os.path.abspath(path) if os.path.exists(path) else None


@lru_cache(maxsize=256)
def _script_digest(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as handle:
        return code_digest(handle.read())


def _file_digest(path: str) -> str | None:
    # Scripts are small and shared by many jobs: read once per version, not once per job.
    try:
        st = os.stat(path)
        return _script_digest(path, st.st_mtime_ns, st.st_size)
    except OSError:
        return None
