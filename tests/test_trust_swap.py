"""Commands run while a full audit swaps its new state in (``TrustStore.adopt``).

A full audit builds the remembered tree in a directory beside the state and swaps it in. The
swap used to be two renames with the lock inside the directory: a process that opened the state
between them found no directory, took the swap's half-done state for one a killed audit left
(and waited on its lock some 4 s, then failed with exit 2: two workflows' first audits at once,
tests/test_parsl_deployed_ledgers.py), or made a lock of its own there, so that two writers each
held one. The window is microseconds; here strace holds the audit in it, so the test does not
depend on luck: the swap's rename is delayed (``delay_exit``: the rename done, the audit stopped
after it) while a targeted verify and a second full audit run.

Two ways of swapping: one atomic exchange of the directories (Linux's ``renameat2``, on ext4,
tmpfs, XFS, Btrfs), and the two renames where the file system lacks it (NFS; strace makes
``renameat2`` fail with EINVAL, as such a file system does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.faults import needs_strace

HELD = 10  # seconds the audit is held in its swap: longer than a command used to wait for it


pytestmark = needs_strace


def _state_of(root: Path) -> Path:
    (directory,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return directory


def _in_the_swap(state: Path, old_head: bytes) -> bool:
    """The audit has moved the remembered state out of its place and is held there: the state
    set aside by two renames (``<dir>.old``), or, after the exchange, the old head where the new
    tree was built (``.audit-<dir>-*``)."""
    if Path(f"{state}.old").exists():
        return True
    for built in state.parent.glob(f".audit-{state.name}-*"):
        try:
            if (built / "head.json").read_bytes() == old_head:
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_commands_run_while_an_audit_swaps_its_state_in_verify(workdir, private_state, swap):
    def cli(*args, **kw):
        return run_cli(*args, cwd=workdir, **kw)

    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    cli("verify", check_rc=0)
    root = private_state / "lineage-ledger"
    state = _state_of(root)
    cli("run", "-i", "out.txt", "-o", "a.txt", "--", "cp", "out.txt", "a.txt", check_rc=0)
    old_head = (state / "head.json").read_bytes()  # as the run's check left it

    inject = ["-e", "trace=rename,renameat,renameat2"]
    if swap == "exchange":
        inject += ["-e", f"inject=rename,renameat,renameat2:delay_exit={HELD * 1_000_000}:when=1"]
    else:
        inject += ["-e", "inject=renameat2:error=EINVAL",
                   "-e", f"inject=rename,renameat:delay_exit={HELD * 1_000_000}:when=1"]
    # Only calls naming the state directory are traced: the audit's head.json and names files
    # are written by renames too.
    strace = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(state), *inject]
    script = Path(sys.executable).parent / "lineage-ledger"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    audit = subprocess.Popen([*strace, str(script), "verify"], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _in_the_swap(state, old_head):
            assert audit.poll() is None, audit.communicate()
            assert time.monotonic() < deadline, "the audit never reached its swap"
            time.sleep(0.02)
        # Both started while the audit is held in its swap (HELD s), one a second full audit.
        second = subprocess.Popen([str(script), "verify"], cwd=workdir, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        targeted = subprocess.Popen([str(script), "verify", "a.txt"], cwd=workdir, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert audit.poll() is None, "the audit was not held in its swap"
        for command in (targeted, second):
            out, err = command.communicate(timeout=180)
            assert command.returncode == 0, (command.args, command.returncode, out, err)
            assert "verified" in out, out
    finally:
        out, err = audit.communicate(timeout=180)
    assert audit.returncode == 0, (audit.returncode, out, err)

    # One state, complete, and nothing set aside or half-built left beside it.
    assert _state_of(root) == state and (state / "head.json").is_file()
    left = sorted(p.name for p in root.iterdir() if p.name.startswith(".audit-") or p.name.endswith(".old"))
    assert left == [], left
    assert Path(f"{state}.lock").is_file()
    cli("verify", "a.txt", check_rc=0)
