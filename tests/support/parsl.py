"""Helpers for the Parsl plugin's tests: real DataFlowKernels, cleaned up, no leaked processes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = ROOT / "examples" / "parsl"


def load_pipeline() -> Any:
    """The example module; HTEX workers import it too, so it must be on their PYTHONPATH."""
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    import pipeline

    return pipeline


def worker_environment(monkeypatch: Any) -> None:
    """HTEX finds interchange.py and process_worker_pool.py on PATH, and workers import apps."""
    bindir = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ.get("PATH", ""))
    extra = os.pathsep.join([str(EXAMPLE_DIR), str(ROOT)])
    monkeypatch.setenv("PYTHONPATH", extra + os.pathsep + os.environ.get("PYTHONPATH", ""))


def descendants(pid: int | None = None) -> set[int]:
    """Living descendants of ``pid`` (default: this process), from /proc."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z":  # a zombie has exited; it only waits to be reaped
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody has reaped yet has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_no_descendants(before: set[int], timeout: float = 20.0) -> dict[int, str]:
    """Descendants started since ``before`` still alive after ``timeout`` s: {pid: command line}."""
    deadline = time.monotonic() + timeout
    while True:
        # multiprocessing's resource tracker is one per interpreter (monitoring starts it)
        # and lives until this process exits: not something a DataFlowKernel leaked.
        left = {pid: _command(pid) for pid in descendants() - before}
        left = {pid: cmd for pid, cmd in left.items() if "multiprocessing.resource_tracker" not in cmd}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@contextlib.contextmanager
def loaded(config: Any) -> Iterator[Any]:
    """A loaded DataFlowKernel, always cleaned up (and cleared) afterwards."""
    import parsl

    dfk = parsl.load(config)
    try:
        yield dfk
    finally:
        dfk.cleanup()


# Apps for the failure and retry tests; module level so that HTEX workers can import them.
def flaky(marker: str, outputs: Any = ()) -> str:
    """Fails on its first try (leaving a marker), succeeds on the next."""
    if not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write("first try failed\n")
        raise RuntimeError("flaky: first try fails on purpose")
    with open(outputs[0], "w") as handle:
        handle.write("second try worked\n")
    return "ok"


def broken(inputs: Any = ()) -> None:
    raise ValueError(f"broken: refuses {os.path.basename(str(inputs[0]))}")
