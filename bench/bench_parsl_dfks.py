"""Many short DataFlowKernels in one process, with and without the ledger (issue 16).

Parsl's own test suite in local mode loads a fresh DataFlowKernel for each test module, runs
a few short apps and cleans up: 52 of them. With the plugin each DFK's ``ParslLedger`` used
to start a recording process of its own (about 0.4 s of CPU to start: Python and the
ledger's imports), which made that suite 1.45x slower.

Each round runs, in one variant after the other (order alternating), 50 DataFlowKernels
one after another, each: ``parsl.load`` a config with a ThreadPoolExecutor (2 threads),
``--apps`` python apps (default 20: two passing a ``File``, the others sleeping ``--sleep``
seconds, default 0.04, like the short apps of a Parsl test module), ``dfk.cleanup()``:

  plain    Config(executors=[ThreadPoolExecutor(...)])
  ledger   a new ParslLedger(sqlite) per DFK: ledger.wrap(executor), ledger.memoizer()

Timed: the whole sequence, from the first ``parsl.load`` to the last cleanup (the plugin's
flush at shutdown included). After the ledger variant, every try is checked to be in the
ledger. Load is printed: on a shared machine single rounds swing; the median decides.

Goal (issue 16): median ledger / plain <= 1.10. ``--apps 4 --sleep 0`` (near-empty DFKs of
about 20 ms each) shows the worst case: there the cleanup's flush, a round trip to the
recording process, costs as much as a whole plain DFK.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import parsl
from _common import parse_args
from lineage_ledger_parsl import ParslLedger
from parsl.app.app import python_app
from parsl.config import Config
from parsl.data_provider.files import File
from parsl.executors import ThreadPoolExecutor

from lineage_ledger import open_ledger

GOAL = 1.10


def double(x: int, pause: float = 0.0) -> int:
    if pause:
        import time

        time.sleep(pause)
    return 2 * x


def write(x: int, outputs=()) -> int:
    with open(outputs[0].filepath, "w") as handle:
        handle.write(str(x))
    return x


def read(inputs=()) -> int:
    with open(inputs[0].filepath) as handle:
        return int(handle.read())


def one_dfk(tmp: Path, number: int, variant: str, apps: int, pause: float) -> str:
    executor = ThreadPoolExecutor(label="threads", max_threads=2)
    run_dir = str(tmp / "runinfo")
    if variant == "plain":
        config = Config(executors=[executor], run_dir=run_dir, usage_tracking=0)
    else:
        ledger = ParslLedger(f"sqlite:///{tmp}/ledger.db", spool=str(tmp / "spool"))
        config = Config(executors=[ledger.wrap(executor)], memoizer=ledger.memoizer(), run_dir=run_dir,
                        usage_tracking=0)
    dfk = parsl.load(config)
    try:
        target = File(str(tmp / f"out{number}.txt"))
        written = python_app(write)(number, outputs=[target])
        doubled = [python_app(double)(number + i, pause) for i in range(apps - 2)]
        futures = [*doubled, written, python_app(read)(inputs=[written.outputs[0]])]
        assert [f.result() for f in futures] == [2 * (number + i) for i in range(apps - 2)] + [number, number]
        return dfk.run_id
    finally:
        dfk.cleanup()


def one_round(dfks: int, variant: str, apps: int, pause: float) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its children) of ``dfks`` DFKs."""
    with tempfile.TemporaryDirectory(prefix=f"ll-bench-dfks-{variant}-") as name:
        tmp = Path(name)
        gc.collect()
        cpu_before = _cpu()
        start = time.perf_counter()
        run_ids = [one_dfk(tmp, i, variant, apps, pause) for i in range(dfks)]
        elapsed = time.perf_counter() - start
        if variant == "ledger":
            _wait_for_children(30)  # the recording process's CPU counts once it has exited
        cpu = _cpu() - cpu_before
        if variant == "ledger":
            with open_ledger(f"sqlite:///{tmp}/ledger.db") as ledger:
                recorded = sum(len(ledger.run(run_id)) for run_id in run_ids)
            assert recorded == dfks * apps, (recorded, dfks * apps)
    return elapsed, cpu


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _wait_for_children(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.1)
        except ChildProcessError:
            return


def main() -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--apps", type=int, default=20)
    extra.add_argument("--sleep", type=float, default=0.04)
    options, rest = extra.parse_known_args()
    sys.argv[1:] = rest
    # --quick is the test suite's smoke run: 3 DFKs still load, run and clean up one after
    # another in one process (the case the issue was about), in a third of the 10's time.
    args = parse_args(__doc__, "3 DFKs, 2 rounds", quick_rounds=2, full_rounds=7)
    dfks = 3 if args.quick else 50
    apps, pause = max(options.apps, 3), options.sleep
    logging.getLogger("parsl").setLevel(logging.WARNING)
    print(f"{dfks} DataFlowKernels x {apps} apps ({apps - 2} sleeping {pause} s), {args.rounds} rounds, "
          f"cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}")
    walls: dict[str, list[float]] = {"plain": [], "ledger": []}
    cpus: dict[str, list[float]] = {"plain": [], "ledger": []}
    for round_no in range(args.rounds):
        order = ("plain", "ledger") if round_no % 2 == 0 else ("ledger", "plain")
        for variant in order:
            wall, cpu = one_round(dfks, variant, apps, pause)
            walls[variant].append(wall)
            cpus[variant].append(cpu)
        print(f"round {round_no}: plain {walls['plain'][-1]:.2f} s (cpu {cpus['plain'][-1]:.2f}), "
              f"ledger {walls['ledger'][-1]:.2f} s (cpu {cpus['ledger'][-1]:.2f}), "
              f"ratio {walls['ledger'][-1] / walls['plain'][-1]:.3f}, load {os.getloadavg()[0]:.1f}")
    plain, ledger = statistics.median(walls["plain"]), statistics.median(walls["ledger"])
    cpu_plain, cpu_ledger = statistics.median(cpus["plain"]), statistics.median(cpus["ledger"])
    print(f"\nmedian wall: plain {plain:.3f} s, ledger {ledger:.3f} s ({(ledger - plain) / dfks * 1e3:+.1f} ms per DFK)")
    print(f"median CPU (this process and its children): plain {cpu_plain:.3f} s, ledger {cpu_ledger:.3f} s, "
          f"ratio {cpu_ledger / cpu_plain:.3f}")
    ratio = ledger / plain
    print(f"load at end {os.getloadavg()[0]:.1f}")
    print(f"{'GOAL MET' if ratio <= GOAL else 'GOAL MISSED'}: ledger / plain = {ratio:.3f} (goal <= {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
