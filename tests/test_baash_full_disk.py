"""A BAASH service whose shared storage fills up: a real tmpfs (``tests/support/faults.py``)
under the storage directory, a real ``baash serve`` under ``mpiexec``, real appends.

The disk is filled with a file of zeros and then given back a chosen number of bytes, so the
fault lands at a chosen step of a round: nothing fits (the block file cannot be written), or
one page fits (the block file and its ``chain.log`` line are written, the endorsed note
``DIR/checkpoint`` is not). Whatever the step, an append is either committed and readable or
answered "unavailable" with nothing committed, and once there is room again the service takes
appends without a restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineage_ledger import BackendError, BackendUnavailable, build_block, verify_chain
from lineage_ledger.backends import open_backend
from tests.backend_conformance import chain_of
from tests.support.baash import BaashService
from tests.support.factories import make_records
from tests.support.faults import fill_disk, small_tmpfs

pytestmark = pytest.mark.mpi

PAGE = 4096


@pytest.fixture
def service_on_small_disk(tmp_path) -> Iterator[tuple[BaashService, Path]]:
    """A 3-rank service whose storage directory lies on a 1 MiB tmpfs (root only)."""
    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        os.chmod(mount, 0o755)
        (mount / "storage").mkdir(mode=0o700)
        work = tmp_path / "work"
        work.mkdir()
        (work / "shared-storage").symlink_to(mount / "storage")  # BaashService's storage path
        service = BaashService(work, 3)
        try:
            yield service, mount
        finally:
            service.stop()


class Appender:
    def __init__(self, url: str) -> None:
        self.backend = open_backend(url)
        self.made = 0

    def block(self):
        records = [r.stored() for r in make_records(1, run_id="disk", start=self.made)]
        self.made += 1
        return build_block(records, self.backend.head()).stored()

    def append(self) -> str:
        """'ok' or the error's class name."""
        try:
            self.backend.append([self.block()])
        except BackendError as err:
            return type(err).__name__
        return "ok"


def _fill_leaving(mount: Path, free: int) -> Path:
    filler = mount / "filler"
    fill_disk(filler)
    if free:
        os.truncate(filler, os.path.getsize(filler) - free)
    return filler


def _stored_ids(mount: Path) -> list[str]:
    return [line.split()[1] for line in (mount / "storage" / "chain.log").read_text().splitlines()]


def test_a_round_whose_endorsed_note_cannot_be_saved_is_committed_and_the_service_goes_on(service_on_small_disk):
    """Bug: one free page holds the round's block file (and its chain.log line fits the log's
    page), but not the new ``DIR/checkpoint``: saving it raised ENOSPC in the daemon after the
    job had committed the block. The append was answered 'unavailable' (the recorder keeps it
    to ship again), the daemon's read index never took the committed block, and from then on
    every append, once the disk had room again too, was refused as BlockRejected ('stored
    height 2, header height 2') until the service was restarted."""
    service, mount = service_on_small_disk
    writer = Appender(service.url)
    assert [writer.append(), writer.append()] == ["ok", "ok"]
    filler = _fill_leaving(mount, PAGE)
    outcome = writer.append()
    filler.unlink()
    # What storage holds is what the service serves, whatever the append was answered.
    stored = _stored_ids(mount)
    head = writer.backend.head()
    assert head is not None and (head.height + 1, head.id) == (len(stored), stored[-1]), (outcome, head, stored)
    assert outcome == "ok", "the block was committed: the answer must say so"
    assert [writer.append() for _ in range(3)] == ["ok"] * 3, service.output()[-2000:]
    assert len(_stored_ids(mount)) == 6
    # The note is kept again once there is room (a temporary file left by the failed save
    # made every later save of the daemon fail), and no temporary file is left behind.
    storage = mount / "storage"
    assert (storage / "checkpoint").read_text().splitlines()[1] == "6"
    assert not list(storage.glob("*.tmp"))


