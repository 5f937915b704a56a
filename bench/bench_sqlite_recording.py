"""Recording processes on an SQLite ledger: stdlib sqlite3 (SQLiteBackend) vs SQLAlchemy (SQLBackend).

Issues #16 and #20: every short recording process (``lineage-ledger run``, the engines'
recording processes and shippers) used to import SQLAlchemy to append to the default
SQLite ledger. This compares, on one ledger already holding 10,000 records (1,000 with
--quick), fresh processes that record through each path, alternated round by round:

  run      ``lineage-ledger run --ledger URL -- true``: hash nothing, run ``true``, record it
  writer   ``python -m lineage_ledger.testing.writer URL SPOOL RUN 200``: a recording
           process shipping 200 records through a Recorder

  stdlib       URL ``sqlite:///<tmp>/ledger.db``: what every SQLite URL gets now
  sqlalchemy   URL ``sqlite:///<tmp>/ledger.db?timeout=60``: a connect argument makes
               open_backend hand the URL to SQLBackend, the path every SQLite URL took
               before (the baseline)

CPU (user + system of the child, from getrusage) and wall time per process, medians of
10 rounds (2 with --quick). Goal: the stdlib path costs at most 0.75x the CPU of the
SQLAlchemy path for ``run`` (the import SQLAlchemy cost was most of it).
"""

from __future__ import annotations

import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args, synthetic_record

from lineage_ledger import open_ledger

GOAL = 0.75
BIN = Path(sys.executable).parent


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: str, env: dict) -> tuple[float, float]:
    """(CPU s, wall s) of one process."""
    cpu, wall = child_cpu(), time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, timeout=600)
    return child_cpu() - cpu, time.perf_counter() - wall


def main() -> None:
    args = parse_args(__doc__, "1,000-record ledger, 2 rounds", quick_rounds=2, full_rounds=10)
    existing = 1_000 if args.quick else 10_000
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-recording-") as tmp:
        db = os.path.join(tmp, "ledger.db")
        with open_ledger(f"sqlite:///{db}", spool=os.path.join(tmp, "spool0")) as ledger:
            ledger.append_records([synthetic_record(i).stored() for i in range(existing)])
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
        env["LINEAGE_SPOOL"] = os.path.join(tmp, "spool")
        urls = {"stdlib": f"sqlite:///{db}", "sqlalchemy": f"sqlite:///{db}?timeout=60"}
        commands = {
            "run": lambda url, _: [str(BIN / "lineage-ledger"), "run", "--ledger", url, "--", "true"],
            "writer": lambda url, n: [sys.executable, "-m", "lineage_ledger.testing.writer", url,
                                      os.path.join(tmp, f"spool-w{n}"), f"bench-{n}", "200"],
        }
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {
            (c, u): [] for c in commands for u in urls}
        runs = 0
        for round_number in range(args.rounds + 1):  # round 0 warms the page cache, not counted
            order = list(urls) if round_number % 2 else list(reversed(urls))
            for command, make in commands.items():
                for name in order:
                    runs += 1
                    cpu, wall = timed(make(urls[name], runs), tmp, env)
                    if round_number:
                        samples[command, name].append((cpu, wall))
        conn = sqlite3.connect(db)
        try:
            stored = conn.execute("SELECT count(*) FROM ll_records").fetchone()[0]
        finally:
            conn.close()
        writers = runs // 2
        assert stored == existing + writers + writers * 200, stored  # every process recorded
    print(f"{existing:,} records in the ledger at start, {args.rounds} rounds (medians)")
    print(f"{'process':8} {'path':11} {'CPU s':>7} {'wall s':>7}")
    medians = {}
    for (command, name), values in samples.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        medians[command, name] = (cpu, wall)
        print(f"{command:8} {name:11} {cpu:7.3f} {wall:7.3f}")
    for command in commands:
        (cpu, wall), (base_cpu, base_wall) = medians[command, "stdlib"], medians[command, "sqlalchemy"]
        print(f"{command}: stdlib/sqlalchemy CPU {cpu / base_cpu:.2f}x (saves {base_cpu - cpu:.3f} s),"
              f" wall {wall / base_wall:.2f}x (saves {base_wall - wall:.3f} s)")
    ratio = medians["run", "stdlib"][0] / medians["run", "sqlalchemy"][0]
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"{'GOAL MET' if ratio <= GOAL else 'GOAL MISSED'}: run CPU {ratio:.2f}x (goal <= {GOAL}x)")


if __name__ == "__main__":
    main()
