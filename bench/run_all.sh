#!/usr/bin/env bash
# Run every benchmark at full size, one after another (never in parallel: the numbers
# assume the machine is otherwise idle). Extra arguments (e.g. --quick) go to each script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-$repo/.venv/bin/python}"
cd "$repo"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
for script in bench/bench_*.py; do  # every benchmark, so a new one is never left out
    echo
    echo "=== $script $* ==="
    "$python" "$script" "$@"
done

