"""The plugin's handler and settings, as Snakemake's logger-plugin registry finds them on the
package (see the package's docstring; the package reaches them here only when asked, so that
the recording process, a module of the package, does not import Snakemake's plugin interface).
"""

# No `from __future__ import annotations`: Snakemake builds CLI flags from the real field types.
import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

__all__ = ["LogHandler", "LogHandlerSettings"]

log = logging.getLogger("lineage_ledger.snakemake")

_EVENTS = frozenset({"job_info", "job_finished", "job_error"})


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    url: str | None = field(
        default=None,
        metadata={
            "help": "Ledger URL (sqlite:///path, postgresql://..., memory://). "
            "Default: $LINEAGE_LEDGER_URL, else .lineage/ledger.db in the working directory.",
            "env_var": True,
            "type": str,
        },
    )
    policy: str = field(
        default="warn",
        metadata={
            "help": "What to do when a file the run will consume or keep differs from the ledger's "
            "last record of it, checked after Snakemake builds the DAG and before any job runs: "
            "warn (log it and run), strict (refuse: name the files, exit 1, run nothing), rerun "
            "(run again the jobs that produce them), off (no check).",
            "env_var": True,
            "type": str,
            "choices": ["warn", "strict", "rerun", "off"],
        },
    )
    run_id: str | None = field(
        default=None,
        metadata={
            "help": "Run id written into every record of this run (default: $LINEAGE_RUN_ID, else a new uuid).",
            "env_var": True,
            "type": str,
        },
    )
    hash_threads: int = field(
        default=4,
        metadata={"help": "Threads that hash job files and write records, off Snakemake's logging thread.",
                  "type": int},
    )
    flush_timeout: float = field(
        default=300.0,
        metadata={"help": "Seconds to wait at the end of the run for pending records; what is not "
                  "written by then stays in the durable spool and ships at the next open.", "type": float},
    )


def _refuse_a_bad_configuration(url: str | None) -> None:
    """Stop Snakemake before it runs anything when no retry can make the ledger URL work (it
    cannot be parsed, names an unknown scheme, or needs an extra that is not installed): the
    records of the whole run would be lost. An unreachable or locked ledger is no reason:
    records wait in the spool until it takes them."""
    from ._urls import surely_usable

    if surely_usable(url):
        return  # an SQLite file path: nothing to import to know it (see _urls)
    try:
        from lineage_ledger._errors import ConfigError
        from lineage_ledger._ledger.deferred import _default_url, ledger_identity

        try:
            ledger_identity(_default_url(url))
        except ConfigError as err:
            message = (f"lineage-ledger: refusing to run: the ledger URL cannot be used "
                       f"(--logger-ledger-url / $LINEAGE_LEDGER_URL): {err}")
            print(message, file=sys.stderr, flush=True)
            raise SystemExit(2) from err
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - a check that fails by itself must not stop the workflow
        log.exception("lineage-ledger: could not check the ledger URL")


