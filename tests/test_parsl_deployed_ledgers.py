"""One ledger shared as a group shares it: two workflows writing it at once, a ledger this
user may only read, and a cached result from Parsl's checkpoint edited by hand between two
Python processes.

* Two Parsl programs (two processes, two DataFlowKernels) record 150 tries each into one
  SQLite ledger at the same time: every try of each run is there exactly once, and the
  lineage of a file of each verifies.
* A ledger file this user may not write (``chmod 444``; root's power over file modes taken
  away with ``setpriv``): a ``strict`` run still checks its files against it, completes, and
  says once where its records wait; the next open of the ledger, writable again, ships
  every try, each once.
* A cached result restored from Parsl's checkpoint in a new process, its output edited by
  hand since: ``strict`` refuses it, naming the file.

All three held before this file; they pin what the plugin promises a shared deployment.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger import open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402
from tests.support.faults import without_root_file_powers  # noqa: E402

PROGRAM = """
    import os, sys
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def make(i, outputs=()):
        with open(outputs[0].filepath, "w") as handle:
            handle.write(str(i) + "\\n")
        return i

    tag, count, policy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ledger = ParslLedger({url!r}, policy=policy)
    dfk = parsl.load(pipeline.make_config(os.path.join({workdir!r}, tag), "threads", ledger))
    app = python_app(make, cache=True)
    futures = [app(i, outputs=[File(os.path.join({workdir!r}, tag + "-" + str(i) + ".txt"))]) for i in range(count)]
    try:
        print(dfk.run_id, sum(f.result() for f in futures), sep="|", flush=True)
    except Exception as error:
        print(dfk.run_id, "refused", type(error).__name__ + ": " + str(error), sep="|", flush=True)
    dfk.cleanup()
"""


def _setup(workdir: Path):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    (workdir / "run.py").write_text(textwrap.dedent(PROGRAM.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(workdir / "state")
    return url, env


def _start(workdir: Path, env, tag: str, count: int, policy: str = "strict", prefix=()) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, str(workdir / "run.py"), tag, str(count), policy], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[str, str, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    run_id, result = out.strip().splitlines()[-1].split("|", 1)
    return run_id, result, err


def _tries(url: str, run_id: str) -> collections.Counter:
    with open_ledger(url) as ledger:
        return collections.Counter((e.record.task_id, e.record.attempt, e.record.status) for e in ledger.run(run_id))


def test_two_workflows_in_two_processes_write_one_ledger_at_once(workdir):
    url, env = _setup(workdir)
    first, second = _start(workdir, env, "a", 150), _start(workdir, env, "b", 150)
    (run_a, sum_a, _), (run_b, sum_b, _) = _finish(first), _finish(second)
    assert sum_a == sum_b == str(sum(range(150)))
    for run_id in (run_a, run_b):
        tries = _tries(url, run_id)
        assert len(tries) == 150 and set(tries.values()) == {1}
        assert {status for _, _, status in tries} == {"succeeded"}
    run_cli("--ledger", url, str(workdir / "a-7.txt"), str(workdir / "b-149.txt"), program="verify-lineage",
            cwd=workdir, check_rc=0)


def test_a_ledger_this_user_may_only_read_never_stops_a_strict_run(workdir):
    url, env = _setup(workdir)
    assert _finish(_start(workdir, env, "a", 5))[1] == "10"
    (workdir / "ledger.db").chmod(0o444)
    try:
        run_id, result, err = _finish(_start(workdir, env, "b", 5, prefix=without_root_file_powers()))
    finally:
        (workdir / "ledger.db").chmod(0o644)
    assert result == "10", "the run was stopped by a ledger it may only read"
    assert err.count("did not take this run's records in time") == 1, err[-3000:]
    waiting = [p for p in (workdir / ".lineage" / "spool").rglob("*.log") if p.stat().st_size]
    assert waiting, "the tries were not kept in the spool"
    # The next open of the ledger, writable again, ships them.
    assert sorted(_tries(url, run_id).values()) == [1] * 5


def test_a_checkpointed_result_whose_output_was_edited_by_hand_is_refused_in_a_new_process(workdir):
    url, env = _setup(workdir)
    assert _finish(_start(workdir, env, "a", 3))[1] == "3"
    run_id, result, _ = _finish(_start(workdir, env, "a", 3))
    assert result == "3" and {s for _, _, s in _tries(url, run_id)} == {"cached"}
    (workdir / "a-1.txt").write_text("edited by hand\n")
    run_id, result, _ = _finish(_start(workdir, env, "a", 3))
    assert result.startswith("refused|ArtifactMismatch") and "a-1.txt" in result, result
    assert ("1", 1, "failed") in _tries(url, run_id)
