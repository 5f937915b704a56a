"""Airflow: time added per task process by the plugin under the real scheduler (default), or
the example DAG under ``dag.test()`` (``--dag-test``).

Default (issue 16): a deployment on loopback as in ``tests/test_airflow_deployment.py``
(scheduler, dag-processor, api-server, LocalExecutor, PostgreSQL metadata database started
here) runs ``deploy_bench`` (8 BashOperator tasks, each reading one file inlet and writing
one file outlet; 1 with --quick), alternating rounds:

  with      the plugin installed, recording every task into a SQLite ledger
  without   the scheduler started with the plugin's package shadowed on PYTHONPATH by one
            with the same provider metadata and a plugin without a listener: Airflow finds
            the same entry points, and nothing of the ledger is imported or called

Per task process, the supervisor's own "Workload finished ... duration" (fork to exit, so
the listener's hooks and the flush before ``os._exit`` are in it) and the task's duration
in the metadata database; in the task's log, the span from its first line to its last (the
goal's figure) and from "Post Execute" to the last line (the success hook and
``before_stopping`` alone, without the DAG parse and the command, whose noise is larger).
Goal: median(with) - median(without) <= 30 ms per task process.
One warm-up run per variant is not counted (none with --quick).

``LINEAGE_BENCH_AIRFLOW_METADATA=DSN`` names a PostgreSQL database Airflow's metadata is
already migrated in, used instead of a server started here and ``airflow db migrate`` (the test
suite's smoke run gives one made from the migrated template its Airflow tests share).

``LINEAGE_BENCH_AGAINST=DIR`` adds a third variant in turn, ``against``: the scheduler with
``DIR`` first on PYTHONPATH, a directory holding ``lineage_ledger`` (with its ``backends``)
and ``lineage_ledger_airflow`` as an earlier commit had them (``git archive``), to find
which change a regression came from on the same machine and load.

``--dag-test``: sets up its own AIRFLOW_HOME (SQLite, ``airflow db migrate`` once), loads
``examples/airflow/lineage_example.py`` with LINEAGE_EXAMPLE_ROWS rows of source data
(200,000 by default: a 4.5 MB CSV; 2,000 with --quick), warms up with one ``dag.test()``,
then times ``dag.test()`` in alternating rounds in one process:

  without   the listener unregistered from Airflow's listener managers; LedgerOperator
            tasks still verify, hash and record themselves (they do without the listener)
  with      the listener registered: every task, the plain BashOperator included, is
            recorded by it
  ledger off  [lineage_ledger] enabled = False and no listener: nothing verified, hashed
            or recorded, LedgerOperator only runs its command (for reference)

Goal (issue #5): median(with) / median(without) <= 1.02. The cost of the whole ledger
(with / ledger off) is printed too, not judged. So are two figures the machine's load
disturbs less: this process's CPU time per variant (the tasks' shell commands run in child
processes and are not in it), and the time spent inside the plugin's start and record
hooks (in "without" that is the LedgerOperator tasks recording themselves).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "airflow" / "lineage_example.py"


def setup(tmp: Path, rows: int) -> None:
    home = tmp / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(EXAMPLE, home / "dags" / EXAMPLE.name)
    os.environ.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__OPENLINEAGE__DISABLED": "true",
        # Airflow logs every step at INFO; printing them would be most of what is timed.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__LINEAGE_LEDGER__URL": f"sqlite:///{tmp}/ledger.db",
        "AIRFLOW__LINEAGE_LEDGER__SPOOL": str(tmp / "spool"),
        "LINEAGE_EXAMPLE_DATA": str(tmp / "data"), "LINEAGE_EXAMPLE_ROWS": str(rows),
    })
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, timeout=600)


def main() -> None:
    if "--dag-test" in sys.argv:
        sys.argv.remove("--dag-test")
        main_dag_test()
    else:
        main_scheduler(parse_args(__doc__, "1 round of each variant", quick_rounds=1, full_rounds=5))


#: A migrated metadata database to use (see the module's docstring).
METADATA_ENV = "LINEAGE_BENCH_AIRFLOW_METADATA"
WORKLOAD = re.compile(r"Workload finished.*?duration=([0-9.]+).*?workload_id=([0-9a-f-]+)")


def main_scheduler(args) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.airflow_deploy import Deployment
    from tests.support.postgres import PostgresServer, find_server_binaries

    migrated = os.environ.get(METADATA_ENV)
    metadata = None
    if not migrated:
        bindir = find_server_binaries()
        if bindir is None:
            print("no PostgreSQL server binaries (initdb): the scheduler benchmark needs them; NO GOAL measured")
            return
        metadata = PostgresServer(bindir).start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-airflow-"))
    try:
        site = Deployment(home=tmp / "home", metadata_dsn=migrated or metadata.create_database(),
                          ledger_url=f"sqlite:///{tmp}/ledger.db", spool=tmp / "spool", data=tmp / "data")
        site.data.mkdir(parents=True)
        (site.data / "seed.txt").write_text("sample,value\n" + "".join(f"s{i},{i}\n" for i in range(1000)))
        # --quick (the test suite's smoke run) runs 1 task a DAG run, not 8: each task process
        # is over a second of CPU, and the smoke run's figures are not read.
        tasks = 1 if args.quick else 8
        site.configure({"AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", "XDG_STATE_HOME": str(tmp / "state"),
                        "LINEAGE_BENCH_TASKS": str(tasks)})
        shadow = _shadow_package(tmp / "without-plugin")
        variants = {"with": {}, "without": {"PYTHONPATH": str(shadow.parent)}}
        if os.environ.get("LINEAGE_BENCH_AGAINST"):
            variants["against"] = {"PYTHONPATH": os.environ["LINEAGE_BENCH_AGAINST"]}
        if not migrated:
            site.cli("db", "migrate")
        site.start("api-server", "dag-processor")
        site.wait_for_dags(["deploy_bench"])
        process_s: dict[str, list[float]] = {v: [] for v in variants}
        task_s: dict[str, list[float]] = {v: [] for v in variants}
        span_s: dict[str, list[float]] = {v: [] for v in variants}
        end_s: dict[str, list[float]] = {v: [] for v in variants}
        loads = [os.getloadavg()[0]]
        runs = 0
        recording_runs = 0  # runs with a plugin that records (this tree's or the one against)

        def one_run(variant: str, keep: bool) -> None:
            nonlocal runs, recording_runs
            runs += 1
            recording_runs += variant != "without"
            site.kill("scheduler")
            site.start("scheduler", extra_env=variants[variant])
            run_id = f"{variant}-{runs}"
            site.trigger("deploy_bench", run_id)
            if site.wait_for_run("deploy_bench", run_id, timeout=600) != "success":
                raise SystemExit(f"deploy_bench {run_id} failed:\n{site.log_tail('scheduler')}")
            rows = site.query("SELECT CAST(id AS text), duration FROM task_instance"
                              " WHERE dag_id = 'deploy_bench' AND run_id = %s", run_id)
            ids = {ti_id for ti_id, _ in rows}
            finished = site.wait_for(lambda: _workloads(site, ids), "every task process's end")
            loads.append(os.getloadavg()[0])
            if keep:
                process_s[variant].extend(finished)
                task_s[variant].extend(duration for _, duration in rows)
                spans, ends = _spans(site.home / "logs" / "dag_id=deploy_bench" / f"run_id={run_id}")
                span_s[variant].extend(spans)
                end_s[variant].extend(ends)

        # Warm-up: first imports, DAG parse in the task process. Not with --quick (the test
        # suite's smoke run, whose figures nobody reads: two DAG runs of its 45 s).
        for variant in variants if not args.quick else ():
            one_run(variant, keep=False)
        order = list(variants)
        for round_no in range(args.rounds):
            for variant in order if round_no % 2 == 0 else order[::-1]:
                one_run(variant, keep=True)
        site.stop()
        with_records = _count_records(site.ledger_url, site.spool)
    finally:
        if metadata is not None:
            metadata.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"deploy_bench under airflow scheduler (LocalExecutor, PostgreSQL metadata DB), {tasks} tasks a run, "
          f"{args.rounds} rounds; load average {min(loads):.2f} to {max(loads):.2f}")
    for variant in variants:
        print(f"  {variant:<8} task process median {statistics.median(process_s[variant]) * 1000:7.1f} ms "
              f"(n={len(process_s[variant])}, min {min(process_s[variant]) * 1000:.1f}, "
              f"max {max(process_s[variant]) * 1000:.1f})   inside it, first to last log line "
              f"{statistics.median(span_s[variant]) * 1000:7.1f} ms (of which Post Execute to the last line "
              f"{statistics.median(end_s[variant]) * 1000:5.1f} ms)   task duration median "
              f"{statistics.median(task_s[variant]) * 1000:7.1f} ms")
    added = (statistics.median(process_s["with"]) - statistics.median(process_s["without"])) * 1000
    ratio = statistics.median(process_s["with"]) / statistics.median(process_s["without"])
    added_span = (statistics.median(span_s["with"]) - statistics.median(span_s["without"])) * 1000
    added_task = (statistics.median(task_s["with"]) - statistics.median(task_s["without"])) * 1000
    added_end = (statistics.median(end_s["with"]) - statistics.median(end_s["without"])) * 1000
    # One record a try of the runs with a plugin, no more: a scheduler that started for a run
    # recorded the tries of the runs before it without the plugin, as its own reports, once.
    expected = tasks * recording_runs
    print(f"  records in the ledger: {with_records} (expected {expected}: {tasks} per run with a plugin)"
          + ("" if with_records == expected else "  <- NOT ONE RECORD A TRY"))
    print(f"  added: supervisor's workload duration {added:+.1f} ms (ratio {ratio:.3f}; it notices a "
          f"process's exit on a 1 s poll, so single tasks differ by 0 or 1 s); task duration {added_task:+.1f} ms; "
          f"Post Execute to the last line (the success hook, before_stopping) {added_end:+.1f} ms")
    if "against" in variants:
        print(f"  against {os.environ['LINEAGE_BENCH_AGAINST']}: first to last log line "
              f"{(statistics.median(span_s['against']) - statistics.median(span_s['without'])) * 1000:+.1f} ms "
              f"over without; this tree {(statistics.median(span_s['with']) - statistics.median(span_s['against'])) * 1000:+.1f} ms"
              f" over it (Post Execute to the last line "
              f"{(statistics.median(end_s['with']) - statistics.median(end_s['against'])) * 1000:+.1f} ms)")
    print(f"added per task process, first to last log line (the hooks run last): {added_span:+.1f} ms  "
          f"(goal <= +30 ms)  -> {'GOAL MET' if added_span <= 30 else 'GOAL MISSED'}")


def _spans(run_logs: Path) -> tuple[list[float], list[float]]:
    """Seconds from each task log's first line to its last (the task process from its start
    to the end of its ``before_stopping`` hooks, the supervisor's 1 s exit poll left out),
    and from its "Post Execute" line to its last (the end alone: the success hook and
    ``before_stopping``, without the DAG parse and the command, which vary far more)."""
    from datetime import datetime

    spans, ends = [], []
    for log_file in run_logs.glob("task_id=*/attempt=1.log"):
        stamps = []
        post_execute = None
        for line in log_file.read_text(errors="replace").splitlines():
            match = re.search(r'"timestamp":\s*"([^"]+)"', line)
            if match:
                stamps.append(datetime.fromisoformat(match.group(1).replace("Z", "+00:00")))
                if post_execute is None and "::group::Post Execute" in line:
                    post_execute = stamps[-1]
        if len(stamps) >= 2:
            spans.append((max(stamps) - min(stamps)).total_seconds())
        if post_execute is not None:
            ends.append((max(stamps) - post_execute).total_seconds())
    return spans, ends


def _shadow_package(parent: Path) -> Path:
    """A ``lineage_ledger_airflow`` without the listener: same metadata, an empty plugin."""
    package = parent / "lineage_ledger_airflow"
    package.mkdir(parents=True)
    real = ROOT / "plugins" / "airflow" / "src" / "lineage_ledger_airflow"
    for name in ("__init__.py", "provider.py"):  # metadata only: no import of the core
        shutil.copy(real / name, package / name)
    (package / "plugin.py").write_text(
        "from airflow.plugins_manager import AirflowPlugin\n\n\n"
        "class LineageLedgerPlugin(AirflowPlugin):\n    name = 'lineage_ledger'\n")
    return package


def _workloads(site, ids: set[str]) -> list[float] | None:
    """The supervisor's durations of these task instances' processes, once all have ended."""
    found: dict[str, float] = {}
    for match in WORKLOAD.finditer(site.log_tail("scheduler", chars=10_000_000)):
        if match.group(2) in ids:
            found[match.group(2)] = float(match.group(1))
    return list(found.values()) if len(found) == len(ids) else None


def main_dag_test() -> None:
    args = parse_args(__doc__, "2,000 rows, 2 rounds", quick_rounds=2, full_rounds=7)
    rows = 2_000 if args.quick else int(os.environ.get("LINEAGE_EXAMPLE_ROWS", "200000"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        setup(tmp, rows)
        import importlib.util

        from airflow.listeners.listener import get_listener_manager as core_listeners
        from airflow.sdk.listener import get_listener_manager as task_listeners
        from lineage_ledger_airflow import _tries
        from lineage_ledger_airflow.listener import listener

        spec = importlib.util.spec_from_file_location("bench_lineage_example", EXAMPLE)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        managers = [task_listeners().pm, core_listeners().pm]
        # Time spent inside the listener's work, summed per variant: a figure that the
        # machine's noise does not drown (with the listener on, every call is the listener's).
        inside = {"seconds": 0.0}

        def clocked(fn):
            def wrapper(*a, **kw):
                start = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    inside["seconds"] += time.perf_counter() - start
            return wrapper

        _tries.note_start = clocked(_tries.note_start)
        _tries.record_try = clocked(_tries.record_try)
        spent: dict[str, list[float]] = {"without": [], "with": [], "ledger off": []}
        cpu: dict[str, list[float]] = {k: [] for k in spent}

        def use_listener(on: bool) -> None:
            for pm in managers:
                if on and not pm.is_registered(listener):
                    pm.register(listener)
                elif not on and pm.is_registered(listener):
                    pm.unregister(listener)

        def timed(variant: str) -> float:
            use_listener(variant == "with")
            os.environ["AIRFLOW__LINEAGE_LEDGER__ENABLED"] = "False" if variant == "ledger off" else "True"
            inside["seconds"] = 0.0
            start, cpu_start = time.perf_counter(), time.process_time()
            state = module.dag.test().state
            elapsed = time.perf_counter() - start
            cpu[variant].append(time.process_time() - cpu_start)
            spent[variant].append(inside["seconds"])
            if state != "success":
                raise SystemExit(f"the example DAG failed ({variant})")
            return elapsed

        timed("with")  # warm-up: first parse, serialisation, imports
        times: dict[str, list[float]] = {"without": [], "with": [], "ledger off": []}
        spent = {k: [] for k in spent}
        cpu = {k: [] for k in spent}
        order = ["without", "with", "ledger off"]
        for round_no in range(args.rounds):
            for variant in order if round_no % 2 == 0 else order[::-1]:
                times[variant].append(timed(variant))
        _tries.reset()
        records = _count_records(os.environ["AIRFLOW__LINEAGE_LEDGER__URL"], tmp / "spool")

    load = os.getloadavg()[0]
    print(f"example DAG (4 tasks, {rows:,} rows), {args.rounds} rounds, load average {load:.2f}")
    for variant, values in times.items():
        print(f"  {variant:<11} median {statistics.median(values):.3f} s   "
              f"(min {min(values):.3f}, max {max(values):.3f})   "
              f"CPU median {statistics.median(cpu[variant]):.3f} s   "
              f"inside the plugin's hooks {statistics.median(spent[variant]) * 1000:.1f} ms")
    ratio = statistics.median(times["with"]) / statistics.median(times["without"])
    whole = statistics.median(times["with"]) / statistics.median(times["ledger off"])
    listener_ms = statistics.median(spent["with"]) * 1000
    print(f"  inside the listener (with): median {listener_ms:.1f} ms per run = "
          f"{listener_ms / 10 / statistics.median(times['with']):.2f}% of the run's median wall time")
    cpu_ratio = statistics.median(cpu["with"]) / statistics.median(cpu["without"])
    print(f"  CPU time of this process, with/without: {cpu_ratio:.3f}")
    print(f"  records in the ledger: {records} (4 per run with the ledger on)")
    print(f"ratio with/without listener: {ratio:.3f}  (goal <= 1.02)  -> {'GOAL MET' if ratio <= 1.02 else 'GOAL MISSED'}")
    print(f"ratio with listener / ledger off: {whole:.3f}  (the whole ledger's cost; no goal)")


def _count_records(url: str, spool: Path) -> int:
    from lineage_ledger import open_ledger

    with open_ledger(url, spool=str(spool)) as ledger:
        return sum(1 for _ in ledger.recent(1_000_000))


if __name__ == "__main__":
    main()
