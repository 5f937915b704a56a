"""nextflow-ledger times its records by the clock of the head node, where it runs.

A task's record took its times from the modification times of ``.command.begin`` and
``.exitcode``, which the file server holding the work directory sets by its own clock;
every other recorder on the head node (the wrapper's own publication records, ``lineage-ledger
run``, Snakemake, a colleague's runs) times its records by the head node's. With the file
server's clock an hour ahead, a task that read ``data/ref.txt`` counted as having seen it an
hour after a colleague, whose records it could not have seen nor they its, rewrote it on
the head node: ``verify-lineage data/ref.txt`` compared the new file with what the task had
read, failed it as MODIFIED (exit 1), and passed the old version put back (exit 0). The
ledger's own order (``core/_order.py``) decides only between records where one recorder had
seen the other; between the others the clocks decide, and they must be one clock. Found here.

The clocks are real: the recorders run under ``faketime`` an hour behind the system clock,
while Nextflow and its tasks (and so the work directory's modification times) keep the
system's, as on a cluster whose head node's clock lags the file server's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

FAKETIME = shutil.which("faketime")
HEAD_CLOCK = "-1h"  # the head node's clock, against the file server's (the system's)

PIPELINE = """
process READ {
  input: path 'ref.txt'
  output: path 'kept.txt'
  script: "cp ref.txt kept.txt"
}
workflow { READ(file('data/ref.txt')) }
"""


def _on_head(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert FAKETIME is not None
    done = subprocess.run([FAKETIME, "-f", HEAD_CLOCK, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.skipif(FAKETIME is None, reason="faketime (libfaketime) is not installed")
def test_a_task_is_timed_by_the_head_nodes_clock_as_the_other_recorders_there(tmp_path):
    nextflow = nf.require_nextflow()
    here = tmp_path / "pipeline"
    (here / "data").mkdir(parents=True)
    (here / "main.nf").write_text(PIPELINE)
    ref = here / "data" / "ref.txt"
    # Nextflow (a JVM) and its tasks on the system's clock, the file server's; libfaketime
    # is not passed on to it.
    real_clock = tmp_path / "nextflow-real-clock"
    real_clock.write_text(f'#!/bin/sh\nexec env -u LD_PRELOAD -u FAKETIME "{nextflow}" "$@"\n')
    real_clock.chmod(0o755)
    env = nf.env(here, LINEAGE_NEXTFLOW=str(real_clock), LINEAGE_STATE_DIR=str(tmp_path / "state"),
                 FAKETIME_DONT_FAKE_MONOTONIC="1")
    # A colleague on the head node, with a spool and a trusted state of their own (they see
    # none of this user's records, nor this user theirs, but through the ledger).
    colleague = {**env, "LINEAGE_LEDGER_URL": f"sqlite:///{here}/.lineage/ledger.db",
                 "LINEAGE_SPOOL": str(tmp_path / "colleague-spool"),
                 "LINEAGE_STATE_DIR": str(tmp_path / "colleague-state")}
    write = [str(nf.BIN / "lineage-ledger"), "run", "-o", "data/ref.txt", "--", "sh", "-c"]
    _on_head([*write, "echo release-1 > data/ref.txt"], here, colleague)
    ran = _on_head([str(nf.BIN / "nextflow-ledger"), "run", "main.nf"], here, env)
    assert "recorded 1 task try(s)" in ran.stderr, ran.stderr
    _on_head([*write, "echo release-2 > data/ref.txt"], here, colleague)

    current = nf.run("verify-lineage", "data/ref.txt", cwd=here)
    ref.write_text("release-1\n")  # the old release put back
    put_back = nf.run("verify-lineage", "data/ref.txt", cwd=here)
    assert (current.returncode, put_back.returncode) == (0, 1), current.stdout + put_back.stdout
    assert "MODIFIED" in put_back.stdout, put_back.stdout

    # The task's record on the head node's clock, before the colleague's second write; the
    # work directory's own times kept beside.
    read = next(r for r in nf.records(here) if r["task_name"] == "READ")
    second = [r for r in nf.records(here) if r["task_name"] == "sh"][-1]
    assert datetime.fromisoformat(read["ended"]) <= datetime.fromisoformat(second["started"]), (read, second)
    times = read["extra"].get("file_server_times")
    assert times is not None and set(times) == {"command_begin", "exitcode"}, json.dumps(read["extra"])
    assert datetime.fromisoformat(times["exitcode"]) > datetime.fromisoformat(read["ended"])  # an hour ahead
