"""The command line of ``nextflow-ledger``: Nextflow's own, plus ``--ledger`` and ``--ledger-policy``.

    nextflow-ledger [NEXTFLOW OPTIONS] run PIPELINE [RUN OPTIONS] [--ledger URL] [--ledger-policy P]

Our two flags may stand anywhere; everything else goes to ``nextflow`` unchanged, with
``-trace nextflow.processor.PublishDir`` (the published files, see ``_log``) added to
Nextflow's options before ``run``. Pipeline parameters named
``--ledger`` or ``--ledger-policy`` are taken by the wrapper.
"""

from __future__ import annotations

import os
import re

POLICIES = ("warn", "strict", "rerun", "off")
#: The logger whose TRACE lines name each published file (``_log``); turned on with ``-trace``.
PUBLISH_LOGGER = "nextflow.processor.PublishDir"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Nextflow's options before `run` that take a value (so that the value is not taken for `run`).
_TOP_WITH_VALUE = {"-c", "-config", "-C", "-log", "-trace", "-D", "-bg-log", "-remote-debug"}


class UsageError(Exception):
    """Bad command line: exit status 2."""


class Command:
    """The parsed command line. A plain class, not a dataclass: this module is imported before
    Nextflow starts, and ``dataclasses`` (with ``inspect``) would delay the JVM's start."""

    def __init__(self, top: list[str], run: list[str], ledger: str | None = None, policy: str = "warn") -> None:
        self.top = top  # Nextflow's options before `run`
        self.run = run  # `run`'s arguments: the pipeline and its options
        self.ledger = ledger
        self.policy = policy
        self.resume = False
        self.resume_session: str | None = None
        #: Nextflow's log, where the user named it: ``-log``, else ``$NXF_LOG_FILE`` (Nextflow's
        #: own order); None: ``.nextflow.log``. Every task is recorded from it (``_log``).
        self.log_file: str | None = None
        self.work_dir: str | None = None  # run's -w / -work-dir, if the user gave one
        #: The options that choose the run's configuration, for ``nextflow config``: the
        #: configuration files (``-c``/``-config`` before or after ``run``, ``-C``), as options
        #: before ``config``, and ``-profile``, after it (``_recovered.configured_work_dir``).
        self.config_files: list[str] = []
        self.profile: list[str] = []
        self.params: dict[str, str] = {}  # --name value pairs for the records


def parse(argv: list[str]) -> Command:
    rest: list[str] = []
    ledger = None
    policy = os.environ.get("NEXTFLOW_LEDGER_POLICY", "warn")
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--ledger", "--ledger-policy"):
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                value = argv[i + 1]
                i += 1
            if name == "--ledger":
                ledger = value
            else:
                policy = value
        else:
            rest.append(arg)
        i += 1
    if policy not in POLICIES:
        raise UsageError(f"--ledger-policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    position = _run_position(rest)
    if position is None:
        raise UsageError("no `run PIPELINE` in the command line (nextflow-ledger records `nextflow run`)")
    top, run = rest[:position], rest[position + 1:]
    if not run or run[0].startswith("-"):
        raise UsageError("`run` needs the pipeline (a main.nf or a directory) first")
    if "-bg" in top or "-bg" in run:
        raise UsageError("-bg is not supported: the wrapper follows the run until Nextflow exits "
                         "(run nextflow-ledger itself in the background instead)")
    command = Command(top=top, run=run, ledger=ledger, policy=policy)
    for j, arg in enumerate(top):
        if arg == "-log" and j + 1 < len(top):
            command.log_file = top[j + 1]
        elif arg in ("-c", "-config", "-C") and j + 1 < len(top):
            command.config_files += [arg, top[j + 1]]
    if command.log_file is None:
        command.log_file = os.environ.get("NXF_LOG_FILE") or None
    for j, arg in enumerate(run[1:], start=1):
        if arg == "-resume" or arg.startswith("-resume="):
            command.resume = True
            value = arg.partition("=")[2] or (run[j + 1] if j + 1 < len(run) else "")
            if _UUID.match(value):
                command.resume_session = value
        elif arg in ("-w", "-work-dir") and j + 1 < len(run):
            command.work_dir = run[j + 1]
        elif arg in ("-c", "-config") and j + 1 < len(run):
            command.config_files += ["-c", run[j + 1]]  # run's (hidden) -c adds a file as the top-level one does
        elif arg == "-profile" and j + 1 < len(run):
            command.profile = [arg, run[j + 1]]
        elif arg == "-params-file" and j + 1 < len(run):
            command.params["-params-file"] = os.path.abspath(run[j + 1])  # its values are not read
        elif arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if not eq:
                following = run[j + 1] if j + 1 < len(run) else None
                value = following if following is not None and not following.startswith("-") else "true"
            command.params[key] = value
    return command


def _run_position(args: list[str]) -> int | None:
    i = 0
    while i < len(args):
        if args[i] == "run":
            return i
        i += 2 if args[i] in _TOP_WITH_VALUE else 1
    return None


def nextflow_args(command: Command, publish_trace: str) -> list[str]:
    """The arguments for ``nextflow``: the user's, with the publishing logger at TRACE level."""
    top = list(command.top)
    for j, arg in enumerate(top):
        if arg == "-trace" and j + 1 < len(top):
            top[j + 1] = f"{top[j + 1]},{publish_trace}"
            break
    else:
        top += ["-trace", publish_trace]
    return [*top, "run", *command.run]


def absolute_url(url: str | None, launch_dir: str) -> str:
    """A relative ledger path means the launch directory (as for the other plugins)."""
    if url is None:
        url = os.environ.get("LINEAGE_LEDGER_URL") or os.path.join(".lineage", "ledger.db")
    if "://" not in url:
        return os.path.join(launch_dir, url) if not os.path.isabs(url) else url
    if url.startswith("sqlite:///") and not url[len("sqlite:///"):].startswith("/"):
        return "sqlite:///" + os.path.join(launch_dir, url[len("sqlite:///"):])
    return url
