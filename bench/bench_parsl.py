"""Cost of recording a Parsl run: the executor wrapper on no-op apps, and a file pipeline.

Part 1 (the goal): 2,000 no-op python apps (200 with --quick) on a ThreadPoolExecutor
(4 threads), submitted at once, timed from the first submit until every AppFuture has
its result. Each round runs, in alternating order, in fresh DataFlowKernels:
  plain     Config(executors=[ThreadPoolExecutor(...)])
  wrapped   the same executor through ParslLedger(sqlite).wrap(...): every try recorded
            (by a recording process of its own: ParslLedger's default record_in="process")
  +memo     wrapped, plus ParslLedger.memoizer() (apps not cached: the check is skipped)
  in-thread wrapped with record_in="thread": records built on a thread of Parsl's process
For the wrapped runs, "+flush" adds the wait until every record is in the ledger (the
recording process hashes and journals meanwhile; the workflow does not wait for it). CPU
is this process's; the recording process's is reported apart ("rec cpu", including its
start-up, about 0.4 s).

Single rounds on a shared 2-core machine swing by 30% either way (plain Parsl's own time
does), so the goal is judged on the median of 15 rounds. Each timed part starts after a
full garbage collection (since 2026-11-24): a full collection of Parsl's heap takes 0.15 to
0.25 s here, and one fell into the timed part of most rounds, of either variant.

Part 2 (information): the example pipeline of examples/parsl (bash and python apps,
four stages, Files of about 60 kB) 16 times side by side in one DFK, plain Parsl (no
memoization: BasicMemoizer cannot hash a File) against ParslLedger with the verifying,
content-keyed memoizer (every launch hashes its inputs and checks its files).

Goal (issue #4): median wrapped / plain time on part 1 <= 1.10.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import parsl
from _common import parse_args
from parsl.app.app import python_app
from parsl.config import Config
from parsl.dataflow.memoization import BasicMemoizer
from parsl.executors import ThreadPoolExecutor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "parsl"))
import pipeline  # noqa: E402
from lineage_ledger_parsl import ParslLedger, _shared  # noqa: E402

GOAL = 1.10


def noop() -> None:
    return None


def run_noops(tmp: str, n: int, variant: str) -> tuple[float, float, float, float, float]:
    """Wall and CPU seconds (this process, all threads) until all results, and until also
    every record is in the ledger, and the recording process's CPU seconds:
    (wall, wall+flush, cpu, cpu+flush, recording cpu)."""
    ledger = None
    executor = ThreadPoolExecutor(label="threads", max_threads=4)
    memoizer = BasicMemoizer()
    children_before = _children_cpu()
    if variant != "plain":
        record_in = "thread" if variant == "in-thread" else "process"
        ledger = ParslLedger(f"sqlite:///{tmp}/ledger.db", spool=f"{tmp}/spool", record_in=record_in)
        executor = ledger.wrap(executor)
        if variant == "+memo":
            memoizer = ledger.memoizer()
    config = Config(executors=[executor], memoizer=memoizer, run_dir=f"{tmp}/runinfo", usage_tracking=0)
    dfk = parsl.load(config)
    try:
        app = python_app(noop, executors=["threads"])
        # The last round's DFK, futures and ledger are garbage now; without this, a full
        # collection of them (0.15 to 0.25 s with Parsl's heap, measured) lands in whichever
        # round's timed part it falls in.
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        futures = [app() for _ in range(n)]
        for future in futures:
            future.result()
        done, cpu_done = time.perf_counter() - start, time.process_time() - cpu_start
        if ledger is not None:
            assert ledger.flush(timeout=120), "records did not reach the ledger in time"
        flushed, cpu_flushed = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        dfk.cleanup()
    if ledger is not None:
        ledger.close()
        _wait_for_recording_process(ledger)
        assert ledger.capture.failures == 0
    return done, flushed, cpu_done, cpu_flushed, _children_cpu() - children_before


def _wait_for_recording_process(ledger: ParslLedger) -> None:
    """A shared recording process ends ``_shared.IDLE_SECONDS`` after its last user, not
    at ``close()``: the temporary directory it spools into is removed only after that (it
    once went first: "Directory not empty", and the process lost its spool segment)."""
    capture = ledger.capture
    deadline = time.monotonic() + _shared.IDLE_SECONDS + 60
    while capture in _shared.live().values() or getattr(capture, "child_pid", None) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError("the shared recording process did not end")
        time.sleep(0.05)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_files(tmp: str, copies: int, lines: int, variant: str) -> float:
    ledger = ParslLedger(f"sqlite:///{tmp}/ledger.db", spool=f"{tmp}/spool") if variant == "ledger" else None
    executor = ThreadPoolExecutor(label="threads", max_threads=4)
    if ledger is None:
        config = Config(executors=[executor], memoizer=BasicMemoizer(memoize=False),
                        run_dir=f"{tmp}/runinfo", usage_tracking=0)
    else:
        config = Config(executors=[ledger.wrap(executor)], memoizer=ledger.memoizer(),
                        run_dir=f"{tmp}/runinfo", usage_tracking=0)
    dfk = parsl.load(config)
    try:
        start = time.perf_counter()
        runs = []
        for i in range(copies):
            workdir = os.path.join(tmp, f"p{i}")
            os.makedirs(workdir)
            runs.append(pipeline.submit_pipeline(workdir, lines + i))
        for futures in runs:
            futures["report"].result()
        if ledger is not None:
            ledger.flush(timeout=120)
        elapsed = time.perf_counter() - start
    finally:
        dfk.cleanup()
    if ledger is not None:
        ledger.close()
        _wait_for_recording_process(ledger)
    return elapsed


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    args = parse_args(__doc__, "200 apps, 4 pipelines, one round", quick_rounds=1, full_rounds=15)
    n = 200 if args.quick else 2000
    copies, lines = (4, 2000) if args.quick else (16, 10_000)
    variants = ["plain", "wrapped", "+memo", "in-thread"]
    done: dict[str, list[float]] = {v: [] for v in variants}
    flushed: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    cpu_flushed: dict[str, list[float]] = {v: [] for v in variants}
    recording: dict[str, list[float]] = {v: [] for v in variants}
    files: dict[str, list[float]] = {"plain": [], "ledger": []}
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for round_no in range(args.rounds):
        order = variants if round_no % 2 == 0 else variants[::-1]
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                wall, wall_flush, cpu_s, cpu_flush, rec_cpu = run_noops(tmp, n, variant)
            done[variant].append(wall)
            flushed[variant].append(wall_flush)
            cpu[variant].append(cpu_s)
            cpu_flushed[variant].append(cpu_flush)
            recording[variant].append(rec_cpu)
        for variant in (["plain", "ledger"] if round_no % 2 == 0 else ["ledger", "plain"]):
            with tempfile.TemporaryDirectory() as tmp:
                files[variant].append(run_files(tmp, copies, lines, variant))

    base, cpu_base = median(done["plain"]), median(cpu["plain"])
    print(f"\nPart 1: {n} no-op python apps on ThreadPoolExecutor(max_threads=4), {args.rounds} rounds")
    print("wall: until every result / until every record is in the ledger too; cpu: process time, all threads")
    print(f"{'variant':<10} {'wall s':>8} {'tasks/s':>8} {'ratio':>6} {'+flush':>7} {'ratio':>6}"
          f" {'cpu s':>7} {'ratio':>6} {'+flush':>7} {'ratio':>6} {'rec cpu':>8}")
    for variant in variants:
        d, f = median(done[variant]), median(flushed[variant])
        c, cf = median(cpu[variant]), median(cpu_flushed[variant])
        print(f"{variant:<10} {d:>8.3f} {n / d:>8,.0f} {d / base:>6.3f} {f:>7.3f} {f / base:>6.3f}"
              f" {c:>7.3f} {c / cpu_base:>6.3f} {cf:>7.3f} {cf / cpu_base:>6.3f} {median(recording[variant]):>8.3f}")
    per_round = [w / p for w, p in zip(done["wrapped"], done["plain"], strict=True)]
    print("per-round wall ratios wrapped/plain:", " ".join(f"{r:.2f}" for r in per_round),
          f"(median {median(per_round):.3f})")
    ratio = median(done["wrapped"]) / base
    print(f"\nPart 2: {copies} pipelines x 4 stages ({lines}+ lines each), {args.rounds} rounds")
    plain_files = median(files["plain"])
    for variant in ("plain", "ledger"):
        value = median(files[variant])
        print(f"{variant:<10} {value:>10.3f} s  ratio {value / plain_files:.3f}")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    verdict = "GOAL MET" if ratio <= GOAL else "GOAL MISSED"
    print(f"{verdict}: wrapped/plain = {ratio:.3f} (goal <= {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
