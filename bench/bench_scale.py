"""How verification grows with the ledger: 10k, 100k and 1M task-shaped records.

Every figure is what a user runs, in a fresh process (imports included), on a SQLite ledger
whose tree head this account verified before (the state a workstation is in after its first
check), unless the line says otherwise:

* ``verify TARGET``   ``verify-lineage FINAL`` of a 3-task lineage with real files on disk;
* ``pre-run check``   ``verify_before_run(url, [3 inputs], "strict")``, what the plugins call;
* ``why``             ``lineage-ledger why FINAL``;
* ``depends``         ``lineage-ledger depends REF`` of the reference every task read (first page);
* ``audit``           ``verify-lineage`` with no target: every block, record and index row,
                      with its peak RSS (records/s = records / seconds); from 200,000 records it
                      runs in worker processes (below, their bulk check runs in the one process),
                      and ``audit, one process`` (``LINEAGE_AUDIT_WORKERS=1``) is the baseline for
                      them (peak RSS is the largest one process's);
* ``checkpoint``      ``lineage-ledger checkpoint``; ``consistency proof`` (the Python API,
                      an internal path: ``consistency_proof`` from the 10% head to the head).

``--worker-cpu [--before DIR]``: only an audit worker's CPU a record at the largest size, in
turn with the code in ``DIR`` (``DIR/lineage_ledger``, as ``bench_audit_workers.py --before``
takes it), and the rate it projects for ten workers on 16 cores.

The baseline is the same operation on the smallest ledger, in the same run: the ratio
column is time(size) / time(10k); the goal at 1M is <= 2 for targeted operations.

Records: per sample, a chain of 4 tasks, each reading the shared reference, its sample's
previous output and 0-2 more inputs (2-5 inputs) and writing 1-3 outputs. The 3 records of
the target lineage sit in the middle of the ledger, so half of the ledger is newer than them.
Ledgers are built once with the Python API in batches of 5,000 and kept in ``--cache``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from blake3 import blake3

from lineage_ledger import Record, hash_file, open_ledger

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
BIN = Path(sys.executable).parent


def _digest(text: str) -> str:
    return blake3(text.encode()).hexdigest()


def _task(i: int, ref: dict) -> Record:
    sample, step = divmod(i, 4)
    base = f"/nonexistent/bench/s{sample:07d}"
    inputs = {ref["path"]: ref["entry"], f"{base}/step{step - 1}.out" if step else f"{base}/reads.fq":
              {"blake3": _digest(f"{i}-prev"), "size": 100}}
    for extra in range(i % 3):
        inputs[f"{base}/aux{extra}.txt"] = {"blake3": _digest(f"{i}-aux{extra}"), "size": 10}
    outputs = {f"{base}/step{step}.out": {"blake3": _digest(f"{i + 1}-prev"), "size": 100}}
    for extra in range(i % 3):
        outputs[f"{base}/step{step}.log{extra}"] = {"blake3": _digest(f"{i}-log{extra}"), "size": 10}
    return Record(engine="bench", run_id=f"run-{i // 10_000}", task_id=f"t{i}", task_name=f"step{step}",
                  status="succeeded", started=T0 + timedelta(seconds=i), ended=T0 + timedelta(seconds=i + 1),
                  inputs=inputs, outputs=outputs, parameters={"threads": 4, "reference": "GRCh38"},
                  environment={"host": "bench", "python": "3.11"})


def _real_lineage(files: Path) -> tuple[list[Record], list[str]]:
    """Three recorded tasks over real files: raw + ref -> a.bam -> b.bam, stats -> final.vcf."""
    files.mkdir(parents=True, exist_ok=True)
    contents = {"ref.fa": "ACGT" * 1000, "raw.fq": "@r1\nACGT\n+\nIIII\n", "a.bam": "aligned", "b.bam": "sorted",
                "stats.txt": "n=1", "final.vcf": "##fileformat=VCFv4.2"}
    for name, text in contents.items():
        (files / name).write_text(text)
    art = {name: hash_file(str(files / name)) for name in contents}

    def side(*names):
        return {art[n].path: art[n].entry() for n in names}

    def task(i, name, ins, outs):
        return Record(engine="bench", run_id="real", task_id=f"real-{i}", task_name=name, status="succeeded",
                      started=T0 + timedelta(days=400, seconds=i), ended=T0 + timedelta(days=400, seconds=i + 1),
                      inputs=side(*ins), outputs=side(*outs), parameters={}, environment={"host": "bench"})

    records = [task(0, "align", ["ref.fa", "raw.fq"], ["a.bam"]),
               task(1, "sort", ["a.bam", "ref.fa"], ["b.bam", "stats.txt"]),
               task(2, "call", ["b.bam", "stats.txt", "ref.fa"], ["final.vcf"])]
    return records, [art["b.bam"].path, art["stats.txt"].path, art["ref.fa"].path]


def build(cache: Path, size: int, server: Any = None) -> tuple[str, Path]:
    """The ledger of ``size`` records (built once): a SQLite file in ``cache``, or a database
    of the PostgreSQL ``server``, whose data directory is kept in ``cache`` too."""
    directory = cache / (f"pg-ledger-{size}" if server is not None else f"ledger-{size}")
    url = server.dsn(f"ledger_{size}") if server is not None else f"sqlite:///{directory}/ledger.db"
    if (directory / "done").exists():
        return url, directory
    if server is not None:
        import psycopg

        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS ledger_{size}")
            conn.execute(f"CREATE DATABASE ledger_{size}")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    real, _ = _real_lineage(directory / "files")
    ref_path = str(directory / "files" / "ref.fa")
    ref = {"path": ref_path, "entry": real[0].inputs[ref_path]}
    started = time.perf_counter()
    with open_ledger(url, spool=str(directory / "spool"), state_dir=str(directory / "unused-state")) as ledger:
        for start in range(0, size, 5000):
            batch = [_task(i, ref).stored() for i in range(start, min(size, start + 5000))]
            if start <= size // 2 < start + 5000:
                batch[len(batch) // 2 : len(batch) // 2] = [r.stored() for r in real]
            ledger.append_records(batch, block_size=1000)
    (directory / "done").write_text(f"{time.perf_counter() - started:.1f} s to build\n")
    return url, directory


def timed(command: list[str], env: dict, cwd: Path) -> tuple[float, int, int]:
    """Wall seconds, exit status and peak RSS (KiB) of one fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0,):
        sys.stderr.write(process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else "")
    return elapsed, process.returncode, usage.ru_maxrss