def test_a_full_storage_disk_is_answered_unavailable_without_stopping_the_job(service_on_small_disk):
    """Bug: with no room for a block file, the gateway's commit raised ENOSPC inside its
    request loop, which took any OSError for the daemon's connection: it printed 'lost the
    daemon (OSError(28, ...)); stopping the job', the job went down at every append, and the
    daemon recorded a rank failure naming whichever rank's heartbeat closed first (rank 2,
    its PID), excluding it at the restart though no rank had failed. The append must be
    answered 'unavailable' naming the disk (a recorder keeps it in its spool), nothing
    committed, the job and its ranks left as they are, and appends commit again once the
    disk has room."""
    service, mount = service_on_small_disk
    writer = Appender(service.url)
    assert writer.append() == "ok"
    before = writer.backend.status()
    filler = _fill_leaving(mount, 0)
    try:
        writer.backend.append([writer.block()])
        raise AssertionError("an append to a full disk was answered committed")
    except BackendUnavailable as err:
        assert "No space left on device" in str(err), err
    assert len(_stored_ids(mount)) == 1 and writer.backend.head().height == 0
    after = writer.backend.status()
    assert after["failures"] == [], after["failures"]
    assert (after["job_up"], after["job"]["generation"]) == (True, before["job"]["generation"])
    filler.unlink()
    assert [writer.append() for _ in range(2)] == ["ok", "ok"]
    assert len(_stored_ids(mount)) == 3
    assert not list((mount / "storage").rglob("*.tmp"))  # the failed write left nothing behind


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_service_restarted_on_a_full_or_read_only_disk_serves_what_it_holds(tmp_path, fault):
    """Bug: ``baash serve`` on storage whose disk had filled up (a scratch file system shared
    with jobs) ended with 'error: unexpected OSError: [Errno 28] No space left on device'
    (exit 2): at every start it rewrote ``access.json`` and ``keys/ranks.pub`` through new
    temporary files though neither had changed, so the ledger could not even be read or
    verified until someone freed space. On storage mounted read-only it ended the same way
    ('[Errno 30] Read-only file system': it set modes that were already right). It must
    start, serve the chain it holds, answer appends 'unavailable', and commit them once
    there is room (or the storage is writable again)."""
    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        os.chmod(mount, 0o755)
        (mount / "storage").mkdir(mode=0o700)
        work = tmp_path / "work"
        work.mkdir()
        (work / "shared-storage").symlink_to(mount / "storage")
        service = BaashService(work, 3)
        try:
            writer = Appender(service.url)
            assert [writer.append(), writer.append()] == ["ok", "ok"]
        finally:
            service.stop()
        if fault == "full":
            filler = _fill_leaving(mount, 0)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        service = BaashService(work, 3)
        try:
            reader = open_backend(service.url)
            assert verify_chain(reader.blocks()).blocks == 2
            writer = Appender(service.url)
            writer.made = 2
            with pytest.raises(BackendUnavailable, match="No space left on device|Read-only file system"):
                writer.backend.append([writer.block()])
            if fault == "full":
                filler.unlink()
            else:  # remounting needs no file open for writing: the service is stopped first
                service.stop()
                subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
                service = BaashService(work, 3)
                writer = Appender(service.url)
                writer.made = 2
            assert writer.append() == "ok"
            assert len(_stored_ids(mount)) == 3
        finally:
            service.stop()


