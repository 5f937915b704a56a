"""A four-stage Parsl pipeline, bash and python apps passing Files, recorded in a ledger.

    python examples/parsl/pipeline.py --workdir /tmp/demo               # ThreadPoolExecutor
    python examples/parsl/pipeline.py --workdir /tmp/demo --executor htex
    verify-lineage --ledger sqlite:////tmp/demo/ledger.db /tmp/demo/report.json

generate (bash: seq) -> square (python) -> total (bash: awk) -> report (python, reads two files)

Run it twice: the second run reuses the checkpointed results (recorded as ``cached``),
after checking every file against the ledger. Edit ``squares.txt`` in between and the
``--policy`` decides: ``warn`` logs, ``strict`` fails ``square`` naming the file,
``rerun`` computes it again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from parsl.app.app import bash_app, python_app
from parsl.config import Config
from parsl.data_provider.files import File


def generate(n: int, outputs: Any = ()) -> str:
    return f"seq 1 {int(n)} > {outputs[0]}"


def square(inputs: Any = (), outputs: Any = ()) -> int:
    count = 0
    with open(inputs[0]) as src, open(outputs[0], "w") as dst:
        for line in src:
            value = int(line)
            dst.write(f"{value * value}\n")
            count += 1
    return count


def total(inputs: Any = (), outputs: Any = ()) -> str:
    return f"""awk '{{s += $1}} END {{printf "%.0f\\n", s}}' {inputs[0]} > {outputs[0]}"""


def report(inputs: Any = (), outputs: Any = ()) -> dict:
    import json

    with open(inputs[0]) as raw:
        count = sum(1 for _ in raw)
    with open(inputs[1]) as tot:
        sum_of_squares = int(tot.read().strip())
    summary = {"count": count, "sum_of_squares": sum_of_squares}
    with open(outputs[0], "w") as out:
        json.dump(summary, out, sort_keys=True)
    return summary


# How a Parsl user memoizes this pipeline today: BasicMemoizer cannot hash a File (and
# ``ignore_for_cache=["outputs"]`` fails in make_hash), so paths travel as plain strings
# and each stage waits on the previous one through an ``after`` argument.
def generate_plain(n: int, dst: str) -> str:
    return f"seq 1 {int(n)} > {dst}"


def square_plain(src: str, dst: str, after: Any = None) -> int:
    return square(inputs=[src], outputs=[dst])


def total_plain(src: str, dst: str, after: Any = None) -> str:
    return f"""awk '{{s += $1}} END {{printf "%.0f\\n", s}}' {src} > {dst}"""


def report_plain(raw: str, tot: str, dst: str, after: Any = None) -> dict:
    return report(inputs=[raw, tot], outputs=[dst])


@dataclass
class Apps:
    generate: Any
    square: Any
    total: Any
    report: Any


def make_apps(*, plain: bool = False, executors: Any = "all") -> Apps:
    """The four stages as cached apps (``plain``: the string-path variant for BasicMemoizer)."""
    options = {"cache": True, "executors": executors}
    if plain:
        return Apps(bash_app(generate_plain, **options), python_app(square_plain, **options),
                    bash_app(total_plain, **options), python_app(report_plain, **options))
    return Apps(bash_app(generate, **options), python_app(square, **options),
                bash_app(total, **options), python_app(report, **options))


def paths(workdir: str) -> dict[str, str]:
    names = ("raw.txt", "squares.txt", "total.txt", "report.json")
    return {name: os.path.join(os.path.abspath(workdir), name) for name in names}


def submit_pipeline(workdir: str, n: int = 100, *, plain: bool = False, executors: Any = "all") -> dict:
    """Submit the four stages to the loaded DataFlowKernel; their AppFutures by stage name."""
    apps = make_apps(plain=plain, executors=executors)
    where = paths(workdir)
    if plain:
        raw = apps.generate(n, where["raw.txt"])
        squares = apps.square(where["raw.txt"], where["squares.txt"], after=raw)
        tot = apps.total(where["squares.txt"], where["total.txt"], after=squares)
        summary = apps.report(where["raw.txt"], where["total.txt"], where["report.json"], after=tot)
    else:
        raw = apps.generate(n, outputs=[File(where["raw.txt"])])
        squares = apps.square(inputs=[raw.outputs[0]], outputs=[File(where["squares.txt"])])
        tot = apps.total(inputs=[squares.outputs[0]], outputs=[File(where["total.txt"])])
        summary = apps.report(inputs=[raw.outputs[0], tot.outputs[0]], outputs=[File(where["report.json"])])
    return {"generate": raw, "square": squares, "total": tot, "report": summary}


def run_pipeline(workdir: str, n: int = 100, *, plain: bool = False, executors: Any = "all") -> dict:
    """Run the four stages and return the report's summary."""
    return submit_pipeline(workdir, n, plain=plain, executors=executors)["report"].result()


def make_config(workdir: str, executor: str, ledger: Any = None, *, checkpoint: bool = True, retries: int = 0,
                workers: int = 2, init_blocks: int = 1) -> Config:
    """A config for ``executor`` ("threads" or "htex"), wrapped by ``ledger`` (a ParslLedger) if given."""
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
    from parsl.providers import LocalProvider

    if executor == "htex":
        storage = None
        if ledger is not None:
            from lineage_ledger_parsl import WorkerHashingStaging

            storage = [WorkerHashingStaging()]
        inner: Any = HighThroughputExecutor(
            label="htex", address="127.0.0.1", max_workers_per_node=workers, cores_per_worker=1,
            heartbeat_period=2, heartbeat_threshold=10, poll_period=100, encrypted=False,
            storage_access=storage,
            provider=LocalProvider(init_blocks=init_blocks, min_blocks=0, max_blocks=1),
        )
    else:
        inner = ThreadPoolExecutor(label="threads", max_threads=4)
    options = {"checkpoint_mode": "task_exit"} if checkpoint else {}
    run_dir = os.path.join(os.path.abspath(workdir), "runinfo")
    if ledger is None:
        from parsl.dataflow.memoization import BasicMemoizer

        return Config(executors=[inner], memoizer=BasicMemoizer(**options), run_dir=run_dir,
                      retries=retries, usage_tracking=0, strategy_period=1)
    return Config(executors=[ledger.wrap(inner)], memoizer=ledger.memoizer(**options), run_dir=run_dir,
                  retries=retries, usage_tracking=0, strategy_period=1)


def main(argv: list[str] | None = None) -> int:
    import parsl
    from lineage_ledger_parsl import ParslLedger

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--ledger", default=None, help="ledger URL (default: sqlite:///WORKDIR/ledger.db)")
    parser.add_argument("--executor", choices=("threads", "htex"), default="threads")
    parser.add_argument("--policy", choices=("warn", "strict", "rerun"), default="warn")
    parser.add_argument("--file-key", choices=("path", "content"), default="content")
    parser.add_argument("-n", type=int, default=100)
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    url = args.ledger or "sqlite:///" + os.path.join(os.path.abspath(args.workdir), "ledger.db")
    ledger = ParslLedger(url, policy=args.policy, file_key=args.file_key)
    dfk = parsl.load(make_config(args.workdir, args.executor, ledger))
    try:
        summary = run_pipeline(args.workdir, args.n)
    finally:
        dfk.cleanup()
        ledger.close()
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
