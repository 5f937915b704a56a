"""Many short DataFlowKernels share one recording process (issue 16: Parsl's own test suite
loads a DFK per module; a recording process started for each made it 1.45x slower).

Real DFKs on a ThreadPoolExecutor, each with a ``ParslLedger`` of its own, one after another.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger, _shared  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.executors import ThreadPoolExecutor  # noqa: E402

from lineage_ledger import open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402


def triple(x: int) -> int:
    return 3 * x


def one_dfk(workdir, url: str, record_in: str = "process") -> tuple[str, int | None, ParslLedger]:
    ledger = ParslLedger(url, record_in=record_in)
    config = Config(executors=[ledger.wrap(ThreadPoolExecutor(label="threads", max_threads=2))],
                    memoizer=ledger.memoizer(), usage_tracking=0, run_dir=str(workdir / "runinfo"))
    with support.loaded(config) as dfk:
        assert [f.result() for f in [python_app(triple)(i) for i in range(3)]] == [0, 3, 6]
        pid = ledger.capture.child_pid if record_in == "process" else None
        run_id = dfk.run_id
    return run_id, pid, ledger


def test_consecutive_dataflowkernels_share_one_recording_process_and_each_cleanup_flushes(workdir):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    before = support.descendants()
    seen = []
    for _ in range(3):
        run_id, pid, _ledger = one_dfk(workdir, url)
        seen.append(pid)
        # cleanup() flushed: this DFK's tries are in the ledger when it returns
        with open_ledger(url) as ledger:
            assert sorted(r.record.parameters["args"][0] for r in ledger.run(run_id)) == [0, 1, 2]
    assert seen[0] is not None and seen == [seen[0]] * 3, seen  # one process for the three
    # Another ledger (another file) gets a process of its own.
    _, other, _ = one_dfk(workdir, f"sqlite:///{workdir / 'other.db'}")
    assert other is not None and other != seen[0]
    # Unused for IDLE_SECONDS, both end: nothing outlives the DFKs for long.
    assert support.wait_no_descendants(before, timeout=_shared.IDLE_SECONDS + 30) == {}
    assert not {seen[0], other} & {c.child_pid for c in _shared.live().values()}


def test_a_parsl_ledger_no_executor_uses_starts_early_and_ends_when_idle(workdir):
    """The recording process starts with the ParslLedger (ready by the first try); one that
    no DataFlowKernel ever uses must not live on until the interpreter exits."""
    before = support.descendants()
    ledger = ParslLedger(f"sqlite:///{workdir / 'unused.db'}")
    deadline = time.monotonic() + 30
    while ledger.capture.child_pid is None:  # started on a thread of its own
        assert time.monotonic() < deadline, "the recording process did not start"
        time.sleep(0.05)
    assert support.wait_no_descendants(before, timeout=_shared.IDLE_SECONDS + 30) == {}
    assert ledger.capture not in _shared.live().values()


def test_a_ledger_in_another_working_directory_does_not_share(workdir, monkeypatch, tmp_path_factory):
    """The default URL and spool are relative: from elsewhere they name other files."""
    _, first, _ = one_dfk(workdir, None)  # .lineage/ledger.db here
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    run_id, second, _ = one_dfk(elsewhere, None)
    assert first is not None and second is not None and first != second
    with open_ledger(str(elsewhere / ".lineage" / "ledger.db")) as ledger:
        assert len(ledger.run(run_id)) == 3
    deadline = time.monotonic() + _shared.IDLE_SECONDS + 30
    while {first, second} & {c.child_pid for c in _shared.live().values()} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not {first, second} & {c.child_pid for c in _shared.live().values()}