def measure(url: str, directory: Path, rounds: int, audit_rounds: int | None = None) -> dict[str, tuple[float, float]]:
    _, inputs = _real_lineage(directory / "files")
    final = str(directory / "files" / "final.vcf")
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(state)
    check = (f"from lineage_ledger import verify_before_run; "
             f"assert verify_before_run({url!r}, {inputs!r}, 'strict') == []")
    commands = {
        "audit (first, remembered)": [str(BIN / "verify-lineage"), "--ledger", url],
        "verify TARGET": [str(BIN / "verify-lineage"), "--ledger", url, final],
        "pre-run check (3 inputs)": [sys.executable, "-c", check],
        "why": [str(BIN / "lineage-ledger"), "why", "--ledger", url, final],
        "depends (first page)": [str(BIN / "lineage-ledger"), "depends", "--ledger", url, inputs[2]],
        "checkpoint": [str(BIN / "lineage-ledger"), "checkpoint", "--ledger", url],
        "audit": [str(BIN / "verify-lineage"), "--ledger", url],
        # The baseline for the worker processes: the same audit in one process.
        "audit, one process": [str(BIN / "verify-lineage"), "--ledger", url],
    }
    own_env = {"audit, one process": {**env, "LINEAGE_AUDIT_WORKERS": "1"}}
    results: dict[str, tuple[float, float]] = {}
    try:
        for name, command in commands.items():
            times, peaks = [], []
            repeat = rounds if not name.startswith("audit") else audit_rounds or rounds
            for _ in range(1 if name.startswith("audit (first") else repeat):
                elapsed, rc, peak = timed(command, own_env.get(name, env), directory)
                if rc != 0:
                    raise SystemExit(f"{name} exited {rc}: {' '.join(command)}")
                times.append(elapsed)
                peaks.append(peak)
            results[name] = (statistics.median(times), max(peaks) / 1024)
        results["consistency proof (API)"] = (_consistency(url, state), 0.0)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return results


def _parallel_workers() -> int:
    from lineage_ledger._log.audit_parallel import workers

    return workers()


