"""The trusted state while other processes swap it in (``TrustStore.adopt``: a first audit, or
one after a reset, builds the tree beside the state and renames it into place, under the
state's lock).

Two Parsl workflows started at once on a fresh account (tests/test_parsl_deployed_ledgers.py,
in a fresh-clone CI) had one refused with exit 2, "cannot take the lock .../lock: No such file
or directory": it opened the lock between the swap's two renames. Looked at in that window,
the state was also "not a directory of this user" or gone, and a command starting then put
back the state the swap had set aside as if a killed audit had left it, so the swap's second
rename failed. Three processes here open the state, take its lock and swap it in, 300 times
each (the code before: 20-56 errors a run). About 2 s.
"""

from __future__ import annotations

import multiprocessing
import sys

from lineage_ledger._log.trust import TrustStore


def _open_lock_and_swap(root: str, rounds: int, start) -> None:
    start.wait(60)
    failures = []
    for _ in range(rounds):
        try:
            store = TrustStore("ledger-x", "origin-x", root)  # what every command does first
            with store.locked():
                store.adopt(store.fresh_writer())
        except Exception as exc:  # noqa: BLE001 - each counted and shown
            failures.append(f"{type(exc).__name__}: {exc}")
    for failure in failures[:5]:
        print(failure, file=sys.stderr)
    sys.exit(min(len(failures), 100))


def test_processes_open_lock_and_swap_the_state_at_once(tmp_path):
    root = str(tmp_path / "state")
    TrustStore("ledger-x", "origin-x", root)
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=_open_lock_and_swap, args=(root, 300, start)) for _ in range(3)]
    for worker in workers:
        worker.start()
    start.set()
    try:
        for worker in workers:
            worker.join(240)
        assert [worker.exitcode for worker in workers] == [0, 0, 0]
        assert TrustStore("ledger-x", "origin-x", root).head is None  # an empty tree swapped in, intact
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
