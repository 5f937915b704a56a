"""The spool belongs to one user (issue 15, item 3): private modes whatever the umask, and
replay takes only regular files of this user, never follows a link (in the spool or in
``quarantine/``), and reports and leaves alone whatever it refuses.

CI runs these as root: "another user" is uid 65534 (nobody), files made by root and then
given to it with ``os.chown``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lineage_ledger import SpoolCorrupt, open_ledger
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._ledger.spool import Refused, SpoolWriter, spool_directory, take_orphans
from lineage_ledger._model import Record
from tests.conftest import run_cli

NOBODY = 65534


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _can_chown() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


needs_root = pytest.mark.skipif(not _can_chown(), reason="giving a file to another uid (65534) needs root")


def _record(name: str = "t", outputs: dict | None = None) -> Record:
    now = datetime.now(timezone.utc)
    return Record(engine="cli", run_id="r", task_id=uuid.uuid4().hex, task_name=name, status="succeeded",
                  started=now, ended=now, outputs=outputs or {})


def _line(record: Record) -> bytes:
    stored = record.stored()
    return stored.id.encode("ascii") + b" " + stored.body + b"\n"


def _ledger_and_dir(tmp_path):
    url, spool = f"sqlite:///{tmp_path}/l.db", str(tmp_path / "spool")
    ledger = open_ledger(url, spool=spool)
    return url, spool, ledger, Path(ledger.spool_dir)


def _replay(url, spool):
    """Open the ledger (which replays); the refusal, if any, as the SpoolCorrupt it raised."""
    try:
        open_ledger(url, spool=spool).close()
    except SpoolCorrupt as err:
        return err
    return None


def _count(url) -> int:
    with open_ledger(url, replay=False) as ledger:
        return len(ledger.recent(1000))


# -- modes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o002, 0o022, 0o000])
def test_directories_are_0700_and_files_0600_whatever_the_umask(tmp_path, mask):
    root = tmp_path / "spool"
    with _umask(mask):
        directory = spool_directory(str(root), "sqlite:///x.db")
        writer = SpoolWriter(directory)
        record = _record()
        stored = record.stored()
        writer.append(record, stored.id, stored.body)
        # a torn segment left by a dead process: replay makes quarantine/ and a file in it
        dead = Path(directory) / "1-deadbeef-00000001.log"
        fd = os.open(dead, os.O_WRONLY | os.O_CREAT, 0o600)  # as a segment is made (one others may write is refused)
        os.write(fd, b"torn")
        os.close(fd)
        segments, reported = take_orphans(directory)
    assert _mode(root) == 0o700
    assert _mode(directory) == 0o700
    assert _mode(Path(directory) / "URL") == 0o600
    assert _mode(writer.current.path) == 0o600
    assert _mode(Path(directory) / "quarantine") == 0o700
    assert len(reported) == 1 and _mode(reported[0]) == 0o600
    for segment in segments:
        segment.delete()
    os.close(writer.current.fd)


def test_an_existing_spool_directory_that_others_may_enter_is_made_private(tmp_path, caplog):
    root = tmp_path / "spool"
    directory = spool_directory(str(root), "sqlite:///x.db")
    os.chmod(directory, 0o777)
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        assert spool_directory(str(root), "sqlite:///x.db") == directory
    assert _mode(directory) == 0o700
    assert "made it 0700" in caplog.text


def test_a_link_in_place_of_the_spool_directory_is_refused(tmp_path):
    from lineage_ledger import SpoolError
    from lineage_ledger._ledger.spool import spool_path

    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, spool_path(str(root), "sqlite:///x.db"))
    with pytest.raises(SpoolError, match="not a directory"):
        spool_directory(str(root), "sqlite:///x.db")
    assert list(elsewhere.iterdir()) == []


@needs_root
def test_a_spool_directory_of_another_user_is_refused(tmp_path):
    from lineage_ledger import SpoolError
    from lineage_ledger._ledger.spool import spool_path

    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    planted = spool_path(str(root), "sqlite:///x.db")
    os.mkdir(planted, 0o777)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(SpoolError, match="uid 65534"):
        spool_directory(str(root), "sqlite:///x.db")


# -- what replay refuses -------------------------------------------------------------------
def test_a_segment_planted_as_a_symlink_is_not_read_copied_or_removed(tmp_path, caplog):
    url, spool, ledger, directory = _ledger_and_dir(tmp_path)
    ledger.close()
    secret = tmp_path / "secret"
    secret.write_bytes(b"root-only secret\n" + _line(_record("via-link")))
    os.chmod(secret, 0o600)
    link = directory / "1-deadbeef-00000001.log"
    os.symlink(secret, link)
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        error = _replay(url, spool)
    assert error is not None and str(link) in str(error) and "symbolic link" in str(error)
    assert str(link) in caplog.text and "symbolic link" in caplog.text
    assert os.path.islink(link) and secret.read_bytes().startswith(b"root-only secret")
    assert _count(url) == 0  # the record behind the link was not shipped
    quarantine = directory / "quarantine"
    copies = [p.read_bytes() for p in quarantine.iterdir()] if quarantine.exists() else []
    assert not any(b"secret" in c for c in copies)


def test_a_symlink_planted_in_quarantine_is_never_followed(tmp_path):
    url, spool, ledger, directory = _ledger_and_dir(tmp_path)
    ledger.close()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    quarantine = directory / "quarantine"
    quarantine.mkdir(mode=0o700)
    name = "1-deadbeef-00000001.log"
    os.symlink(victim, quarantine / (name + ".damaged"))
    os.symlink(tmp_path / "would-be-created", quarantine / (name + ".1.damaged"))
    good = _record("good")
    (directory / name).write_bytes(_line(good) + b"torn tail")
    error = _replay(url, spool)
    assert error is not None and "quarantine" in str(error)
    assert victim.read_bytes() == b"precious\n"
    assert not (tmp_path / "would-be-created").exists()
    assert os.path.islink(quarantine / (name + ".damaged"))
    kept = [p for p in quarantine.iterdir() if not p.is_symlink()]
    assert len(kept) == 1 and kept[0].read_bytes() == b"torn tail\n" and _mode(kept[0]) == 0o600
    assert _count(url) == 1  # the complete record was shipped
    assert not (directory / name).exists()


def test_quarantine_itself_a_symlink_is_not_written_through(tmp_path):
    url, spool, ledger, directory = _ledger_and_dir(tmp_path)
    ledger.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, directory / "quarantine")
    segment = directory / "1-deadbeef-00000001.log"
    segment.write_bytes(_line(_record("good")) + b"torn tail")
    error = _replay(url, spool)
    assert error is not None and str(segment) in str(error) and "symbolic link" in str(error)
    assert list(elsewhere.iterdir()) == []
    assert segment.exists()  # left alone: its good line waits until its damaged one can be kept
    assert _count(url) == 0


@needs_root
def test_a_segment_of_another_user_is_not_replayed_nor_removed(tmp_path, caplog):
    url, spool, ledger, directory = _ledger_and_dir(tmp_path)
    ledger.close()
    segment = directory / "1-deadbeef-00000001.log"
    segment.write_bytes(_line(_record("foreign")))
    os.chown(segment, NOBODY, NOBODY)
    with caplog.at_level(logging.WARNING, logger="lineage_ledger"):
        error = _replay(url, spool)
    assert error is not None and str(segment) in str(error) and "uid 65534" in str(error)
    assert str(segment) in caplog.text
    assert segment.exists() and _count(url) == 0


def test_a_hard_linked_segment_is_refused(tmp_path):
    url, spool, ledger, directory = _ledger_and_dir(tmp_path)
    ledger.close()
    other = tmp_path / "other-file"
    other.write_bytes(_line(_record("linked")))
    segment = directory / "1-deadbeef-00000001.log"
    os.link(other, segment)
    error = _replay(url, spool)
    assert error is not None and "hard links" in str(error)
    assert segment.exists() and other.exists() and _count(url) == 0


def test_a_fifo_planted_as_a_segment_is_refused_without_blocking(tmp_path):
    url, spool, ledger, directory = _ledger_and_dir(tmp_path)
    ledger.close()
    fifo = directory / "1-deadbeef-00000001.log"
    os.mkfifo(fifo, 0o600)
    segments, reported = take_orphans(str(directory))
    assert segments == [] and reported == [str(fifo)]
    assert isinstance(reported[0], Refused) and reported[0].reason == "not a regular file"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_segment_of_this_user_is_still_replayed(tmp_path):
    url, spool, ledger, directory = _ledger_and_dir(tmp_path)
    ledger.close()
    segment = directory / "1-deadbeef-00000001.log"
    segment.write_bytes(_line(_record("mine")))
    assert _replay(url, spool) is None
    assert _count(url) == 1 and not segment.exists()


# -- the scenario, through the commands ---------------------------------------------
@needs_root
def test_planted_segment_in_a_group_writable_spool_cannot_vouch_for_a_tampered_file(cli, workdir):
    with _umask(0o002):
        (workdir / "raw.txt").write_text("pear\napple\n")
        cli("run", "-i", "raw.txt", "-o", "out.txt", "-n", "sort", "--", "sh", "-c", "sort raw.txt > out.txt",
            check_rc=0)
        root = workdir / ".lineage" / "spool"
        [directory] = [p for p in root.iterdir() if p.is_dir()]
        # The spool as an older version left it under umask 002: group-writable.
        os.chmod(root, 0o2775)
        os.chmod(directory, 0o2775)
        (workdir / "out.txt").write_text("tampered\n")
        tampered = hash_file(workdir / "out.txt")
        forged = _record("forge", outputs={tampered.path: tampered.entry()})
        # Another user writes a segment into it (made by root, then given to nobody).
        planted = directory / "4242-cafecafe-00000001.log"
        planted.write_bytes(_line(forged))
        os.chown(planted, NOBODY, NOBODY)
        os.chmod(planted, 0o664)

        ship = cli("spool", "ship", "--timeout", "30")
        assert ship.returncode == 2, (ship.stdout, ship.stderr)
        assert str(planted) in ship.stderr and "uid 65534" in ship.stderr
        # the next run replays too: it warns, and still takes nothing from the planted file
        run = cli("run", "-n", "other", "--", "true", check_rc=0)
        assert str(planted) in run.stderr
        assert planted.exists() and os.stat(planted).st_uid == NOBODY  # left alone
        assert _mode(directory) == 0o700  # and the directory is private again

        verified = cli("out.txt", program="verify-lineage")
        assert verified.returncode == 1, verified.stdout
        assert "MODIFIED" in verified.stdout

        # Control: the same bytes in a segment of this user would have vouched for the file.
        os.chown(planted, os.geteuid(), os.getegid())
        os.chmod(planted, 0o600)  # and private, as this user's segments are made (0664: refused too)
        cli("spool", "ship", "--timeout", "30", check_rc=0)
        assert not planted.exists()
        assert run_cli("out.txt", cwd=workdir, program="verify-lineage").returncode == 0
