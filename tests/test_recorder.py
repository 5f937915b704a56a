"""Write-behind recording: spool, batching, backpressure, replay, and kill -9."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lineage_ledger import SpoolCorrupt, SpoolFull, open_ledger
from tests.support.factories import artifact, make_record, make_records

WRITER = ["-m", "lineage_ledger.testing.writer"]  # the recording process the shipped suite uses


def test_records_reach_the_backend_in_blocks(tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path}/l.db", spool=str(tmp_path / "spool"))
    recorder = ledger.recorder(batch_size=100, max_age=10)
    for record in make_records(250):
        recorder.record(record)
    assert recorder.flush(timeout=30)
    summary = ledger.verify_chain()
    assert summary.records == 250
    assert summary.blocks >= 3  # batches of at most 100
    recorder.close()
    assert [n for n in os.listdir(ledger.spool_dir) if n.endswith(".log")] == []  # spool trimmed


def test_age_flushes_a_small_batch(tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path}/l.db", spool=str(tmp_path / "spool"))
    recorder = ledger.recorder(batch_size=1000, max_age=0.05)
    recorder.record(make_record(1))
    deadline = time.monotonic() + 10
    while ledger.verify_chain().records == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ledger.verify_chain().records == 1
    recorder.close()


def test_full_queue_pushes_back_and_loses_nothing(tmp_path):
    ledger = open_ledger("memory://pushback", spool=str(tmp_path / "spool"))
    ledger.backend.head = lambda: (_ for _ in ()).throw(__import__("lineage_ledger").BackendUnavailable("down"))
    recorder = ledger.recorder(batch_size=10, max_age=0.01, max_pending=50)
    accepted = 0
    with pytest.raises(SpoolFull):
        for record in make_records(200):
            recorder.record(record)
            accepted += 1
    assert accepted == 50
    assert not recorder.close(timeout=0.3)
    # Every accepted record is in the spool, ready for the next open to replay.
    spooled = b"".join(
        (Path(ledger.spool_dir) / n).read_bytes() for n in os.listdir(ledger.spool_dir) if n.endswith(".log")
    )
    assert spooled.count(b"\n") == 50


def test_replay_after_backend_outage_ships_everything(tmp_path):
    db = tmp_path / "l.db"
    url, spool = f"sqlite:///{db}", str(tmp_path / "spool")
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
        "from lineage_ledger import open_ledger, BackendUnavailable\n"
        "from tests.support.factories import make_records\n"
        f"ledger = open_ledger({url!r}, spool={spool!r})\n"
        "def down(*a, **k): raise BackendUnavailable('down for the test')\n"
        "ledger.backend.append = down\n"
        "r = ledger.recorder(batch_size=10, max_age=0.01)\n"
        "[r.record(x) for x in make_records(75)]\n"
        "r.close(timeout=0.5)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    ledger = open_ledger(url, spool=spool)  # replays at open
    assert ledger.verify_chain().records == 75
    ledger.close()


def test_torn_spool_line_is_quarantined_and_the_rest_shipped(tmp_path):
    url, spool = f"sqlite:///{tmp_path}/l.db", str(tmp_path / "spool")
    ledger = open_ledger(url, spool=spool)
    good = [r.stored() for r in make_records(3)]
    segment = Path(ledger.spool_dir) / "99999-deadbeef-00000001.log"
    lines = b"".join(r.id.encode() + b" " + r.body + b"\n" for r in good)
    segment.write_bytes(lines + good[0].id.encode() + b" " + good[0].body[:20])  # torn write
    ledger.close()
    with pytest.raises(SpoolCorrupt, match="quarantine"):
        open_ledger(url, spool=spool)
    ledger = open_ledger(url, spool=spool)  # the second open is clean
    assert ledger.verify_chain().records == 3
    quarantined = list((Path(ledger.spool_dir) / "quarantine").iterdir())
    assert len(quarantined) == 1 and good[0].body[:20] in quarantined[0].read_bytes()


def test_a_live_process_segment_is_not_replayed(tmp_path):
    url, spool = f"sqlite:///{tmp_path}/l.db", str(tmp_path / "spool")
    ledger = open_ledger(url, spool=spool)
    recorder = ledger.recorder(batch_size=1000, max_age=60)
    recorder.record(make_record(1))
    other = open_ledger(url, spool=spool)  # replay must leave the live segment alone
    assert other.verify_chain().records == 0
    assert recorder.flush(timeout=10)
    assert other.verify_chain().records == 1
    recorder.close()


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_kill_9_while_recording_10000_loses_no_returned_record(tmp_path, attempt):
    url, spool = f"sqlite:///{tmp_path}/l.db", str(tmp_path / "spool")
    progress = tmp_path / "progress"
    writer = subprocess.Popen([sys.executable, *WRITER, url, spool, "killed", "10000", str(progress)])
    target = random.Random(attempt).randint(500, 9000)
    deadline = time.monotonic() + 120
    returned = 0
    while time.monotonic() < deadline and writer.poll() is None:
        if progress.exists() and progress.stat().st_size == 8:
            returned = struct.unpack("<Q", progress.read_bytes())[0]
            if returned >= target:
                break
        time.sleep(0.001)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    returned = struct.unpack("<Q", progress.read_bytes())[0]  # calls that had returned before the kill
    assert returned >= min(target, 10000) or writer.returncode == 0
    ledger = open_ledger(url, spool=spool)
    assert ledger.verify_chain().records >= returned
    tasks = {entry.record.task_id for entry in ledger.run("killed")}
    missing = [i for i in range(returned) if f"task-{i}" not in tasks]
    assert missing == []
    ledger.close()


def test_forked_child_records_through_its_own_segment(tmp_path):
    """Engines fork task processes; a child's records must not ride on the parent's segment."""
    ledger = open_ledger(f"sqlite:///{tmp_path}/l.db", spool=str(tmp_path / "spool"))
    recorder = ledger.recorder(batch_size=1000, max_age=60)
    recorder.record(make_record(0, run_id="parent"))
    pid = os.fork()
    if pid == 0:  # the child records and leaves abruptly, as Airflow's task runner does
        try:
            for i in range(1, 6):
                recorder.record(make_record(i, run_id="child"))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    recorder.record(make_record(6, run_id="parent"))
    assert recorder.flush(timeout=30)
    recorder.close()
    reopened = open_ledger(f"sqlite:///{tmp_path}/l.db", spool=str(tmp_path / "spool"))  # replays the child
    assert len(reopened.run("parent")) == 2
    assert len(reopened.run("child")) == 5
    assert reopened.verify_chain().records == 7


def test_forked_child_that_records_nothing_leaves_no_segment_and_no_thread(tmp_path):
    """OpenLineage forks the task process to emit each event: such children never record,
    and must not each leave an empty spool segment (and start a thread) behind."""
    ledger = open_ledger(f"sqlite:///{tmp_path}/l.db", spool=str(tmp_path / "spool"))
    recorder = ledger.recorder(batch_size=1000, max_age=60)
    recorder.record(make_record(0, run_id="parent"))
    parent_segments = set(os.listdir(ledger.spool_dir))
    report = tmp_path / "child.txt"
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked process
            try:
                threads = sorted(t.name for t in threading.enumerate())
                report.write_text(f"{threads} {recorder.flush(timeout=5)} {recorder.close(timeout=5)}")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert report.read_text() == f"{['MainThread']} True True"
    assert set(os.listdir(ledger.spool_dir)) == parent_segments
    recorder.record(make_record(1, run_id="parent"))
    assert recorder.flush(timeout=30)
    recorder.close()
    assert len(ledger.run("parent")) == 2
    ledger.close()


def test_worker_survives_any_error_and_ships_after_recovery(tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path}/l.db", spool=str(tmp_path / "spool"))
    real_append = ledger.append_records
    failures = []

    def flaky(records, **kw):
        if len(failures) < 3:
            failures.append(1)
            raise OSError("disk hiccup")  # not a LedgerError
        return real_append(records, **kw)

    ledger.append_records = flaky
    recorder = ledger.recorder(batch_size=10, max_age=0.01)
    for record in make_records(35):
        recorder.record(record)
    assert recorder.flush(timeout=30)
    recorder.close()
    assert len(failures) == 3 and ledger.verify_chain().records == 35
    # the outage did not leave a pile of segment files behind
    assert [n for n in os.listdir(ledger.spool_dir) if n.endswith(".log")] == []


def test_spool_is_keyed_by_the_store_not_the_url_spelling(tmp_path):
    spool = str(tmp_path / "shared-spool")
    a = open_ledger(f"sqlite:///{tmp_path}/a.db", spool=spool)
    same_a = open_ledger(str(tmp_path / "x" / ".." / "a.db"), spool=spool)
    b = open_ledger(f"sqlite:///{tmp_path}/b.db", spool=spool)
    assert a.spool_dir == same_a.spool_dir != b.spool_dir
    from lineage_ledger.backends import Backend

    class Probe(Backend):  # identity of a URL with a password, without any server
        def append(self, blocks): ...
        def head(self): ...
        def blocks(self, start=0, stop=None): ...
        def record_count(self): ...
        def known(self, ids): ...
        def find(self, role, *, path=None, digest=None): ...
        def by_run(self, run_id): ...
        def by_id_prefix(self, prefix, limit=2): ...

    assert Probe("fabric://alice:s3cret@host:7051/chan").identity == "fabric://alice@host:7051/chan"


def test_nul_in_a_path_is_refused_when_the_record_is_built():
    with pytest.raises(ValueError, match="NUL"):
        make_record(1, outputs=[artifact("/a\x00b", "x")])


def test_outage_does_not_make_the_worker_spin(tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path}/l.db", spool=str(tmp_path / "spool"))
    attempts = []

    def down(records, **kw):
        attempts.append(time.monotonic())
        raise OSError("back-end down")

    ledger.append_records = down
    recorder = ledger.recorder(batch_size=10, max_age=0.01, max_pending=10_000)
    start = time.monotonic()
    while time.monotonic() - start < 1.0:  # keep recording well past one batch for a second
        recorder.record(make_record(len(attempts) * 1000 + int((time.monotonic() - start) * 1e6)))
        time.sleep(0.0005)
    # Back-off doubles from 0.2 s: a handful of attempts in a second, not thousands.
    assert 1 <= len(attempts) <= 10, len(attempts)
    recorder.close(timeout=0.2)