def test_a_revoke_that_failed_on_a_full_disk_can_be_made_once_there_is_room(service_on_small_disk):
    """Bug: the allow-list's save left its temporary file ``access.json.<pid>.tmp`` behind
    when the disk was full, and opened it with O_EXCL, so once one register or revoke had
    failed, every later one failed too ('FileExistsError'), also with room on the disk,
    until the service restarted: an admin could not take a user's rights away. And the
    failed call had changed the roles in memory though the admin was told it failed."""
    service, mount = service_on_small_disk
    admin = open_backend(service.url)
    assert admin.register(4242, ["user"]) == ["user"]
    filler = _fill_leaving(mount, 0)
    with pytest.raises(BackendError):
        admin.revoke(4242)
    entries = json.loads((mount / "storage" / "access.json").read_text())["entries"]
    assert [4242, ["user"]] in entries  # told it failed: nothing was changed
    filler.unlink()
    admin.revoke(4242)
    assert admin.register(4243, ["provider"]) == ["provider"]
    entries = json.loads((mount / "storage" / "access.json").read_text())["entries"]
    assert [4243, ["provider"]] in entries and not [e for e in entries if e[0] == 4242], entries
    assert not list((mount / "storage").glob("*.tmp"))


def test_a_full_disk_while_the_job_is_down_is_answered_unavailable_naming_the_disk(tmp_path):
    """While the MPI job is down (a rank was killed; ``--restart-delay`` holds it down) the
    daemon validates and commits rounds to storage itself. With no room there, its commit
    raised ENOSPC out of the round: the service logged 'round failed' with a traceback and
    answered 'internal error: [Errno 28] ...'. It must answer as the gateway does, naming
    the disk, commit nothing, and commit once there is room."""
    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        os.chmod(mount, 0o755)
        (mount / "storage").mkdir(mode=0o700)
        work = tmp_path / "work"
        work.mkdir()
        (work / "shared-storage").symlink_to(mount / "storage")
        service = BaashService(work, 3, "--restart-delay", "600")
        try:
            writer = Appender(service.url)
            assert writer.append() == "ok"
            status = writer.backend.status()
            os.kill(status["job"]["pids"][2], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while writer.backend.status()["job_up"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not writer.backend.status()["job_up"]
            filler = _fill_leaving(mount, 0)
            with pytest.raises(BackendUnavailable, match="shared storage could not keep the round: No space left"):
                writer.backend.append([writer.block()])
            assert len(_stored_ids(mount)) == 1
            filler.unlink()
            assert writer.append() == "ok"
            assert len(_stored_ids(mount)) == 2
            assert "round failed" not in service.output()
        finally:
            service.stop()


def _line(height: int) -> int:
    return len(f"{height} ") + 64 + 1  # "<height> <block id>\n"


def test_a_chain_log_line_cut_short_by_a_full_disk_commits_nothing_and_the_store_goes_on(tmp_path):
    """Bug: ``SharedStore.commit`` wrote the round's ``chain.log`` lines with one ``os.write``
    and did not look at its count. With the block files written (one free page each) but the
    log needing a page more, the kernel wrote the part of the line that fit and returned
    that count: commit returned as if committed (the gateway then acknowledged the append),
    storage did not hold the block, and the next commit wrote the line of the height after
    it, so every later refresh, commit and start failed with CorruptStore. Real tmpfs; the
    store is the one the gateway and the daemon use (no MPI needed)."""
    from lineage_ledger.backends.baash.storage import SharedStore

    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        os.chmod(mount, 0o755)
        store = SharedStore(str(mount / "storage"))
        blocks = chain_of(make_records(80), 1)
        size, height = 0, 0
        while size + _line(height) <= PAGE:  # fill the log's first page, one block a commit
            store.commit(blocks[height:height + 1])
            size, height = size + _line(height), height + 1
        assert size < PAGE < size + _line(height)  # the next line crosses into a new page
        filler = _fill_leaving(mount, PAGE)      # room for the block file, not the log's page
        try:
            store.commit(blocks[height:height + 1])
            committed = True
        except OSError:
            committed = False
        store.refresh()
        assert store.height == height + committed, "commit said committed, storage does not hold the block"
        filler.unlink()
        store.commit(blocks[height:height + 3])   # retried with the next ones, as the job does
        assert store.height == height + 3
        reopened = SharedStore(str(mount / "storage"))
        assert [b.id for b in reopened.load()] == [b.id for b in blocks[:height + 3]]
        assert verify_chain(list(reopened.load())).blocks == height + 3