class LogHandler(LogHandlerBase):
    """Records Snakemake jobs; never raises into Snakemake."""

    settings: LogHandlerSettings

    def __post_init__(self) -> None:
        self.settings = self.settings or LogHandlerSettings()
        self.active = not bool(getattr(self.common_settings, "dryrun", False))  # dry runs record nothing
        self.recorder: Any = None  # a _recorder.JobRecorder from the first job event on
        self.listener_cpu = 0.0  # CPU seconds of emit() on Snakemake's log listener thread
        self.policy_hook: Any = None
        self.temp_hook: Any = None
        self.recent_errors: deque[tuple[float, str]] = deque(maxlen=32)  # Snakemake's error texts
        self.touch: bool | None = None  # a --touch run, once the first job event says (see _outside)
        if self.active:
            _refuse_a_bad_configuration(self.settings.url)
            from ._eager import TempOutputHook

            self.temp_hook = TempOutputHook(self._workflow_started)
            self.temp_hook.attach()
        if self.settings.policy != "off":
            from ._preflight import PolicyHook

            self.policy_hook = PolicyHook(self.settings.policy, self.settings.url)
            self.policy_hook.attach()
        quiet = getattr(self.common_settings, "quiet", None) or ()
        if self.active and any(getattr(q, "name", str(q)).lower() == "progress" for q in quiet):
            log.warning(
                "lineage-ledger: with --quiet progress (or -q) Snakemake reports no finished jobs to "
                "logger plugins; their records are written at the end of the run from Snakemake's "
                "metadata, and temp() files deleted by then are recorded without digests")

    # -- the LogHandlerBase contract ----------------------------------------------------
    @property
    def writes_to_stream(self) -> bool:
        return False

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True  # sees every event, whatever Snakemake's quietness settings

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        # Makes Snakemake log a rulegraph event between building the DAG and running it: the
        # moment the policy hook acts (see _preflight).
        return self.policy_hook is not None

    def emit(self, record: logging.LogRecord) -> None:
        if not self.active:
            return
        event = str(getattr(record, "event", "") or "")
        if event not in _EVENTS:
            if event == "error":  # the text of a job's exception comes just before its job_error
                self.recent_errors.append((record.created, str(record.msg)))
            return
        began = time.thread_time()
        try:
            if self._touch_only():
                return
            if self.recorder is None:
                self._make_recorder()
            self._say_if_policy_not_applied()
            self.recorder.handle(event, record)
        except Exception:  # noqa: BLE001 - the workflow must go on; say so once, loudly
            log.exception("lineage-ledger: could not handle Snakemake's %s event; recording stops", event)
            self.active = False
        finally:
            self.listener_cpu += time.thread_time() - began

    def _touch_only(self) -> bool:
        """``--touch`` runs no job; its jobs' "finished" events would record the files' current
        digests as their rules' products, an edited file included: nothing is recorded."""
        if self.touch is None:
            from ._outside import touch_run

            self.touch = touch_run()
            if self.touch:
                log.warning("lineage-ledger: --touch runs no job (it only marks outputs up to date): nothing "
                            "is recorded, and the ledger keeps what the jobs last wrote")
        return self.touch

    def _make_recorder(self) -> None:
        from ._recorder import JobRecorder

        self.recorder = JobRecorder(self.settings, self.temp_hook, self.recent_errors, self.policy_hook)

    def _workflow_started(self, now: float) -> None:
        """On Snakemake's main thread, in its workdir, before the DAG is built."""
        if not self.active or self._nothing_recordable():
            return
        if self.recorder is None:
            self._make_recorder()
        self.recorder.start(now)

    def _nothing_recordable(self) -> bool:
        """Whether no job of this run could be recorded here (a working directory or a ledger
        whose path is not UTF-8: see _unrecordable); then recording stops before anything is
        made, said once, instead of each job's record being refused after it ran."""
        from ._unrecordable import SAID, why_nothing_is_recorded

        reason = why_nothing_is_recorded(self.settings.url)
        if reason is None:
            return False
        self.active = False
        if self.settings.policy != "strict":  # strict: the policy hook refuses to start, saying why
            log.warning("lineage-ledger: %s: %s; its jobs run unrecorded", SAID, reason)
        return True

    def _say_if_policy_not_applied(self) -> None:
        hook = self.policy_hook
        if hook is not None and not hook.applied and not hook.warned_not_applied:
            hook.warned_not_applied = True
            log.warning(
                "lineage-ledger: --logger-ledger-policy %s was NOT applied: jobs run, but Snakemake "
                "did not log its rulegraph event between building the DAG and scheduling (a "
                "Snakemake that moved that event, or a caller of its API that skips Workflow."
                "execute's usual order); use `snakemake-ledger`, or check with `verify-lineage`",
                self.settings.policy)

    def close(self) -> None:
        try:
            if self.recorder is not None:
                self.recorder.close()
            self._report_cost()
        except Exception:  # noqa: BLE001
            log.exception("lineage-ledger: error while flushing the ledger")
        finally:
            self._release_hooks()
            super().close()

    def _release_hooks(self) -> None:
        # A later SnakemakeApi in this process makes its own handler: ours must not linger
        # on Snakemake's logger.
        for hook in (self.policy_hook, self.temp_hook):
            if hook is not None:
                hook.detach()
        self.policy_hook = self.temp_hook = None

    def _report_cost(self) -> None:
        """What the plugin cost Snakemake's process, for bench/bench_snakemake.py."""
        path = os.environ.get("LINEAGE_SNAKEMAKE_COST_FILE")
        if not path or self.policy_hook is None and self.temp_hook is None:
            return  # not asked, or a second close(): the first one reported
        recorder = self.recorder
        cost = {
            "listener_cpu": self.listener_cpu,
            "main_thread_cpu": getattr(self.temp_hook, "cpu", 0.0) + getattr(self.policy_hook, "cpu", 0.0),
            "policy_cpu": getattr(self.policy_hook, "cpu", 0.0),
            "jobs": getattr(recorder, "jobs_sent", 0),
            "recording_process_cpu": (getattr(recorder, "summary", None) or {}).get("cpu"),
            "close_wait": getattr(recorder, "close_wait", 0.0),
        }
        with open(path, "w", encoding="utf-8") as out:
            json.dump(cost, out)
