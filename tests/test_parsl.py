"""The Parsl plugin in real Parsl runs: ThreadPoolExecutor and HighThroughputExecutor with real workers.

Each run loads a DataFlowKernel from a Parsl ``Config`` and cleans it up; the HTEX runs
start an interchange and a worker pool on loopback, and the tests check that none of
those processes outlives its run.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger, WorkerHashingStaging  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor  # noqa: E402
from parsl.executors.status_handling import BlockProviderExecutor  # noqa: E402
from parsl.monitoring import MonitoringHub  # noqa: E402
from parsl.providers import LocalProvider  # noqa: E402

from lineage_ledger import (  # noqa: E402
    ArtifactMismatch,
    ConfigError,
    code_digest,
    current_environment,
    hash_file,
    open_ledger,
    verify_lineage,
)
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()
CORRUPT = "corrupted outside the workflow\n"


def records_of(url: str, run_id: str) -> dict[str, list]:
    """The records of one DFK run by task name, each list in attempt order."""
    with open_ledger(url) as ledger:
        found: dict[str, list] = {}
        for entry in ledger.run(run_id):
            found.setdefault(entry.record.task_name, []).append(entry.record)
    for tries in found.values():
        tries.sort(key=lambda r: (int(r.task_id), r.attempt))
    return found


def assert_digests_match_disk(record) -> None:
    assert record.outputs, f"{record.task_name} recorded no outputs"
    for path, entry in {**record.inputs, **record.outputs}.items():
        assert entry["blake3"] == hash_file(path).blake3, path


@pytest.fixture
def kind_env(request, monkeypatch):
    if request.param == "htex":
        support.worker_environment(monkeypatch)
    return request.param


@pytest.mark.parametrize(
    "kind_env", ["threads", pytest.param("htex", marks=pytest.mark.slow)], indirect=True
)
def test_every_try_recorded_then_strict_refuses_and_rerun_recomputes(workdir, kind_env):
    kind = kind_env
    url = f"sqlite:///{workdir / 'ledger.db'}"
    where = pipeline.paths(str(workdir))
    before = support.descendants()

    # Run 1: the pipeline, a failing app and an app that succeeds on its second try.
    ledger = ParslLedger(url, policy="strict")
    # HTEX starts with no worker block: only Parsl's scaling strategy, which sees the wrapped
    # executor as the BlockProviderExecutor it is, can start one (a delegating wrapper hangs here).
    config = pipeline.make_config(str(workdir), kind, ledger, retries=1, workers=1, init_blocks=0)
    if kind == "htex":  # monitoring (with per-try resource monitoring) keeps working
        config.monitoring = MonitoringHub(resource_monitoring_interval=1)
    flaky_app = python_app(support.flaky, executors=[kind])
    broken_app = python_app(support.broken, executors=[kind])
    with support.loaded(config) as dfk:
        executor = dfk.executors[kind]
        if kind == "htex":  # still the real thing Parsl scales, polls and monitors
            assert isinstance(executor, HighThroughputExecutor)
            assert isinstance(executor, BlockProviderExecutor)
            assert executor in dfk.job_status_poller._executors  # so the strategy scales it
        summary = pipeline.run_pipeline(str(workdir), 50)
        flaky = flaky_app(str(workdir / "marker"), outputs=[File(str(workdir / "flaky.txt"))])
        broken = broken_app(inputs=[File(where["raw.txt"])])
        assert flaky.result() == "ok"
        if kind == "htex":
            assert executor.blocks_to_job_id, "the strategy started a block for the wrapped executor"
        with pytest.raises(ValueError, match="broken: refuses raw.txt"):
            broken.result()
        run1 = dfk.run_id
    assert summary == {"count": 50, "sum_of_squares": sum(i * i for i in range(1, 51))}
    assert support.wait_no_descendants(before) == {}, "interchange or workers outlived cleanup"
    if kind == "htex":
        with sqlite3.connect(workdir / "runinfo" / "monitoring.db") as db:
            monitored = db.execute("SELECT count(*) FROM try WHERE run_id = ?", (run1,)).fetchone()[0]
        assert monitored == 4 + 2 + 2  # the pipeline's, flaky's and broken's tries

    tries = records_of(url, run1)
    for stage in ("generate", "square", "total", "report"):
        (record,) = tries[stage]
        assert record.status == "succeeded" and record.attempt == 1
        assert record.engine == "parsl"
        # the app's own source (a bash app's command template), under Parsl's and staging's wrappers
        assert record.code_digest == code_digest(inspect.getsource(getattr(pipeline, stage)))
        assert_digests_match_disk(record)
        if kind == "htex":
            assert record.extra.get("hashed_on") == "worker"
    assert [(r.attempt, r.status) for r in tries["flaky"]] == [(1, "failed"), (2, "succeeded")]
    assert "first try fails on purpose" in tries["flaky"][0].extra["error"]
    assert tries["flaky"][0].task_id == tries["flaky"][1].task_id
    assert list(tries["flaky"][1].outputs) == [str(workdir / "flaky.txt")]
    assert [(r.attempt, r.status) for r in tries["broken"]] == [(1, "failed"), (2, "failed")]
    assert "ValueError: broken: refuses raw.txt" in tries["broken"][1].extra["error"]
    run_cli(where["report.json"], program="verify-lineage", cwd=workdir,
            env={"LINEAGE_LEDGER_URL": url}, check_rc=0)

    # Corrupt an intermediate output; run 2 with the checkpoint and policy strict.
    with open(where["squares.txt"], "w") as handle:
        handle.write(CORRUPT)
    ledger = ParslLedger(url, policy="strict")
    with support.loaded(pipeline.make_config(str(workdir), kind, ledger, retries=1, workers=1)) as dfk:
        futures = pipeline.submit_pipeline(str(workdir), 50)
        with pytest.raises(ArtifactMismatch, match="squares.txt") as refused:
            futures["square"].result()
        assert "task" in str(refused.value) and "square" in str(refused.value)
        assert futures["generate"].task_record["from_memo"] is True
        run2 = dfk.run_id
    assert open(where["squares.txt"]).read() == CORRUPT  # strict refuses; it does not repair
    tries = records_of(url, run2)
    assert [r.status for r in tries["generate"]] == ["cached"]
    assert_digests_match_disk(tries["generate"][0])
    assert [r.status for r in tries["square"]] == ["failed", "failed"]  # both tries refused
    assert tries["square"][0].extra["refused_by"] == "strict"
    assert tries["square"][0].outputs == {}  # the ledger must not vouch for the corrupt bytes
    assert "total" not in tries

    # Run 3, policy rerun: the cached result is ignored and the square is computed again.
    ledger = ParslLedger(url, policy="rerun")
    with support.loaded(pipeline.make_config(str(workdir), kind, ledger, workers=1)) as dfk:
        futures = pipeline.submit_pipeline(str(workdir), 50)
        assert futures["report"].result() == summary
        assert futures["square"].task_record["from_memo"] is False
        assert futures["total"].task_record["from_memo"] is True  # same bytes again: a hit
        run3 = dfk.run_id
    assert support.wait_no_descendants(before) == {}
    tries = records_of(url, run3)
    (square,) = tries["square"]
    assert square.status == "succeeded"
    assert square.extra["rerun_because_modified"] == [where["squares.txt"]]
    assert_digests_match_disk(square)
    assert [r.status for r in tries["total"]] == ["cached"]
    with open_ledger(url) as check:
        assert verify_lineage(check, [where["report.json"]]).ok


def test_warn_logs_and_plain_parsl_returns_the_corrupt_cached_result(workdir, caplog):
    plain_dir, ledger_dir = workdir / "plain", workdir / "ledger"
    plain_dir.mkdir()
    ledger_dir.mkdir()

    # Plain Parsl (BasicMemoizer, checkpointing): the corrupt output is reused, silently.
    with support.loaded(pipeline.make_config(str(plain_dir), "threads")):
        first = pipeline.run_pipeline(str(plain_dir), 20, plain=True)
    plain_paths = pipeline.paths(str(plain_dir))
    with open(plain_paths["squares.txt"], "w") as handle:
        handle.write(CORRUPT)
    with support.loaded(pipeline.make_config(str(plain_dir), "threads")):
        futures = pipeline.submit_pipeline(str(plain_dir), 20, plain=True)
        assert futures["report"].result() == first
        assert futures["square"].task_record["from_memo"] is True
    assert open(plain_paths["squares.txt"]).read() == CORRUPT  # handed on as if it were good

    # The same workflow under the ledger with policy warn: reused too, but not silently; with
    # content keys the corrupt bytes are a new input for `total`, which runs on them (warn lets
    # it), and the ledger's audit then shows a version of squares.txt that no task produced.
    url = f"sqlite:///{ledger_dir / 'ledger.db'}"
    with support.loaded(pipeline.make_config(str(ledger_dir), "threads", ParslLedger(url, policy="warn"))):
        pipeline.run_pipeline(str(ledger_dir), 20)
    where = pipeline.paths(str(ledger_dir))
    with open(where["squares.txt"], "w") as handle:
        handle.write(CORRUPT)
    caplog.set_level(logging.WARNING, logger="lineage_ledger")
    with support.loaded(pipeline.make_config(str(ledger_dir), "threads", ParslLedger(url, policy="warn"))) as dfk:
        futures = pipeline.submit_pipeline(str(ledger_dir), 20)
        assert futures["report"].result() == {"count": 20, "sum_of_squares": 0}  # awk on garbage
        assert futures["square"].task_record["from_memo"] is True
        assert futures["total"].task_record["from_memo"] is False
        run2 = dfk.run_id
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(where["squares.txt"] in m and "changed outside the workflow" in m for m in warned), warned
    (square,) = records_of(url, run2)["square"]
    assert square.status == "cached"
    assert square.extra["modified_outside_workflow"] == [where["squares.txt"]]
    assert where["squares.txt"] not in square.outputs
    with open_ledger(url) as check:
        report = verify_lineage(check, [where["report.json"]])
    assert not report.ok
    assert any("squares.txt" in str(failure) for failure in report.failures), report.failures


@pytest.mark.parametrize("file_key, expected_count", [("content", 20), ("path", 10)])
def test_file_key_decides_whether_a_changed_input_is_a_cache_miss(workdir, file_key, expected_count):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    results = []
    for n in (10, 20):  # generate reruns (n is in its key); square sees a new raw.txt
        ledger = ParslLedger(url, policy="warn", file_key=file_key)
        with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
            results.append(pipeline.run_pipeline(str(workdir), n))
    assert results[0]["count"] == 10
    # by path, the stale squares of n=10 are reused: content keys are the default for this reason
    assert results[1]["count"] == expected_count


def test_the_wrapper_stays_the_inner_executors_class():
    ledger = ParslLedger("memory://parsl-wrap")
    htex = HighThroughputExecutor(label="h", provider=LocalProvider(init_blocks=0), address="127.0.0.1")
    wrapped = ledger.wrap(htex)
    assert isinstance(wrapped, HighThroughputExecutor) and isinstance(wrapped, BlockProviderExecutor)
    assert wrapped.label == "h" and wrapped.provider is htex.provider
    assert type(wrapped) is type(ledger.wrap(HighThroughputExecutor(label="h2")))  # one class per inner class
    threads = ledger.wrap(ThreadPoolExecutor(label="t", storage_access=[WorkerHashingStaging()]))
    assert isinstance(threads, ThreadPoolExecutor)
    with pytest.raises(ConfigError, match="already records"):
        ledger.wrap(wrapped)
    with pytest.raises(ConfigError, match="unknown policy"):
        ParslLedger("memory://x", policy="sometimes")
    with pytest.raises(ConfigError, match="unknown file_key"):
        ParslLedger("memory://x", file_key="mtime")
    with pytest.raises(ConfigError, match="unknown record_in"):
        ParslLedger("memory://x", record_in="gpu")


@pytest.mark.parametrize("record_in", ["process", "thread"])
def test_files_are_hashed_off_parsls_threads(workdir, monkeypatch, record_in):
    """``thread``: on the capture's own threads; ``process`` (the default): not in Parsl's process at all."""
    import lineage_ledger._capture.files as capture_module

    threads: list[str] = []
    real_hash = capture_module.hash_file

    def spy(path):
        threads.append(threading.current_thread().name)
        return real_hash(path)

    monkeypatch.setattr(capture_module, "hash_file", spy)
    ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", file_key="path", record_in=record_in)
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)) as dfk:
        pipeline.run_pipeline(str(workdir), 5)
        run_id = dfk.run_id
        child = ledger.capture.child_pid if record_in == "process" else None
    if record_in == "thread":
        # each stage's output; its inputs were hashed as the try was launched (the memoizer's
        # check: tests/test_parsl_deployed_read_digests.py)
        assert len(threads) == 4
        assert all(name.startswith("lineage-capture") for name in threads), threads
    else:
        assert child is not None and child != os.getpid()
        assert threads == []  # the recording process hashed every file
    tries = records_of(f"sqlite:///{workdir / 'ledger.db'}", run_id)
    assert sorted(tries) == ["generate", "report", "square", "total"]
    for (record,) in tries.values():
        assert_digests_match_disk(record)
        assert record.environment == current_environment()  # where the tasks ran


def test_worker_hashing_staging_sends_digests_back_with_the_result(workdir, monkeypatch):
    import lineage_ledger._capture.files as capture_module

    submit_side: list[str] = []
    real_hash = capture_module.hash_file
    monkeypatch.setattr(capture_module, "hash_file", lambda path: submit_side.append(path) or real_hash(path))
    ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", file_key="path")
    threads = ThreadPoolExecutor(label="threads", max_threads=2, storage_access=[WorkerHashingStaging()])
    config = Config(executors=[ledger.wrap(threads)], memoizer=ledger.memoizer(), run_dir=str(workdir / "runinfo"))
    with support.loaded(config) as dfk:
        summary = pipeline.run_pipeline(str(workdir), 7)
        run_id = dfk.run_id
    assert summary["count"] == 7
    assert submit_side == []  # every digest came back from where the task ran
    tries = records_of(f"sqlite:///{workdir / 'ledger.db'}", run_id)
    for stage in ("generate", "square", "total", "report"):
        (record,) = tries[stage]
        assert record.extra["hashed_on"] == "worker"
        assert_digests_match_disk(record)


def test_one_parsl_ledger_for_two_runs_still_checks_the_first_runs_files(workdir):
    ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy="strict")
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
        pipeline.run_pipeline(str(workdir), 5)
    where = pipeline.paths(str(workdir))
    with open(where["total.txt"], "w") as handle:
        handle.write("999\n")
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
        futures = pipeline.submit_pipeline(str(workdir), 5)
        with pytest.raises(ArtifactMismatch, match="total.txt"):
            futures["total"].result()


def test_an_unusable_ledger_never_breaks_the_workflow(workdir, caplog):
    ledger = ParslLedger("nosuchscheme://nowhere", policy="warn")
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
        summary = pipeline.run_pipeline(str(workdir), 5)
    assert summary == {"count": 5, "sum_of_squares": 55}
    assert ledger.capture.failures >= 4  # every try was logged as unrecordable, none raised
    assert any("could not" in r.getMessage() for r in caplog.records)


def test_kill_9_of_parsl_after_its_results_keeps_every_try(workdir):
    """Each finished try reaches the recording process within the capture's batching window
    (20 ms); from there a kill -9 of Parsl's process cannot lose it."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    script = workdir / "killed_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, time
        import parsl
        from parsl.app.app import python_app
        from parsl.config import Config
        from parsl.executors import ThreadPoolExecutor
        from lineage_ledger_parsl import ParslLedger

        def double(x):
            return 2 * x

        ledger = ParslLedger({url!r})
        config = Config(executors=[ledger.wrap(ThreadPoolExecutor(label="t", max_threads=2))],
                        run_dir={str(workdir / "runinfo")!r}, usage_tracking=0)
        dfk = parsl.load(config)
        app = python_app(double, executors=["t"])
        assert [f.result() for f in [app(i) for i in range(200)]] == [2 * i for i in range(200)]
        print(dfk.run_id, ledger.capture.child_pid, flush=True)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit, no flush
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                            cwd=workdir)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    run_id, child = result.stdout.split()
    deadline = time.monotonic() + 60
    while support.alive(int(child)):
        assert time.monotonic() < deadline, "the recording process did not finish after Parsl died"
        time.sleep(0.05)
    tries = records_of(url, run_id)["double"]
    assert sorted(r.parameters["args"][0] for r in tries) == list(range(200))
    assert all(r.status == "succeeded" for r in tries)
