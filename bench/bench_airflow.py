"""Wall time of the example Airflow DAG with and without the lineage-ledger listener.

Sets up its own AIRFLOW_HOME (SQLite, ``airflow db migrate`` once), loads
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
        records = sum(1 for _ in _count_records(os.environ["AIRFLOW__LINEAGE_LEDGER__URL"], tmp / "spool"))

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


def _count_records(url: str, spool: Path):
    from lineage_ledger import open_ledger

    with open_ledger(url, spool=str(spool)) as ledger:
        yield from ledger.recent(1_000_000)


if __name__ == "__main__":
    main()
