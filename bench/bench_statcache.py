"""Re-verifying an unchanged tree of small files from the stat cache.

A tree of 10,000 small files (1,000 with --quick) in nested directories is hashed once
through ``Hasher(StatCache(cache_file)).hash_many(walk_files(root))``; that cold pass
fills the cache file. Each timed warm pass then does what a new process does:
``StatCache(cache_file)`` (loads the cache from disk) plus ``hash_many(walk_files(root))``.
A warm pass must hash nothing: the cache file is checked to be left untouched.

Baselines, in the same run and interleaved round by round:
  floor    os.walk + os.stat of every file (what any stat-based check must pay)
  rehash   Hasher(rehash=True).hash_many(walk_files(root)) (BLAKE3 of every file again)
The warm pass is also split into its parts (walk_files, cache load, hash_many on a
ready list) to show where its time goes.

Goal (issue #2): the warm pass handles >= 200,000 files/s.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from _common import parse_args

from lineage_ledger import Hasher, StatCache, walk_files


def make_tree(root: str, count: int) -> None:
    """count files of 100-1,100 bytes, 10 files per leaf dir, three directory levels."""
    for i in range(count):
        directory = os.path.join(root, f"a{i // 1000:03d}", f"b{i // 100 % 10}", f"c{i // 10 % 10}")
        if i % 10 == 0:
            os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{i:06d}.dat"), "wb") as handle:
            handle.write(os.urandom(100 + i % 1000))


def floor(root: str) -> int:
    n = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(directory, name))
            n += 1
    return n


def warm(root: str, cache_file: str) -> int:
    return len(Hasher(StatCache(cache_file)).hash_many(walk_files(root)))


def rehash(root: str) -> int:
    return len(Hasher(rehash=True).hash_many(walk_files(root)))


def main() -> None:
    args = parse_args(__doc__, "1,000 files, 3 rounds", quick_rounds=3)
    count = 1_000 if args.quick else 10_000
    repeats = args.rounds

    with tempfile.TemporaryDirectory(prefix="ll-bench-stat-") as tmp:
        root = os.path.join(tmp, "tree")
        cache_file = os.path.join(tmp, "cache", "stat.db")
        make_tree(root, count)

        start = time.perf_counter()
        cold = Hasher(StatCache(cache_file)).hash_many(walk_files(root))
        cold_s = time.perf_counter() - start
        assert len(cold) == count
        print(f"{count} files, {repeats} rounds, cpus: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; "
              f"cold pass (hash + fill cache): {cold_s:.3f} s")
        cache_mtime = os.stat(cache_file).st_mtime_ns

        variants = {
            "warm": lambda: warm(root, cache_file),
            "floor": lambda: floor(root),
            "rehash": lambda: rehash(root),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                n = fn()
                times[name].append(time.perf_counter() - start)
                assert n == count, (name, n)
        assert os.stat(cache_file).st_mtime_ns == cache_mtime, "a warm pass rewrote the cache"

        # Where the warm pass spends its time (median of the same number of rounds).
        parts: dict[str, list[float]] = {"walk_files": [], "StatCache load": [], "hash_many (listed)": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            paths = list(walk_files(root))
            t1 = time.perf_counter()
            cache = StatCache(cache_file)
            t2 = time.perf_counter()
            Hasher(cache).hash_many(paths)
            t3 = time.perf_counter()
            for name, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[name].append(value)

    rate = {name: count / statistics.median(t) for name, t in times.items()}
    print(f"\n{'variant':<8} {'median s':>9} {'min s':>8} {'files/s':>10}")
    for name, t in times.items():
        print(f"{name:<8} {statistics.median(t):9.4f} {min(t):8.4f} {rate[name]:10,.0f}")
    print("\nwarm pass broken down (median s, us/file):")
    for name, t in parts.items():
        med = statistics.median(t)
        print(f"  {name:<20} {med:8.4f}  {med / count * 1e6:6.2f}")

    print(f"\nwarm / floor  = {rate['warm'] / rate['floor']:.2f}x of the os.walk+os.stat rate")
    print(f"warm / rehash = {rate['warm'] / rate['rehash']:.2f}x faster than rehashing everything")
    print(f"warm rate {rate['warm']:,.0f} files/s   (goal >= 200,000 files/s)")
    print("GOAL MET" if rate["warm"] >= 200_000 else "GOAL MISSED")


if __name__ == "__main__":
    main()
