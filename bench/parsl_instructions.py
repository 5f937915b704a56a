"""One Parsl run of N no-op apps, plain or wrapped, for instruction counts under callgrind.

Instruction counts do not depend on the load of a shared machine, where wall and CPU
times do. Count two sizes and take the difference, which cancels start-up and imports:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/parsl_instructions.py wrapped 1000      # and 200; and plain
    per task = (Ir(1000) - Ir(200)) / 800

Variants: ``plain`` (ThreadPoolExecutor), ``wrapped`` (``ParslLedger.wrap``, every try
recorded into SQLite and flushed), ``wrapnop`` (the wrapper, but the capture is skipped:
what the wrapper itself costs on Parsl's threads).
"""

from __future__ import annotations

import sys
import tempfile
import time

import parsl
from lineage_ledger_parsl import ParslLedger
from parsl.app.app import python_app
from parsl.config import Config
from parsl.dataflow.memoization import BasicMemoizer
from parsl.executors import ThreadPoolExecutor


def noop() -> None:
    return None


def main() -> int:
    variant, n = sys.argv[1], int(sys.argv[2])
    if variant not in ("plain", "wrapped", "wrapnop"):
        raise SystemExit(f"unknown variant {variant!r}")
    tmp = tempfile.mkdtemp()
    ledger = None
    executor = ThreadPoolExecutor(label="threads", max_threads=4)
    if variant != "plain":
        ledger = ParslLedger(f"sqlite:///{tmp}/ledger.db", spool=f"{tmp}/spool")
        executor = ledger.wrap(executor)
        if variant == "wrapnop":
            ledger.submit = lambda run: None  # type: ignore[method-assign]
    config = Config(executors=[executor], memoizer=BasicMemoizer(), run_dir=f"{tmp}/runinfo", usage_tracking=0)
    dfk = parsl.load(config)
    try:
        app = python_app(noop, executors=["threads"])
        for future in [app() for _ in range(5)]:  # warm up: threads started, ledger opened
            future.result()
        start, cpu_start = time.perf_counter(), time.process_time()
        for future in [app() for _ in range(n)]:
            future.result()
        if ledger is not None:
            assert ledger.flush(timeout=120), "records did not reach the ledger in time"
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        dfk.cleanup()
    if ledger is not None:
        ledger.close()
    print(f"{variant} n={n} wall={wall:.3f}s cpu={cpu:.3f}s cpu/task={cpu / n * 1e6:.0f}us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
