"""What the benchmark scripts share: the synthetic record, the common flags, and one fresh
process timed with its peak resident set."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone

from blake3 import blake3

from lineage_ledger import Artifact, Record

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def record_args(i: int, run_id: str = "run-0") -> dict:
    """Keyword arguments of one Record: what an engine has at hand when a task ends."""
    return dict(
        engine="bench", run_id=run_id, task_id=f"task-{i}", task_name="align",
        status="succeeded", started=T0 + timedelta(seconds=i), ended=T0 + timedelta(seconds=i + 1),
        inputs=[Artifact(f"/data/samples/s{i:07d}/reads.fastq", blake3(b"in%d" % i).hexdigest(), 1000)],
        outputs=[Artifact(f"/data/results/s{i:07d}/aligned.bam", blake3(b"out%d" % i).hexdigest(), 2000)],
        parameters={"threads": 4, "reference": "GRCh38"},
    )


def synthetic_record(i: int, run_id: str | None = None) -> Record:
    """Record ``i``: one input and one output, runs of 10,000 tasks."""
    return Record(**record_args(i, run_id or f"run-{i // 10_000}"))


def parse_args(doc: str | None, quick: str, *, quick_rounds: int, full_rounds: int = 5) -> argparse.Namespace:
    """``--quick`` (a seconds-long smoke run) and ``--repeats N``; sets ``args.rounds``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--repeats", type=int, default=None, help="rounds to take the median over")
    args = parser.parse_args()
    args.rounds = args.repeats or (quick_rounds if args.quick else full_rounds)
    return args


def timed_process(command: list[str], env: dict) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system: what a busy machine
    inflates least) of one fresh process, which must exit 0 (its stderr's end says why not)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    error = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:3])} exited {os.waitstatus_to_exitcode(status)}: {error}")
    return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
