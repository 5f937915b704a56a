"""``verify-lineage DIR`` of N recorded files against ``lineage-ledger hash --rehash DIR``.

Both read every file of DIR (N files of 4 KiB); verification also proves the records that wrote
them and checks each file's lineage. ``--tasks one`` (the default): the N outputs of one
recorded task, whose record names all N. ``--tasks each``: each file the one output of its own
task (N records, all reading one source), as the results directory of a scatter step, where
every record is fetched, proved and decoded. The baseline,
``hash --rehash``, is the cost of reading and hashing the files alone. Each round runs both
commands as fresh processes, alternating which goes first; medians are printed.

Goal (issue #14): verify-lineage / hash --rehash <= 1.5 at N = 10,000. ``--against DIR`` also times
verify-lineage with another version of the package first on PYTHONPATH, in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from lineage_ledger import Hasher, Record, open_ledger

BIN = Path(sys.executable).parent


def build(base: Path, n: int, size: int = 4096, tasks: str = "one") -> str:
    out = base / "out"
    out.mkdir()
    for i in range(n):
        (out / f"part-{i:06d}.txt").write_bytes(os.urandom(size // 2).hex().encode())
    (base / "input.txt").write_text("source")
    files = Hasher().hash_many([str(p) for p in sorted(out.iterdir())] + [str(base / "input.txt")])
    now = datetime.now(timezone.utc)
    url = f"sqlite:///{base}/ledger.db"
    with open_ledger(url, spool=str(base / "spool")) as ledger:
        if tasks == "one":
            ledger.record(Record(engine="bench", run_id="r", task_id="split", task_name="split", status="succeeded",
                                 started=now, ended=now, inputs=files[-1:], outputs=files[:-1]))
        else:
            ledger.append_records([Record(engine="bench", run_id="r", task_id=f"t{i}", task_name="split",
                                          status="succeeded", started=now, ended=now, inputs=files[-1:],
                                          outputs=[f]).stored() for i, f in enumerate(files[:-1])])
    return url


CPU: dict[str, list[float]] = {"verify": [], "hash": [], "against": []}  # user + system seconds of each timed run


def timed(command: list[str], env: dict, which: str | None = None) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} exited {result.returncode}: {result.stderr[-2000:]}")
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if which is not None:
        CPU[which].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", "--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 files, 2 rounds")
    parser.add_argument("--tasks", choices=("one", "each"), default="one",
                        help="one task wrote every file (the goal's shape), or each file its own task")
    parser.add_argument("--bytes", type=int, default=4096,
                        help="bytes a file (the goal is set at 4 KiB: hashing then costs the least beside the checks)")
    parser.add_argument("--against", metavar="DIR",
                        help="also time verify-lineage run with DIR first on PYTHONPATH (a folder holding another "
                             "version's lineage_ledger package, as a copy of the last stop's code), in turn with the "
                             "others: on a shared machine only figures taken in turn compare")
    parser.add_argument("--verify-ahead", choices=("auto", "always", "never"), default="auto",
                        help="LINEAGE_VERIFY_AHEAD for verify-lineage (auto: a second process where a processor "
                             "is idle as it starts; always: whatever the load, as when this script runs at a "
                             "real-time priority on a shared machine, `chrt -r 10`, where /proc/loadavg counts "
                             "the others' tasks that wait)")
    args = parser.parse_args()
    n, rounds = (500, min(args.rounds, 2)) if args.quick else (args.files, args.rounds)
    base = Path(tempfile.mkdtemp(prefix="bench-verify-files-"))
    # Both commands run with their modules' bytecode, as an install has it: this checkout may
    # be installed in development mode and run with PYTHONDONTWRITEBYTECODE, where every run
    # would compile its imports from source (verify-lineage imports about twice as many).
    # The untimed first run of each fills a private PYTHONPYCACHEPREFIX.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LINEAGE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["LINEAGE_STATE_DIR"] = str(base / "state")
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    if args.verify_ahead != "auto":
        env["LINEAGE_VERIFY_AHEAD"] = args.verify_ahead  # the code before it ignores it
    try:
        url = build(base, n, args.bytes, args.tasks)
        verify = [str(BIN / "verify-lineage"), "--ledger", url, str(base / "out")]
        rehash = [str(BIN / "lineage-ledger"), "hash", "--rehash", "--cache", str(base / "cache.db"), str(base / "out")]
        timed(verify, env)  # the first verification on this account audits the (one-record) ledger
        timed(rehash, env)  # and the first run of each compiles its modules
        other = None
        if args.against:
            other = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.abspath(args.against),
                                                                       env.get("PYTHONPATH")]))}
            timed(verify, other)
        print(f"{n:,} files of {args.bytes:,} bytes, written by {'one task' if args.tasks == 'one' else 'a task each'}; "
              f"load average at start {os.getloadavg()[0]:.2f}; {rounds} rounds; verify-ahead {args.verify_ahead}; "
              f"scheduling policy {os.sched_getscheduler(0)} (0 normal, 1 FIFO, 2 round-robin)")
        times: dict[str, list[float]] = {"verify": [], "hash": [], "against": []}
        kinds = ["verify", "hash", *(["against"] if other is not None else [])]
        for i in range(rounds):
            for which in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:  # each goes first in turn
                command = rehash if which == "hash" else verify
                times[which].append(timed(command, other if which == "against" else env, which))
        v, h = statistics.median(times["verify"]), statistics.median(times["hash"])
        print(f"verify-lineage DIR: median {v:.3f} s  {[round(t, 3) for t in times['verify']]}")
        print(f"hash --rehash DIR:  median {h:.3f} s  {[round(t, 3) for t in times['hash']]}")
        if other is not None:
            a = statistics.median(times["against"])
            print(f"verify-lineage DIR, {args.against}: median {a:.3f} s  {[round(t, 3) for t in times['against']]}"
                  f"  ratio {a / h:.3f}; CPU median {statistics.median(CPU['against']):.3f} s")
        print(f"ratio {v / h:.3f} (goal <= 1.5); load average at end {os.getloadavg()[0]:.2f}")
        # CPU time moves less with the machine's load than wall time does: context, not the goal.
        cv, ch = statistics.median(CPU["verify"]), statistics.median(CPU["hash"])
        print(f"CPU (user + system), medians: verify-lineage {cv:.3f} s, hash --rehash {ch:.3f} s, ratio {cv / ch:.3f}")
        print(f"{'GOAL MET' if v / h <= 1.5 else 'GOAL MISSED'}: verify-lineage / hash --rehash = {v / h:.3f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
