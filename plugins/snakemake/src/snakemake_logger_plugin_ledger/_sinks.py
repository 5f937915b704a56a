"""Where the plugin sends finished jobs: the recording process, or (fallback) its own threads."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from typing import IO, Any

from ._boot import module_command
from ._sidecar import Orphans, RecordingQueue

log = logging.getLogger("lineage_ledger.snakemake")


class SidecarSink:
    """Sends each job line to the sidecar process (``snakemake_logger_plugin_ledger._sidecar``)."""

    def __init__(self, config: dict[str, Any], journal_fd: int | None) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        # The child finds this package where Snakemake's process found it.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        fds = (journal_fd,) if journal_fd is not None else ()
        self.process = subprocess.Popen(
            # Not ``-m``: it put the workflow's directory first on sys.path (see _boot).
            module_command("snakemake_logger_plugin_ledger._sidecar", json.dumps({**config, "journal_fd": journal_fd})),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds, env=env, text=True,
        )
        self.timeout = float(config.get("flush_timeout", 300.0))
        assert self.process.stdin is not None
        self._stdin: IO[str] = self.process.stdin
        self._fd = self._stdin.fileno()

    def send(self, line: str) -> None:
        # One write(2) (raises BrokenPipeError if the process is gone); a job line is small.
        data = (line + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])

    def close(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(timeout=self.timeout + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            return {"error": "the recording process did not finish in time; killed"}
        except BrokenPipeError:
            self.process.wait()
            out = self.process.stdout.read() if self.process.stdout else ""
        lines = (out or "").strip().splitlines()
        if self.process.returncode != 0 or not lines:
            return {"error": f"the recording process ended with status {self.process.returncode}"}
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary


class InProcessSink:
    """The same recording on this process's threads, when the recording process cannot run."""

    def __init__(self, config: dict[str, Any], journal: Any) -> None:
        from lineage_ledger import TaskCapture

        from ._journal import decode_run
        from ._started import StartedInputs

        self._decode = decode_run
        self.started = StartedInputs()
        self.journal = journal
        capture = TaskCapture(config.get("url"), engine="snakemake", run_id=config["run_id"],
                              threads=int(config.get("threads", 4)), stamp_seen=False)
        self.queue = RecordingQueue(capture, self._done)
        self.orphans = Orphans()
        self.timeout = float(config.get("flush_timeout", 300.0))

    def _done(self, key: str, record_id: str | None) -> None:
        if record_id is not None and self.journal is not None and not key.startswith("orphan:"):
            self.journal.done(key)

    def send(self, line: str) -> None:
        from ._unverified import fill_digests

        message = json.loads(line)
        if "start" in message:
            self.started.start(message)
            return
        self.started.apply(message["run"])
        fill_digests(message["run"])
        future = self.queue.add(message["job"], self._decode(message["run"]))
        if message.get("orphan"):
            self.orphans.add(message["orphan"], future)

    def close(self) -> dict[str, Any]:
        self.started.close()
        summary = self.queue.close(self.timeout)
        self.orphans.retire()
        return summary
