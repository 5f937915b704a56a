#!/usr/bin/env bash
# Run every benchmark at full size, one after another (never in parallel: the numbers
# assume the machine is otherwise idle). Extra arguments (e.g. --quick) go to each script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-$repo/.venv/bin/python}"
cd "$repo"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
for name in hashing statcache sqlite_append verify_chain scale snakemake_scale verify_files record snakemake parsl airflow baash baash_reads fabric; do
    echo
    echo "=== bench/bench_$name.py $* ==="
    "$python" "bench/bench_$name.py" "$@"
done

