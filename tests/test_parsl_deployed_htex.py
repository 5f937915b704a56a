"""HighThroughputExecutor as a group runs it: several workers per node, a workflow of fan-out,
gather and plain-value apps, and a DataFlowKernel cleaned up while tries are still running.

* Four workers (``max_workers_per_node=4``) run a fan-out of apps that each write a ``File``,
  a gather app that reads all of them through ``inputs=[DataFuture, ...]``, apps that return
  values only, and a ``join_app`` that launches two of those: each try is recorded exactly
  once, with its code digest, parameters and the BLAKE3 digests the workers took, and the
  lineage of the gathered file verifies.
* ``dfk.cleanup()`` called while tries still run: it returns, no interchange or worker
  outlives it, every try that ended is in the ledger once, and none is recorded twice.
"""

from __future__ import annotations

import collections
import os
import time

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import join_app, python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from lineage_ledger import code_digest, hash_file, open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pytestmark = pytest.mark.slow
pipeline = support.load_pipeline()


def part(i: int, outputs=()) -> int:
    with open(outputs[0].filepath, "w") as handle:
        handle.write(f"part {i}\n")
    return i


def gather(inputs=(), outputs=()) -> int:
    lines = []
    for item in inputs:
        with open(item.filepath) as handle:
            lines.append(handle.read())
    with open(outputs[0].filepath, "w") as handle:
        handle.write("".join(lines))
    return len(lines)


def square(x: int, scale: float = 1.0) -> float:
    return x * x * scale


def both(x: int):
    return [python_app(square, executors=["htex"])(x), python_app(square, executors=["htex"])(x + 1)]


def nap(i: int, seconds: float, outputs=()) -> int:
    time.sleep(seconds)
    with open(outputs[0].filepath, "w") as handle:
        handle.write(f"{i}\n")
    return i


def _records(url: str, run_id: str) -> list:
    with open_ledger(url) as ledger:
        return [e.record for e in ledger.run(run_id)]


def test_four_workers_record_each_try_once_with_the_workers_digests(workdir, monkeypatch):
    support.worker_environment(monkeypatch)
    url = f"sqlite:///{workdir / 'ledger.db'}"
    ledger = ParslLedger(url, policy="strict")
    parts = [File(str(workdir / f"part-{i}.txt")) for i in range(12)]
    before = support.descendants()
    with support.loaded(pipeline.make_config(str(workdir), "htex", ledger, workers=4)) as dfk:
        made = [python_app(part, cache=True, executors=["htex"])(i, outputs=[f]) for i, f in enumerate(parts)]
        gathered = python_app(gather, cache=True, executors=["htex"])(
            inputs=[m.outputs[0] for m in made], outputs=[File(str(workdir / "all.txt"))])
        values = [python_app(square, cache=True, executors=["htex"])(x, scale=0.5) for x in range(4)]
        joined = join_app(both)(7)
        assert gathered.result() == 12
        assert [v.result() for v in values] == [0.0, 0.5, 2.0, 4.5]
        assert joined.result() == [49, 64]
        run_id = dfk.run_id
    assert support.wait_no_descendants(before) == {}, "interchange or workers outlived cleanup"
    records = _records(url, run_id)
    tries = collections.Counter((r.task_id, r.attempt) for r in records)
    assert max(tries.values()) == 1, f"a try recorded twice: {tries.most_common(3)}"
    by_name = collections.Counter(r.task_name for r in records)
    # 12 parts, 1 gather, 4 + 2 squares, and the join app, which runs on Parsl's internal
    # executor: the memoizer records its end (extra["join"])
    assert by_name == {"part": 12, "gather": 1, "square": 6, "both": 1}
    assert [r.extra.get("join") for r in records if r.task_name == "both"] == [True]
    assert all(r.status == "succeeded" for r in records)
    for record in records:
        if record.task_name == "part":
            (path, digest), = record.outputs.items()
            assert digest["blake3"] == hash_file(path).blake3 and record.extra.get("hashed_on") == "worker"
            assert record.parameters == {"args": [int(os.path.basename(path)[5:-4])]}
    squares = [r for r in records if r.task_name == "square"]
    assert {r.code_digest for r in squares} == {code_digest(_source(square))}
    assert sorted(str(r.parameters) for r in squares if "scale" in r.parameters) == sorted(
        str({"args": [x], "scale": 0.5}) for x in range(4))
    (gathered_record,) = [r for r in records if r.task_name == "gather"]
    assert sorted(gathered_record.inputs) == sorted(f.filepath for f in parts)
    assert all(d["blake3"] == hash_file(p).blake3 for p, d in gathered_record.inputs.items())
    run_cli("--ledger", url, str(workdir / "all.txt"), program="verify-lineage", cwd=workdir, check_rc=0)


def _source(func) -> str:
    from lineage_ledger_parsl._tasks import app_source

    return app_source(func)


def test_cleanup_while_tries_still_run_records_every_ended_try_once(workdir, monkeypatch):
    support.worker_environment(monkeypatch)
    url = f"sqlite:///{workdir / 'ledger.db'}"
    ledger = ParslLedger(url, policy="warn")
    before = support.descendants()
    with support.loaded(pipeline.make_config(str(workdir), "htex", ledger, workers=2)) as dfk:
        app = python_app(nap, executors=["htex"])
        quick = [app(i, 0.0, outputs=[File(str(workdir / f"quick-{i}.txt"))]) for i in range(4)]
        slow = [app(10 + i, 60.0, outputs=[File(str(workdir / f"slow-{i}.txt"))]) for i in range(4)]
        deadline = time.monotonic() + 120
        while not all(f.done() for f in quick):
            assert time.monotonic() < deadline, "the quick tries did not end"
            time.sleep(0.1)
        run_id = dfk.run_id
        started = time.monotonic()
    # support.loaded cleaned up here, with the slow tries still running on the workers.
    assert time.monotonic() - started < 60, "cleanup waited for the tries still running"
    assert support.wait_no_descendants(before) == {}, "interchange or workers outlived cleanup"
    time.sleep(1)
    records = _records(url, run_id)
    tries = collections.Counter((r.task_id, r.attempt) for r in records)
    assert tries and max(tries.values()) == 1, f"a try recorded twice: {tries.most_common(3)}"
    ended = {str(f.tid) for f in quick}
    assert ended <= {r.task_id for r in records if r.status == "succeeded"}
    assert not [f for f in slow if f.done() and f.exception() is None]
    for record in records:
        if record.status == "succeeded":
            for path, digest in record.outputs.items():
                assert digest["blake3"] == hash_file(path).blake3
