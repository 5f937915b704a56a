"""The attempt numbers of retries of tasks that share a name, whatever order their tries end in.

Nextflow's log, as ``nextflow-ledger`` follows it (the plugin's own reader and recorder, a
real ledger), in the order a CI run under load once got and the deployed test
(tests/test_nextflow_deployed_retries.py) now forces with a real Nextflow: sample d's first
try fails and is said retried before b's; b's retry ends first and fails again; then b's third
try and d's retry end. Here without Nextflow, so that the order is checked where Nextflow is
not built too, and with scripts that name the attempt (``${task.attempt}``, or a memory
setting that grows with it, as many pipelines' do), where a retry's script is not its failed
try's and nothing in the log tells the two samples' tries apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
NAME = "SCATTER (batch)"

#: sample and attempt of each try, by the work directory's hash.
TRIES = {"d1": ("d", 1), "b1": ("b", 1), "b2": ("b", 2), "b3": ("b", 3), "d2": ("d", 2)}
EXITS = {"d1": 3, "b1": 3, "b2": 3, "b3": 0, "d2": 0}


def _key(label: str) -> str:
    return label + "0" * 29 + "1"  # a full hash: 32 hex digits, ab/cdef... as the work directory


def _short(label: str) -> str:
    key = _key(label)
    return f"{key[:2]}/{key[2:8]}"


def _log_lines(work: Path) -> list[str]:
    """Nextflow's own lines (25.04) for those tries, in the order of the CI run that failed."""
    def submitted(label: str, again: bool = False) -> str:
        how = "Re-submitted" if again else "Submitted"
        return f"Dec-07 20:20:30.237 [Task submitter] INFO  nextflow.Session - [{_short(label)}] {how} process > {NAME}"

    def completed(label: str, task_id: int) -> str:
        workdir = work / _key(label)[:2] / _key(label)[2:]
        return (f"Dec-07 20:20:31.383 [Task monitor] DEBUG n.processor.TaskPollingMonitor - Task completed > "
                f"TaskHandler[id: {task_id}; name: {NAME}; status: COMPLETED; exit: {EXITS[label]}; error: -; "
                f"workDir: {workdir}]")

    def retried(label: str, failed_tries: int) -> str:
        return (f"Dec-07 20:20:31.900 [TaskFinalizer-2] INFO  nextflow.processor.TaskProcessor - [{_short(label)}] "
                f"NOTE: Process `{NAME}` terminated with an error exit status (3) -- Execution is retried "
                f"({failed_tries})")

    return [submitted("b1"), submitted("d1"), completed("b1", 1), completed("d1", 2),
            retried("d1", 1), submitted("d2", again=True), retried("b1", 1), submitted("b2", again=True),
            completed("b2", 4), retried("b2", 2), submitted("b3", again=True), completed("b3", 5),
            completed("d2", 3)]


@pytest.mark.parametrize("names_attempt", [False, True], ids=["same-script-each-try", "script-names-the-attempt"])
def test_retries_that_end_in_another_order_than_their_failures_get_their_attempts(tmp_path, names_attempt):
    from lineage_ledger_nextflow._log import LogFollower
    from lineage_ledger_nextflow._tasks import TaskRecorder

    from lineage_ledger import TaskCapture

    work = tmp_path / "work"
    for label, (sample, attempt) in TRIES.items():
        path = work / _key(label)[:2] / _key(label)[2:]
        path.mkdir(parents=True)
        said = f" attempt={attempt}" if names_attempt else ""
        (path / ".command.sh").write_text(f"echo sample={sample}{said}\n")  # its exit: .exitcode
        (path / ".exitcode").write_text(str(EXITS[label]))
    log = tmp_path / ".nextflow.log"
    log.write_text("\n".join(_log_lines(work)) + "\n")
    url = str(tmp_path / "ledger.db")
    with TaskCapture(url, engine="nextflow", raise_errors=True) as capture:
        recorder = TaskRecorder(capture, {})
        follower = LogFollower(str(log), recorder, stale=None)
        follower.start()
        follower.stop()  # reads the whole log, its last line too
        recorder.finish()
    listed = subprocess.run([str(BIN / "lineage-ledger"), "log", "-n", "0", "--json", "--ledger", url],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    found = {}
    for record in map(json.loads, listed.splitlines()):
        label = Path(record["extra"]["workdir"]).parent.name[:2]
        found[label] = (record["attempt"], record["status"], bool(record["extra"].get("attempt_guessed")))
    assert set(found) == set(TRIES), found
    for label in ("d1", "b1", "b2"):  # a failed try's number is Nextflow's own (Execution is retried (N))
        assert found[label] == (TRIES[label][1], "failed", False), (label, found)
    if not names_attempt:  # each retry's script is its failed try's: known, never guessed
        assert found["b3"] == (3, "succeeded", False) and found["d2"] == (2, "succeeded", False), found
    else:  # nothing tells b's tries from d's: a retry's number is right or said to be a guess, never wrong unsaid
        for label in ("b3", "d2"):
            attempt, status, guessed = found[label]
            assert status == "succeeded" and (attempt == TRIES[label][1] or guessed), (label, found)
