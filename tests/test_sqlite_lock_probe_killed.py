"""The SQLite back-ends' lock probe, killed inside its lock call: what it leaves behind.

Before a writer or an in-place reader opens an SQLite ledger, a lock is taken and dropped on
a file of its own beside the ledger (``_sqlite_files.refuse_without_locks``: a file system
without locks is refused at once). The file was made by ``mkstemp`` and removed after the
lock call, so a process killed in between (SIGKILL from an engine or the OOM killer, a node
lost) left its ``.ll-lock-probe-`` file (a random suffix) beside the ledger for good: one more on every such
death, and ``verify-lineage .`` at the root of a project that keeps its ledger there
failed on it as a file no record names. The window is long where the lock call is slow:
NFS, where a lock is a call to the server.

The slow lock is real here: a FUSE file system (tests/support/fuse.py) whose lock call
waits on a FIFO the test opens, so the process is caught inside it and killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lineage_ledger.backends._sqlite_files import _host
from tests.conftest import run_cli
from tests.support.fuse import fuse_mount

# The first lock call waits until the test opens the FIFO ``gate`` (after killing the
# process that made it); every lock call then fails with ENOLCK, as on NFS without its lock
# daemon, so each later probe still runs, and is refused, through the same mount.
WAITS_ONCE = """
def lock(self, path, fh, cmd, lock):
    control = sys.argv[3]
    if not os.path.exists(os.path.join(control, "released")):
        open(os.path.join(control, "entered"), "w").close()
        with open(os.path.join(control, "gate")) as gate:
            gate.read()
        open(os.path.join(control, "released"), "w").close()
    raise FuseOSError(errno.ENOLCK)
"""


def probes(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(".ll-lock-probe-"))


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def slow_lock(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    os.mkfifo(control / "gate")
    with fuse_mount(tmp_path, WAITS_ONCE, str(control)) as (mount, back, _server):
        yield mount, back, control


def release(control: Path) -> None:
    """Lets the file system's waiting lock call return (its FIFO read sees the end)."""
    os.close(os.open(control / "gate", os.O_WRONLY))


def test_a_probe_killed_in_its_lock_call_is_cleaned_up_by_the_next(slow_lock, tmp_path):
    mount, back, control = slow_lock
    work = tmp_path / "work"
    work.mkdir()
    ledger = mount / "ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    killed = subprocess.Popen([str(Path(sys.executable).parent / "lineage-ledger"), "run", "--ledger", str(ledger),
                               "--", "true"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(control / "entered", killed)
        left = probes(back)
        assert len(left) == 1, left  # the probe's own file, made before its lock call
        killed.send_signal(signal.SIGKILL)
    finally:
        release(control)
        killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert probes(back) == left, "the killed process left its probe behind"

    # The next process to open a ledger there probes again, and removes what the dead one left.
    again = run_cli("run", "--ledger", ledger, "--", "true", cwd=work)
    assert again.returncode == 0, again.stderr
    assert "gives no file locks (No locks available)" in again.stderr, again.stderr
    assert probes(back) == []


def test_a_process_that_ends_while_its_thread_probes_leaves_no_probe(slow_lock, tmp_path):
    """``run`` gives up its wait for the ledger (``--ship-wait``) and leaves at once (without
    waiting for its shipping thread, which may be blocked in the back-end) while that thread is
    inside a probe: the thread is stopped where it is, and its probe's file stayed beside the
    ledger (a CI run met it: "no empty ledger file left behind" found one). A process that
    leaves so removes its own probes first. (The thread here waits in the lock call until the
    test lets the file system answer: once ``run`` has said what became of its record.)"""
    mount, back, control = slow_lock
    work = tmp_path / "work"
    work.mkdir()
    ledger = mount / "ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    said = tmp_path / "stderr"
    with open(said, "wb") as stderr:
        ended = subprocess.Popen([str(Path(sys.executable).parent / "lineage-ledger"), "run", "--ledger",
                                  str(ledger), "--ship-wait", "1", "--", "true"], cwd=work, env=env,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(control / "entered", ended)
        assert len(probes(back)) == 1  # the probe's own file, made before its lock call
        deadline = time.monotonic() + 120
        while b"in the spool" not in said.read_bytes():  # then it leaves, the probe still waiting
            assert ended.poll() is None and time.monotonic() < deadline, said.read_bytes()
            time.sleep(0.05)
    finally:
        release(control)
        ended.wait(timeout=120)
    assert ended.returncode == 0, said.read_bytes()
    assert probes(back) == []  # before: the waiting probe's file


ENOLCK = """
def lock(self, path, fh, cmd, lock):
    raise FuseOSError(errno.ENOLCK)
"""


def test_a_probe_removes_only_this_users_probes_of_processes_that_are_gone(tmp_path):
    """What a later probe removes is what no live probe can still be using: a file of this
    user's, named as a probe of a process on this host that is gone, or a day old."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = _host()
    day_old = time.time() - 2 * 24 * 3600
    with fuse_mount(tmp_path, ENOLCK) as (mount, back, _server):
        planted = {  # name: (removed?, made a day ago?)
            f".ll-lock-probe-{dead.pid}@{host}-abcd_123": (True, False),
            f".ll-lock-probe-{os.getpid()}@{host}-abcd_123": (False, False),  # alive: the test itself
            f".ll-lock-probe-{dead.pid}@not-{host}-abcd_123": (False, False),  # another host's: may be alive
            f".ll-lock-probe-{dead.pid}@not-{host}-efgh_456": (True, True),
            ".ll-lock-probe-abcd_123": (False, False),  # an older release's: whose, unknown
            ".ll-lock-probe-efgh_456": (True, True),
            ".ll-lock-probe-notes.txt": (False, True),  # not a probe's name
        }
        for name, (_removed, old) in planted.items():
            (back / name).write_text("")
            if old:
                os.utime(back / name, (day_old, day_old))
        target = back / "kept.txt"
        target.write_text("kept\n")
        os.symlink(target, back / f".ll-lock-probe-{dead.pid}@{host}-link_123")  # not a regular file
        expected = sorted([name for name, (removed, _old) in planted.items() if not removed]
                          + ["kept.txt", f".ll-lock-probe-{dead.pid}@{host}-link_123"])
        if os.geteuid() == 0:  # another user's file, named as a probe of a dead process of this host
            other = back / f".ll-lock-probe-{dead.pid}@{host}-other_12"
            other.write_text("")
            os.chown(other, 65534, 65534)
            expected = sorted([*expected, other.name])

        result = run_cli("run", "--ledger", mount / "ledger.db", "--", "true", cwd=tmp_path)
        assert "gives no file locks (No locks available)" in result.stderr, result.stderr
        assert sorted(os.listdir(back)) == expected
        assert target.read_text() == "kept\n"
