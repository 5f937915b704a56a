"""Parsl's checkpoints in a directory a research group shares.

A Parsl checkpoint (``runinfo/NNN/checkpoint/tasks.pkl``) is a pickle, and loading a pickle
runs code. ``BasicMemoizer`` loads every checkpoint under ``runinfo`` at ``parsl.load``.
Where another user can write one (group-writable under a group ``umask 002``, or owned by
someone else), that user's code ran in the next run of the workflow. The ledger's memoizer
now loads only checkpoints that no one else can have written (the file is this user's and
only theirs to write; its directory and the run's are this user's), says which it left out
and why, and makes what Parsl writes in its run not writable by others, so that a group
umask does not cost the cache (``runinfo`` itself, which a group may share, is left as it is).
"""

from __future__ import annotations

import os
import pickle
import stat

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402

from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def triple(x: int) -> int:
    return 3 * x


class _Planted:
    """What another user appends to a checkpoint: unpickling it writes ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _run(workdir, x: int = 2):
    ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy="strict")
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
        future = python_app(triple, cache=True)(x)
        return future.result(), future.task_record["from_memo"]


def _writable_by_others(path) -> bool:
    return bool(os.stat(path).st_mode & (stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.parametrize("whose", ["group-writable", "another user's"])
def test_a_checkpoint_another_user_can_write_is_not_loaded(workdir, caplog, whose):
    if whose == "another user's" and os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    assert _run(workdir) == (6, False)
    checkpoint = workdir / "runinfo" / "000" / "checkpoint" / "tasks.pkl"
    marker = workdir / "planted-code-ran"
    with open(checkpoint, "ab") as handle:  # what a group member with write access appends
        pickle.dump({"hash": "x", "exception": None, "result": _Planted(str(marker))}, handle)
    if whose == "group-writable":
        checkpoint.chmod(0o664)
    else:
        os.chown(checkpoint, 65534, 65534)
    again = _run(workdir)
    assert not marker.exists(), "code another user wrote into a checkpoint ran"
    assert again == (6, False), "the checkpoint was loaded"
    said = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage() and r.levelname == "ERROR"]
    assert said and str(checkpoint.parent) in said[0]
    assert ("writable by its group" if whose == "group-writable" else "owned by another user (uid 65534)") in said[0]


def test_under_a_group_umask_the_checkpoints_stay_private_and_are_reused(workdir):
    old = os.umask(0o002)
    try:
        assert _run(workdir) == (6, False)
    finally:
        os.umask(old)
    run = workdir / "runinfo" / "000"
    for path in (run / "checkpoint" / "tasks.pkl", run / "checkpoint", run):
        assert not _writable_by_others(path), f"{path} is writable by others"
    assert _run(workdir) == (6, True)


# Run as another user (nobody) with the descriptor of a shared runinfo/: plants its own
# checkpoint beside ours, then swaps the two directories' names as fast as it can (one atomic
# exchange each time, so both names always exist), until killed.
_SWAPPER = r"""
import ctypes, os, sys
runinfo, payload = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
os.mkdir("evil", 0o755, dir_fd=runinfo)
evil = os.open("evil", os.O_DIRECTORY, dir_fd=runinfo)
os.mkdir("checkpoint", 0o755, dir_fd=evil)
checkpoint = os.open("checkpoint", os.O_DIRECTORY, dir_fd=evil)
planted = os.open("tasks.pkl", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=checkpoint)
os.write(planted, payload)
os.close(planted)
renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
print("ready", flush=True)
while True:
    renameat2(runinfo, b"000", runinfo, b"evil", 2)  # RENAME_EXCHANGE
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                    reason="needs root and setpriv to run a second account (nobody)")
def test_a_checkpoint_swapped_between_the_check_and_the_load_is_not_loaded(workdir, caplog):
    """A group shares ``runinfo/`` (others may write it): another member swaps their own run
    directory for ours between the owner check and the load. The check and Parsl's load were
    two looks at one path, so the check saw ours and Parsl unpickled theirs: their code ran in
    our process. The memoizer now opens each checkpoint once, checks the opened file (and the
    directories it was opened through) and loads those very bytes."""
    import subprocess

    assert _run(workdir) == (6, False)
    runinfo = workdir / "runinfo"
    runinfo.chmod(0o777)
    marker = workdir / "planted-code-ran"
    payload = pickle.dumps({"hash": "x", "exception": None, "result": _Planted(str(marker))})
    folder = os.open(runinfo, os.O_DIRECTORY)
    swapper = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", _SWAPPER,
         str(folder), payload.hex()], pass_fds=(folder,), stdout=subprocess.PIPE, text=True)
    os.close(folder)
    try:
        assert swapper.stdout is not None and swapper.stdout.readline().strip() == "ready"
        ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy="strict")
        loads = 0
        while loads < 500 and not marker.exists():
            loads += 1
            # What parsl.load does with the memoizer: start it with a fresh run directory.
            memoizer = ledger.memoizer(checkpoint_mode="task_exit")
            memoizer.start(run_dir=str(workdir / f"run-{loads}"), config_run_dir=str(runinfo))
    finally:
        swapper.kill()
        swapper.wait()
    assert not marker.exists(), f"code another user swapped in ran in our process (load {loads})"
    refused = [r.getMessage() for r in caplog.records if "not loading the Parsl checkpoint" in r.getMessage()]
    assert refused and "owned by another user (uid 65534)" in refused[0], "the swap never happened"
