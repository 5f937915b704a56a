"""nextflow-ledger and retries of a scatter whose tasks share one name.

A process run over many samples with a constant ``tag`` names every task ``SCATTER
(batch)``. With ``errorStrategy 'retry'`` the wrapper counted retries per name, so a first
try of one sample took the attempt number of another sample's retry: six samples, two of
them retried, gave three first tries "attempt 2" and one "attempt 3" (found here). Each
try's attempt now comes from Nextflow's own submission and retry lines (``_attempts``).

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
# fails twice, d once; the others succeed at once.
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
  n=\\$(( \\$(cat ${params.counts}/${s} 2>/dev/null || echo 0) + 1 ))
  echo \\$n > ${params.counts}/${s}
  if [ ${s} = b ] && [ \\$n -lt 3 ]; then exit 3; fi
  if [ ${s} = d ] && [ \\$n -lt 2 ]; then exit 3; fi
  echo ${s} \\$n > ${s}.txt
  \"\"\"
}
workflow { SCATTER(Channel.of('a', 'b', 'c', 'd', 'e', 'f')) }
"""

WANTED = {"a": [(1, "succeeded")], "b": [(1, "failed"), (2, "failed"), (3, "succeeded")], "c": [(1, "succeeded")],
          "d": [(1, "failed"), (2, "succeeded")], "e": [(1, "succeeded")], "f": [(1, "succeeded")]}


def test_retries_of_tasks_of_one_name_get_their_own_attempt_numbers(tmp_path):
    nf.require_nextflow()
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(PIPELINE)
    counts = tmp_path / "counts"
    counts.mkdir()
    result = nf.run("nextflow-ledger", "run", "main.nf", "--counts", str(counts), cwd=here, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recorded 9 task try(s)" in result.stderr, result.stderr
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