def _consistency(url: str, state: Path) -> float:
    from lineage_ledger._log.tree import BLAKE3, consistency_proof, verify_consistency

    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
        head = ledger.tree_head()
        store = ledger.verifier.store
        old = max(1, head.size // 10)
        started = time.perf_counter()
        proof = consistency_proof(store.node, old, head.size, BLAKE3)
        verify_consistency(BLAKE3, old, head.size, bytes.fromhex(store.root_at(old)), bytes.fromhex(head.root), proof)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", "--repeats", type=int, default=5, help="fresh processes per figure (median)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lineage-bench-scale"))
    parser.add_argument("--quick", action="store_true", help="one size, 2,000, 2 rounds")
    parser.add_argument("--audit-rounds", type=int, default=None,
                        help="rounds of each full audit (default: --rounds; one is minutes at 10M records)")
    parser.add_argument("--postgres", action="store_true",
                        help="ledgers in a PostgreSQL server this script starts (its data kept in --cache)")
    parser.add_argument("--worker-cpu", action="store_true",
                        help="only an audit worker's CPU a record at the largest size (see worker_cpu)")
    parser.add_argument("--before", default=None,
                        help="with --worker-cpu: a folder holding lineage_ledger as it was, run in turn with ours")
    parser.add_argument("--ranges", default="10,60,110", help="with --worker-cpu: which of the ledger's ranges")
    args = parser.parse_args()
    if args.worker_cpu:
        url, _directory = build(Path(args.cache), int(args.sizes.split(",")[-1]))
        worker_cpu(url, args.rounds, args.before, args.ranges)
        return
    # --quick is the test suite's smoke run, whose figures nobody reads: one size runs every
    # path (a second one ran them all again, and built a 10,000-record ledger on a fresh machine).
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = args.rounds if args.quick and args.rounds != 5 else (2 if args.quick else args.rounds)
    cache = Path(args.cache)
    server = _postgres(cache) if args.postgres else None
    try:
        _run(sizes, rounds, cache, server, args.audit_rounds)
    finally:
        if server is not None:
            server.stop()


# One process's part of a worker's work: the bulk check of some of the ledger's ranges,
# in process, as a worker runs them (collector off, its own read-only connection, the frame it
# writes): CPU time a record, the best of two passes. (A worker's start, about 0.1 s, is
# not in it.)
_WORKER_CPU = """import gc, os, sys, time
from lineage_ledger._log import audit_parallel
from lineage_ledger.backends import open_backend
gc.disable()
backend = open_backend(sys.argv[1], create=False)
url, uri = backend.worker_spec()
ranges = audit_parallel._ranges(backend, backend.head().height + 1)
backend.close()
from lineage_ledger.backends._sqlite_reader import SQLiteReader
backend = SQLiteReader(url, _uri=uri)
tasks = [ranges[int(at)] for at in sys.argv[2].split(",") if int(at) < len(ranges)] or ranges[:2]
sink, best = open(os.devnull, "wb"), float("inf")
for _ in range(2):
    started, records = time.process_time(), 0
    for task in tasks:
        result = audit_parallel.audit_range(backend, task, True)
        assert result is not None, task
        records += len(result.leaves) // 32
        audit_parallel._write_result(sink, result)
    best = min(best, (time.process_time() - started) * 1e6 / records)
print(best)
"""


def worker_cpu(url: str, rounds: int, before: str | None, ranges: str) -> None:
    """An audit worker's CPU a record (``_WORKER_CPU``), ours and, with ``before``, the code in
    that folder (through ``PYTHONPATH``), in turn, in fresh processes; medians, the ratio, and
    what it would make of the audit's rate on a machine of 16 cores (ten workers)."""
    codes = {"ours": None} if before is None else {"before": before, "ours": None}
    found: dict[str, list[float]] = {name: [] for name in codes}
    print(f"a worker's CPU a record, ranges {ranges}; load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for turn in range(rounds):
        for name, code in (codes.items() if turn % 2 == 0 else reversed(codes.items())):
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("LINEAGE_")}
            if code is not None:
                env["PYTHONPATH"] = code
            out = subprocess.run([sys.executable, "-c", _WORKER_CPU, url, ranges], env=env, cwd=tempfile.gettempdir(),
                                 capture_output=True, text=True, check=True)
            found[name].append(float(out.stdout))
        print("  " + ", ".join(f"{name} {found[name][-1]:.2f} us" for name in codes)
              + f"; load {os.getloadavg()[0]:.2f}", flush=True)
    ours = statistics.median(found["ours"])
    said = f"ours {ours:.2f} us a record (median of {rounds})"
    if before is not None:
        then = statistics.median(found["before"])
        said += f", before {then:.2f} us: {ours / then:.3f}"
    print(said)
    # Ten workers on 16 cores: the busiest verifies 13 of a million records' 125 ranges
    # (104,000 records), after about 0.55 s of serial work (the parent before the first
    # range and after the last, a worker's start): docs/benchmarks.md, twenty-fifth stop.
    print(f"  ten workers on cores like these: about {1e6 / (0.55 + 104_000 * ours * 1e-6):,.0f} records/s "
          f"(a projection; 300,000 needs {(1e6 / 300_000 - 0.55) / 104_000 * 1e6:.1f} us a record or less)")


def _postgres(cache: Path) -> Any:
    """A PostgreSQL server (the tests' helper) whose data directory stays in ``cache``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.postgres import PostgresServer, find_server_binaries

    bindir = find_server_binaries()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binary (initdb); install Debian's postgresql")
    server = PostgresServer(bindir)
    shutil.rmtree(server.base, ignore_errors=True)
    server.base = str(cache / "pg")  # kept: the ledgers take minutes to build
    server.data = os.path.join(server.base, "data")
    os.makedirs(server.base, exist_ok=True)
    os.chmod(cache, 0o755)
    os.chmod(server.base, 0o700)
    if server._user is not None:
        os.chown(server.base, server._user.pw_uid, server._user.pw_gid)
    return server.start()


def _run(sizes: list[int], rounds: int, cache: Path, server: Any, audit_rounds: int | None) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {rounds} rounds, medians", flush=True)
    table: dict[int, dict[str, tuple[float, float]]] = {}
    for size in sizes:
        url, directory = build(cache, size, server)
        print(f"ledger of {size:,} records: {(directory / 'done').read_text().strip()}", flush=True)
        table[size] = measure(url, directory, rounds, audit_rounds)
    base = sizes[0]
    print(f"\n{'operation':28}" + "".join(f"{s:>12,}" for s in sizes) + f"   ratio {sizes[-1]:,}/{base:,}")
    for name in table[base]:
        cells = "".join(f"{table[s][name][0]:>11.3f}s" for s in sizes)
        ratio = table[sizes[-1]][name][0] / table[base][name][0] if table[base][name][0] else float("nan")
        print(f"{name:28}{cells}   {ratio:.2f}")
    print(f"{'audit peak RSS (MiB)':28}" + "".join(f"{table[s]['audit'][1]:>11.0f} " for s in sizes))
    print(f"{'audit records/s':28}" + "".join(f"{s / table[s]['audit'][0]:>12,.0f}" for s in sizes))
    print(f"{'  one process, records/s':28}"
          + "".join(f"{s / table[s]['audit, one process'][0]:>12,.0f}" for s in sizes))
    print(f"{'  workers vs one process':28}"
          + "".join(f"{table[s]['audit, one process'][0] / table[s]['audit'][0]:>11.2f}x" for s in sizes)
          + f"   ({_parallel_workers()} workers from 200,000 records)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    big = sizes[-1]
    for name in ("verify TARGET", "pre-run check (3 inputs)"):
        seconds, ratio = table[big][name][0], table[big][name][0] / table[base][name][0]
        verdict = "GOAL MET" if ratio <= 2 and seconds < 0.3 else "GOAL MISSED"
        print(f"{verdict}: {name} at {big:,} records {seconds:.3f} s, {ratio:.2f}x the {base:,} figure "
              "(goal: within 2x and under 0.3 s)")
    rate, peak = big / table[big]["audit"][0], table[big]["audit"][1]
    verdict = "GOAL MET" if rate >= 300_000 and peak <= 512 else "GOAL MISSED"
    print(f"{verdict}: audit at {big:,} records {rate:,.0f} records/s, peak RSS {peak:.0f} MiB "
          "(goal: >= 300,000 records/s, <= 512 MiB)")


if __name__ == "__main__":
    main()
