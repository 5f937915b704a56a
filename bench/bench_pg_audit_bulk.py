"""PostgreSQL audit workers: the bulk check (``PostgresAuditReads``) against the row-by-row one.

Two figures from the same run, the two checks alternated round by round so that the load
falls on both alike:

* the worker's range check alone, in this process: ``audit_bulk.audit_range`` (which must
  accept every range) against ``audit_parallel._audit_rows`` on the same tasks of
  ``--task-records`` records (the worker's CPU a record, and the server's);
* the full audit as users run it, ``verify-lineage --ledger URL`` through the workers
  (``bench_audit_workers.run``), with ``LINEAGE_AUDIT_BULK=0`` (row by row) and without
  (``--audit-rounds`` of each; 0 skips it).

Server CPU is the postmaster's and its children's, ended backends included (the postmaster
reaps them: its cutime). The ledger is ``bench_scale.py``'s, in a server it starts with its
data directory kept in ``--cache``.

    python bench/bench_pg_audit_bulk.py --cache /work/smoke/pgscale --size 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit_workers import run as run_cli  # noqa: E402
from bench_scale import _postgres, build  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")
GOAL_RATIO = 1.2  # what made the bulk check worth wiring in


def server_cpu(data: str) -> float:
    """CPU seconds of the server so far: the postmaster, its reaped children and live ones."""
    with open(os.path.join(data, "postmaster.pid")) as handle:
        pid = int(handle.readline())
    total = 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total += sum(int(f) for f in fields[11:15]) / _TICKS  # utime stime cutime cstime
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        for child in children.read().split():
            try:
                with open(f"/proc/{child}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / _TICKS
            except OSError:  # ended meanwhile: in the postmaster's cutime from now on
                pass
    return total


def range_checks(url: str, data: str, tasks: list, bulk: bool) -> tuple[float, float, float]:
    """(wall, this process's CPU, server CPU) of checking ``tasks`` as a worker does."""
    from lineage_ledger._log import audit_bulk
    from lineage_ledger._log import audit_parallel as parallel
    from lineage_ledger.backends import open_backend

    with open_backend(url, create=False) as reader:
        reader.head()  # the session opened before the clock starts, as a worker's is
        server, cpu, wall = server_cpu(data), time.process_time(), time.perf_counter()
        for task in tasks:
            if bulk:
                result = audit_bulk.audit_range(reader, task.start, task.stop, task.first_index, False)
            else:
                result = parallel._audit_rows(reader, task, False)
            if result is None:
                raise SystemExit(f"the {'bulk' if bulk else 'row-by-row'} check refused {task}")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, server_cpu(data) - server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lineage-bench-scale"))
    parser.add_argument("--rounds", "--repeats", type=int, default=5, help="rounds of the range checks (medians)")
    parser.add_argument("--records", type=int, default=250_000, help="records the range checks cover")
    parser.add_argument("--task-records", type=int, default=25_000, help="records a task (the workers' default)")
    parser.add_argument("--audit-rounds", type=int, default=3, help="rounds of the full audit (0: none)")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 records in a fresh server and cache, tasks of 500, one round of each")
    args = parser.parse_args()
    scratch = None
    if args.quick:
        scratch = tempfile.mkdtemp(prefix="bench-pg-audit-")
        args.size, args.records, args.task_records, args.audit_rounds = 2_000, 2_000, 500, 1
        args.cache = scratch
    try:
        _measure(args)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _measure(args: argparse.Namespace) -> None:
    from lineage_ledger._log import audit_parallel as parallel
    from lineage_ledger.backends import open_backend

    server = _postgres(Path(args.cache))
    try:
        url, directory = build(Path(args.cache), args.size, server)
        os.environ["LINEAGE_AUDIT_TASK_RECORDS"] = str(args.task_records)
        os.environ["LINEAGE_AUDIT_PARALLEL_MIN"] = "0"  # plan this process's tasks whatever the size
        with open_backend(url, create=False) as reader:
            head = reader.head()
            assert head is not None
            planned = parallel.plan(reader, args.records, head.height + 1) or []
            records = reader.record_count()
        tasks = [t for t in planned if t.first_index < args.records]
        if not tasks:
            raise SystemExit("no tasks planned: is LINEAGE_AUDIT_WORKERS 1?")
        covered = planned[len(tasks)].first_index if len(tasks) < len(planned) else records
        print(f"ledger of {records:,} records; range checks: {len(tasks)} tasks, about {covered:,} records; "
              f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for bulk in (False, True):
                figures[bulk].append(range_checks(url, server.data, tasks, bulk))
            print(f"  row by row {figures[False][-1][1]:.2f} s CPU, bulk {figures[True][-1][1]:.2f} s CPU; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        medians = {bulk: [statistics.median(f[i] for f in figures[bulk]) for i in range(3)] for bulk in figures}
        for bulk, (wall, cpu, srv) in medians.items():
            print(f"{'bulk      ' if bulk else 'row by row'}: {wall:.2f} s wall, worker CPU {cpu * 1e6 / covered:.2f} us"
                  f" a record, server CPU {srv * 1e6 / covered:.2f} us a record ({covered / wall:,.0f} records/s)")
        ratio = medians[False][1] / medians[True][1]
        print(f"ratio row by row / bulk: worker CPU {ratio:.2f}x, worker and server "
              f"CPU {(medians[False][1] + medians[False][2]) / (medians[True][1] + medians[True][2]):.2f}x, "
              f"wall {medians[False][0] / medians[True][0]:.2f}x", flush=True)
        if args.audit_rounds:
            env = {"LINEAGE_AUDIT_TASK_RECORDS": str(args.task_records)}
            audits: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
            for _ in range(args.audit_rounds):
                for bulk in (False, True):
                    before = server_cpu(server.data)
                    done = run_cli(url, directory, None, env if bulk else {**env, "LINEAGE_AUDIT_BULK": "0"})
                    audits[bulk].append((done.wall, done.worker_cpu, server_cpu(server.data) - before))
                print(f"  verify-lineage row by row {audits[False][-1][0]:.2f} s, bulk {audits[True][-1][0]:.2f} s; "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
            walls = {bulk: statistics.median(a[0] for a in audits[bulk]) for bulk in audits}
            for bulk in (False, True):
                print(f"verify-lineage, {'bulk      ' if bulk else 'row by row'}: {walls[bulk]:.2f} s "
                      f"({records / walls[bulk]:,.0f} records/s), workers' CPU "
                      f"{statistics.median(a[1] for a in audits[bulk]):.1f} s as sampled, server CPU "
                      f"{statistics.median(a[2] for a in audits[bulk]):.1f} s")
            print(f"ratio row by row / bulk: {walls[False] / walls[True]:.2f}x wall")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        verdict = "GOAL MET" if ratio >= GOAL_RATIO else "GOAL MISSED"
        print(f"{verdict}: the bulk check's worker CPU a record, {ratio:.2f}x lower than row by row "
              f"(goal: at least {GOAL_RATIO}x)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
