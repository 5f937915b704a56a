"""nextflow-ledger and retries of a scatter whose tasks share one name.

A process run over many samples with a constant ``tag`` names every task ``SCATTER
(batch)``. With ``errorStrategy 'retry'`` the wrapper counted retries per name, so a first
try of one sample took the attempt number of another sample's retry: six samples, two of
them retried, gave three first tries "attempt 2" and one "attempt 3" (found here). Each
try's attempt now comes from Nextflow's own submission and retry lines (``_attempts``).

The tries here end in the one order that the wrapper once got wrong (a CI run under load hit
it by chance): sample d fails first, then b; b's retry ends before d's, and fails again. The
first retry to end was matched with the first failed try noted, d's, whose script differs:
b's own first try was left waiting beside its second, and the next retry to end, d's or
b's third try, was said to be a guess (``extra.attempt_guessed``), b's third try attempt 2.
Each try waits for what must come before it (a line of Nextflow's log, a sample's count of
tries), so the order does not depend on the machine's load.

Real ``nextflow-ledger`` runs (tests/support/nextflow.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

# Each sample counts its tries in a file of its own (the script never names task.attempt, so a
# retry runs the same script as the try before it, as most pipelines' retries do). Sample b
# fails twice, d once; the others succeed at once. b's first try fails only once Nextflow has
# logged that it retries d's (the only failure before it), and d's retry ends only once b's
# third try has begun (b's second failed and was said retried before that): a try that waits
# in vain exits 9 after two minutes, and the test fails on its tries.
PIPELINE = """
params.counts = "counts"
process SCATTER {
  tag 'batch'
  errorStrategy 'retry'
  maxRetries 3
  input: val s
  output: path "${s}.txt"
  script:
  \"\"\"
  echo sample=${s}
  until_true() { for i in \\$(seq 1200); do if "\\$@"; then return 0; fi; sleep 0.1; done; echo "waited in vain: \\$*" >&2; exit 9; }
  tries_of() { [ "\\$(cat ${params.counts}/\\$1 2>/dev/null || echo 0)" -ge \\$2 ]; }
  n=\\$(( \\$(cat ${params.counts}/${s} 2>/dev/null || echo 0) + 1 ))
  echo \\$n > ${params.counts}/${s}
  if [ ${s} = b ] && [ \\$n = 1 ]; then until_true grep -qF 'Execution is retried (1)' '${workflow.launchDir}/.nextflow.log'; fi
  if [ ${s} = d ] && [ \\$n = 2 ]; then until_true tries_of b 3; fi
  if [ ${s} = b ] && [ \\$n -lt 3 ]; then exit 3; fi
  if [ ${s} = d ] && [ \\$n -lt 2 ]; then exit 3; fi
  echo ${s} \\$n > ${s}.txt
  \"\"\"
}
workflow { SCATTER(Channel.of('a', 'b', 'c', 'd', 'e', 'f')) }
"""
# b's first try and d's retry each hold one of the local executor's slots while they wait
# (as many as the machine has processors): four, so that a machine of one or two never stalls.
CONFIG = "executor.cpus = 4\n"

WANTED = {"a": [(1, "succeeded")], "b": [(1, "failed"), (2, "failed"), (3, "succeeded")], "c": [(1, "succeeded")],
          "d": [(1, "failed"), (2, "succeeded")], "e": [(1, "succeeded")], "f": [(1, "succeeded")]}


def test_retries_of_tasks_of_one_name_get_their_own_attempt_numbers(tmp_path):
    nf.require_nextflow()
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(PIPELINE)
    (here / "nextflow.config").write_text(CONFIG)
    counts = tmp_path / "counts"
    counts.mkdir()
    result = nf.run("nextflow-ledger", "run", "main.nf", "--counts", str(counts), cwd=here, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recorded 9 task try(s)" in result.stderr, result.stderr
    assert _ends(here) == ["d1", "b1", "b2", "b3", "d2"], _ends(here)  # the order this test is about
    tries: dict[str, list[tuple[int, str]]] = {}
    for record in nf.records(here):
        if record["task_name"] != "SCATTER":
            continue
        assert record["extra"]["name"] == "SCATTER (batch)"
        (sample,) = re.findall(r"sample=(\w)", record["extra"]["script"])
        tries.setdefault(sample, []).append((record["attempt"], record["status"]))
        assert "attempt_guessed" not in record["extra"], record["extra"]
        if record["status"] == "succeeded":  # the try that wrote it says which try it was
            (made,) = [Path(p) for p in nf.files_written(record)]
            assert made.read_text().split() == [sample, str(record["attempt"])]
    assert {sample: sorted(found) for sample, found in tries.items()} == WANTED


def _ends(here: Path) -> list[str]:
    """Samples b's and d's tries in the order Nextflow logged their ends (the last two, which
    may end either way, sorted)."""
    ends: list[str] = []
    for line in (here / ".nextflow.log").read_text().splitlines():
        found = re.search(r"Task completed > .*; workDir: (.*)\]$", line)
        if found:
            (sample,) = re.findall(r"sample=(\w)", (Path(found.group(1)) / ".command.sh").read_text())
            if sample in ("b", "d"):
                ends.append(f"{sample}{sum(end[0] == sample for end in ends) + 1}")
    return ends[:3] + sorted(ends[3:])
