"""Adversarial checks of the repeated full audit that carries the names its remembered head
keeps (:meth:`~lineage_ledger._log.tree_head.TreeWriter.carry_names`, ``audit_bulk.name_from``).

Whatever path an audit takes (worker processes, their bulk check in this process, workers
row by row, the sequential audit) and whatever came before it (appends in blocks of any
size, refreshes that compacted the names, a refresh or an audit killed with SIGKILL, heads
of an older names format, ``LINEAGE_AUDIT_NAMES=0`` runs, another process appending), every
verified record must be counted exactly once in the names: the counts kept, summed per key
and role over every bucket file, must be what the records name (an oracle computed from the
records appended) and what a fresh state directory's first audit keeps; readers' answers
must agree, and a deleted index row of an old or a new record must be noticed. A rewritten
history must fail and leave the remembered state byte for byte as it was.

About 14-20 s in all on the 2-core machine (most of it worker and CLI process starts). Three
tests are bugs this review found, each failing before its fix: the audit read the ledger's
head before the state's lock (a head another process verified past it meanwhile was taken
for a shrunk ledger); a killed audit's directory beside the state was never removed; killed
between adopt()'s two renames, the remembered head was lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import zlib
from collections import Counter

import pytest

from lineage_ledger import HistoryRewritten, IndexTampered, open_ledger
from lineage_ledger._log.names import DIRECTORY, INPUT, OUTPUT, RUN
from lineage_ledger._log.names import FORMAT as NAMES_FORMAT
from tests.conftest import run_cli
from tests.support.audit import state_files, watch_workers
from tests.support.factories import artifact, make_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "4", "LINEAGE_AUDIT_WORKERS": "2"}
MODES = {
    "workers": WORKERS,
    "workers-rows": {**WORKERS, "LINEAGE_AUDIT_BULK": "0"},  # each worker checks row by row (_audit_rows)
    "in-process": {"LINEAGE_AUDIT_WORKERS": "1"},  # the workers' bulk check, in this process
    "sequential": {"LINEAGE_AUDIT_WORKERS": "1", "LINEAGE_AUDIT_BULK": "0"},  # nothing carried
}
_ENTRY = struct.Struct(">QQ")
_BUCKET = re.compile(r"names-[0-9a-f]{3}\.bin")


def _record(i: int, *, tag: str = ""):
    """Task ``i``: reads /data/ref (every task: a hot name in a range of 32 or more) and one
    of three shared inputs, writes an output of its own; runs of seven records."""
    return make_record(i, run_id=f"run-{i // 7}{tag}",
                       inputs=[artifact("/data/ref", "r"), artifact(f"/data/in-{i % 3}", f"in{i % 3}")],
                       outputs=[artifact(f"/data/out-{i}", f"o{i}{tag}")]).stored()


def _expected(count: int) -> Counter:
    """The oracle: how many of records 0 .. count-1 name each (key, role); a directory's: how
    many (record, path, role) below it."""
    found: Counter = Counter()
    for i in range(count):
        found[zlib.crc32(b"/data/ref"), INPUT] += 1
        found[zlib.crc32(f"/data/in-{i % 3}".encode()), INPUT] += 1
        found[zlib.crc32(f"/data/out-{i}".encode()), OUTPUT] += 1
        found[zlib.crc32(f"run-{i // 7}".encode()), RUN] += 1
        for directory in (b"/data", b""):  # the directories its three paths lie below (the root's name: "")
            found[zlib.crc32(directory), DIRECTORY] += 3
    return found


def _tallies(directory: str) -> tuple[Counter, int, int]:
    """(counts summed per (key, role) over every entry of every bucket file, entries in all,
    the highest leaf named): readers look past the head too, so nothing is left out."""
    found: Counter = Counter()
    entries, top = 0, -1
    for name in os.listdir(directory):
        if not _BUCKET.fullmatch(name):
            continue
        with open(os.path.join(directory, name), "rb") as handle:
            data = handle.read()
        assert len(data) % _ENTRY.size == 0, name
        for word, low in _ENTRY.iter_unpack(data):
            found[word & 0xFFFFFFFF, low & 3] += word >> 32
            entries += 1
            top = max(top, low >> 2)
    return found, entries, top


def _env(monkeypatch, settings: dict[str, str]) -> None:
    for name in ("LINEAGE_AUDIT_PARALLEL_MIN", "LINEAGE_AUDIT_TASK_RECORDS", "LINEAGE_AUDIT_WORKERS",
                 "LINEAGE_AUDIT_BULK", "LINEAGE_AUDIT_NAMES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


class Setup:
    def __init__(self, tmp_path) -> None:
        self.db = tmp_path / "ledger.db"
        self.url = f"sqlite:///{self.db}"
        self.state = str(tmp_path / "state")
        self.spool = str(tmp_path / "spool")
        self.size = 0
        self.directory = ""

    def append(self, *blocks: int) -> None:
        """Append blocks of these sizes (a state directory of the writer's own: no refresh here)."""
        with open_ledger(self.url, spool=self.spool, state_dir=self.state + "-writer") as ledger:
            for count in blocks:
                ledger.append_records([_record(i) for i in range(self.size, self.size + count)],
                                      block_size=count)
                self.size += count

    def audit(self, state: str | None = None, *, writable: bool = False, **options):
        """A full audit through a read-only ledger (or one opened for writing: its view)."""
        with open_ledger(self.url, state_dir=state or self.state, read_only=not writable,
                         spool=self.spool) as ledger:
            head = ledger.audit(**options).head
            if state is None:
                self.directory = ledger.verifier.store.directory
            return head, ledger.verifier.store.directory

    def refresh(self):
        with open_ledger(self.url, state_dir=self.state, read_only=True) as ledger:
            self.directory = ledger.verifier.store.directory
            return ledger.tree_head()

    def check_names(self, head, directory: str | None = None) -> None:
        """Every record named once: the oracle's counts, nothing past the head."""
        found, _entries, top = _tallies(directory or self.directory)
        assert head.size == self.size and head.names == NAMES_FORMAT
        assert found == _expected(self.size)
        assert top < head.size

    def answers(self, state: str) -> tuple:
        with open_ledger(self.url, state_dir=state, read_only=True) as ledger:
            return (len(ledger.consumers("/data/ref")), len(ledger.consumers("/data/in-1")),
                    [len(ledger.producers(f"/data/out-{i}")) for i in (0, self.size // 2, self.size - 1)],
                    ledger.tree_head().size)

    def row(self, seq: int, path: str = "/data/ref", role: int = 0) -> tuple:
        with sqlite3.connect(self.db) as conn:
            (row,) = conn.execute("SELECT path, role, seq, digest, ended FROM ll_artifacts "
                                  "WHERE seq = ? AND role = ? AND path = ?", (seq, role, path)).fetchall()
            return row

    def deleted_row_is_noticed(self, seq: int, path: str = "/data/ref", role: int = 0) -> None:
        """Delete one index row, check a reader notices, put it back."""
        row = self.row(seq, path, role)
        with sqlite3.connect(self.db) as conn:
            conn.execute("DELETE FROM ll_artifacts WHERE seq = ? AND role = ? AND path = ?", (seq, role, path))
        try:
            with open_ledger(self.url, state_dir=self.state, read_only=True) as ledger, \
                    pytest.raises(IndexTampered, match="left out"):
                (ledger.consumers if role == 0 else ledger.producers)(path)
        finally:
            with sqlite3.connect(self.db) as conn:
                conn.execute("INSERT INTO ll_artifacts VALUES (?, ?, ?, ?, ?)", row)


def _leftovers(state: str) -> list[str]:
    return [name for name in os.listdir(state) if name.startswith(".audit-")]


@pytest.mark.parametrize("mode", ["workers", "in-process", "sequential"])  # row by row: the tests below
def test_repeated_audits_after_appends_of_any_block_size_name_each_record_once(tmp_path, monkeypatch, mode):
    """Three audits with appends between them in blocks of 3, then 1, 4 and 7 (ranges of four
    records straddle the old head), a refresh, then one block of 40 (one range, whose
    /data/ref is a hot name): the oracle's counts after each; then a fresh state's answers are
    the same, and a deleted row of an old record and of a new one is noticed."""
    _env(monkeypatch, MODES[mode])
    calls = watch_workers(monkeypatch)
    s = Setup(tmp_path)
    s.append(3, 3, 3)
    s.check_names(s.audit()[0])
    s.append(1, 4, 7)
    s.check_names(s.audit()[0])
    s.append(2)
    s.refresh()  # the remembered head is a refresh's
    s.append(40)
    head, _ = s.audit()
    s.check_names(head)
    assert len(calls) == (3 if mode == "workers" else 0)  # the way asked for was the way taken
    fresh_head, fresh = s.audit(str(tmp_path / "fresh"))
    assert fresh_head.root == head.root and _tallies(fresh)[0] == _tallies(s.directory)[0]
    assert s.answers(s.state) == s.answers(str(tmp_path / "fresh")) == (s.size, s.size // 3, [1, 1, 1], s.size)
    s.deleted_row_is_noticed(1)  # below every earlier head: carried three times
    s.deleted_row_is_noticed(10)  # named by the second audit, carried by the third
    s.deleted_row_is_noticed(s.size - 1)  # named by the last audit
    s.deleted_row_is_noticed(4, "/data/out-4", 1)
    assert _leftovers(os.path.dirname(s.directory)) == []
    for name in os.listdir(s.directory):  # the names carried are copied as private files
        assert os.stat(os.path.join(s.directory, name)).st_mode & 0o077 == 0, name


def test_audits_by_every_path_in_turn_carry_each_others_names(tmp_path, monkeypatch):
    """The names one path kept (batches of its shape: the sequential audit's, a range's, a
    refresh's) carried by another, ranges of other sizes each time."""
    s = Setup(tmp_path)
    for mode, blocks, per_task in [("sequential", (5, 2), "4"), ("workers", (3, 1, 1), "4"),
                                   ("in-process", (6,), "3"), ("workers-rows", (2, 9), "7"), ("workers", (4,), "2")]:
        _env(monkeypatch, MODES[mode])
        monkeypatch.setenv("LINEAGE_AUDIT_TASK_RECORDS", per_task)
        s.append(*blocks)
        s.check_names(s.audit()[0])
        s.append(1)
        s.refresh()
    s.deleted_row_is_noticed(3)
    s.deleted_row_is_noticed(s.size - 3, f"/data/out-{s.size - 3}", 1)


def test_hot_names_joined_over_ranges_and_flushed_midway_are_counted_once(tmp_path, monkeypatch):
    """Names kept apart by ranges (here any name two records of a range name) and joined by
    the parent, packed whenever two are held (HotNames.MAX), ranges straddling the old head:
    the carried counts plus the new ones are the oracle's."""
    from lineage_ledger._log import audit_bulk, names

    _env(monkeypatch, {**MODES["in-process"], "LINEAGE_AUDIT_TASK_RECORDS": "4"})
    monkeypatch.setattr(audit_bulk, "HOT_RECORDS", 2)
    monkeypatch.setattr(names.HotNames, "MAX", 2)
    s = Setup(tmp_path)
    s.append(3, 3, 3)
    s.check_names(s.audit()[0])
    s.append(1, 4, 7, 2)
    s.check_names(s.audit()[0])
    s.append(5)
    s.refresh()
    s.append(6, 6)
    s.check_names(s.audit()[0])
    s.deleted_row_is_noticed(1)
    s.deleted_row_is_noticed(s.size - 1)


def test_names_compacted_by_refreshes_are_carried_once(tmp_path, monkeypatch):
    """Twenty refreshes of one record each leave /data/ref's entries compacted (one entry
    standing for many records); the audit after them carries those counts, once, and a row
    deleted from a record whose entry was dropped by the compaction is noticed."""
    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(2)
    s.audit()
    for _ in range(20):
        s.append(1)
        s.refresh()
    ref = zlib.crc32(b"/data/ref")
    before, entries, _top = _tallies(s.directory)
    assert before == _expected(s.size)
    with open(os.path.join(s.directory, f"names-{ref >> 22:03x}.bin"), "rb") as handle:
        kept = [low >> 2 for word, low in _ENTRY.iter_unpack(handle.read()) if word & 0xFFFFFFFF == ref]
    assert len(kept) < 20  # the control: a compaction happened
    s.append(3, 2)
    head, _ = s.audit()
    s.check_names(head)
    s.append(1)
    s.check_names(s.audit()[0])
    dropped = min(set(range(2, 22)) - set(kept))
    s.deleted_row_is_noticed(dropped)
    s.deleted_row_is_noticed(s.size - 2)


KILLED = """
import os, signal, sys
from lineage_ledger import open_ledger
from lineage_ledger._log import audit_parallel, names_files, trust

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

where = sys.argv[3]
if where == "refresh":  # after the refresh's names are appended, before its head
    def commit(self, *args, **kwargs):
        self._names.queue(*self._batch.packed())
        self._names.flush()
        die()
    trust.TreeWriter.commit = commit
elif where == "refresh-after-head":  # the refresh's head written, its names-pending note not yet removed
    names_files.NamesWriter.committed = lambda self: die()
elif where == "workers":  # while the workers run, after the first range is joined
    real = audit_parallel.results
    def results(*args, **kwargs):
        for at, answer in enumerate(real(*args, **kwargs)):
            if at == 1:
                die()
            yield answer
    audit_parallel.results = results
elif where == "names-written":  # the new state's names and head written, not adopted
    def adopt(self, writer):
        die()
    trust.TrustStore.adopt = adopt
elif where == "adopt":  # between the renames that swap the new state in (a file system
    # without an atomic exchange of two directories, as NFS: else there is one step, no window)
    trust._exchange = lambda first, second: False
    real_adopt, real_rename, renamed = trust.TrustStore.adopt, os.rename, []
    def rename(source, target):
        renamed.append(source)
        if len(renamed) == 2:
            die()
        real_rename(source, target)
    def adopt(self, writer):
        os.rename = rename
        real_adopt(self, writer)
    trust.TrustStore.adopt = adopt
with open_ledger(sys.argv[1], read_only=True, state_dir=sys.argv[2]) as ledger:
    ledger.tree_head() if where.startswith("refresh") else ledger.audit()
"""


def _kill(s: Setup, where: str) -> None:
    env = {k: v for k, v in os.environ.items()}
    killed = subprocess.run([sys.executable, "-c", KILLED, s.url, s.state, where], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr


@pytest.mark.parametrize("where", ["workers", "names-written"])
def test_an_audit_killed_then_audited_again(tmp_path, monkeypatch, where):
    """An audit killed while its workers run, or after it wrote the new state's names and
    head but before adopting them: the remembered state is untouched, and the next audit
    (which carries the same names) counts every record once."""
    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(3, 3)
    s.audit()
    s.append(2, 5, 1)
    kept = state_files(s.directory)
    _kill(s, where)
    assert state_files(s.directory) == kept
    head, _ = s.audit(writable=True)
    s.check_names(head)
    s.check_names(s.audit()[0])  # and once more, nothing appended
    s.deleted_row_is_noticed(2)
    s.deleted_row_is_noticed(s.size - 1)


def test_what_a_killed_audit_left_is_removed_by_the_next(tmp_path, monkeypatch):
    """TrustStore.fresh_writer makes ``.audit-XXXX`` beside the state directory; a SIGKILL
    before adopt() leaves it, and nothing removes it: at a million records about 64 MB of
    tree and, since the names are carried, about 50 MB of names files, per killed audit."""
    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(3, 3)
    s.audit()
    s.append(2)
    _kill(s, "names-written")
    assert _leftovers(s.state)  # the control: the killed audit's directory, head and names written
    s.check_names(s.audit()[0])
    assert _leftovers(s.state) == []


@pytest.mark.parametrize(("mode", "where"), [("workers-rows", "refresh"), ("in-process", "refresh"),
                                             ("workers", "refresh-after-head")])
def test_a_killed_refresh_after_compaction_then_a_repeated_audit(tmp_path, monkeypatch, mode, where):
    """A refresh killed after appending its names (a note left in names-pending) over a
    state whose names a compaction rewrote: the audit's copy is cut back to the head. Killed
    after writing its head (the note names a smaller head): nothing is cut."""
    _env(monkeypatch, MODES[mode])
    s = Setup(tmp_path)
    s.append(1)
    s.audit()
    for _ in range(18):
        s.append(1)
        s.refresh()
    s.append(2, 2)
    _kill(s, where)
    assert os.path.exists(os.path.join(s.directory, "names-pending"))  # the control
    if where == "refresh":
        assert _tallies(s.directory)[0] != _expected(s.size - 4)  # the killed refresh's names are there
    else:
        assert s.refresh().size == s.size
    head, _ = s.audit()
    s.check_names(head)
    assert not os.path.exists(os.path.join(s.directory, "names-pending"))
    s.deleted_row_is_noticed(20)


def test_heads_of_older_formats_and_unnamed_runs_carry_nothing(tmp_path, monkeypatch):
    """A head without names (``LINEAGE_AUDIT_NAMES=0``: an audit, a refresh) or with names of
    format 1 (no counts): the next normal audit names every record afresh, none twice,
    though bucket files are there."""
    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(3, 3)
    s.audit()
    s.append(4)
    monkeypatch.setenv("LINEAGE_AUDIT_NAMES", "0")
    assert s.refresh().names == 0  # a refresh under the setting appends names, says none
    monkeypatch.delenv("LINEAGE_AUDIT_NAMES")
    s.check_names(s.audit()[0])
    s.append(3)
    monkeypatch.setenv("LINEAGE_AUDIT_NAMES", "0")
    assert s.audit()[0].names == 0
    monkeypatch.delenv("LINEAGE_AUDIT_NAMES")
    s.append(2)
    s.check_names(s.audit()[0])
    s.append(1)
    s.refresh()
    head_file = os.path.join(s.directory, "head.json")
    with open(head_file) as handle:
        raw = json.load(handle)
    raw["names"] = 1
    with open(head_file, "w") as handle:
        json.dump(raw, handle)
    for name in os.listdir(s.directory):  # format 1 kept no counts: the first word is the key
        if _BUCKET.fullmatch(name):
            with open(os.path.join(s.directory, name), "r+b") as handle:
                data = handle.read()
                handle.seek(0)
                handle.write(b"".join(_ENTRY.pack(word & 0xFFFFFFFF, low) for word, low in _ENTRY.iter_unpack(data)))
    s.append(2)
    s.check_names(s.audit()[0])
    s.deleted_row_is_noticed(0)
    s.deleted_row_is_noticed(s.size - 1)


def _rewrite(s: Setup, how: str) -> None:
    if how == "shrunk":
        with sqlite3.connect(s.db) as conn:
            # The last two blocks: the killed refresh's four records and one block below the head.
            (top,) = conn.execute("SELECT max(height) - 1 FROM ll_blocks").fetchone()
            (first,) = conn.execute("SELECT first_seq FROM ll_blocks WHERE height = ?", (top,)).fetchone()
            conn.execute("DELETE FROM ll_artifacts WHERE seq >= ?", (first,))
            conn.execute("DELETE FROM ll_records WHERE seq >= ?", (first,))
            conn.execute("DELETE FROM ll_blocks WHERE height >= ?", (top,))
        return
    with sqlite3.connect(s.db) as conn:
        (origin,) = conn.execute("SELECT value FROM ll_meta WHERE key = 'origin'").fetchone()
    os.unlink(s.db)
    with open_ledger(s.url, spool=s.spool + "2", state_dir=s.state + "-other") as ledger:
        if how.startswith("first-record"):
            ledger.append_records([_record(i, tag="x") for i in range(s.size + 3)], block_size=3)
        else:  # the same first block; record 4 replaced, and more records than before
            ledger.append_records([_record(i) for i in range(3)], block_size=3)
            ledger.append_records([_record(i, tag="x" if i == 4 else "") for i in range(3, s.size + 5)],
                                  block_size=4)
    if how != "first-record-new-origin":  # the rewriter kept the ledger's origin: only the tree tells
        with sqlite3.connect(s.db) as conn:
            conn.execute("UPDATE ll_meta SET value = ? WHERE key = 'origin'", (origin,))


REWRITTEN = {"replaced": r"record 4 \(block 1, position 1\)", "shrunk": "shrank", "first-record": "record 0 ",
             "first-record-new-origin": "origin"}


@pytest.mark.parametrize("how", ["replaced", "shrunk", "first-record", "first-record-new-origin"])
def test_a_rewritten_history_keeps_the_remembered_state_byte_for_byte(tmp_path, monkeypatch, how):
    """The remembered state came from a refresh after an audit, and a refresh killed after
    appending names left its note: a rewritten ledger fails with HistoryRewritten, and the
    state (names files and names-pending included) is exactly as it was, with nothing left
    beside it; the records below the head still answer as before once the ledger is put back."""
    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(3, 3)
    s.audit()
    s.append(2, 3)
    s.refresh()
    s.append(4)
    _kill(s, "refresh")
    kept = state_files(s.directory)
    assert "names-pending" in kept
    saved = tmp_path / "saved.db"
    with sqlite3.connect(s.db) as source, sqlite3.connect(saved) as copy:
        source.backup(copy)
    _rewrite(s, how)
    with pytest.raises(HistoryRewritten, match=REWRITTEN[how]):
        s.audit()
    assert state_files(s.directory) == kept
    assert _leftovers(os.path.dirname(s.directory)) == []
    with sqlite3.connect(saved) as copy, sqlite3.connect(s.db) as target:
        copy.backup(target)  # the ledger put back as it was
    s.check_names(s.audit()[0])


def test_an_index_cell_edited_then_restored(tmp_path, monkeypatch):
    """An edited digest of an old record: the repeated audit (workers disagree, then the
    sequential one) fails with IndexTampered and keeps the state as it was; put back, the
    next audit counts every record once."""
    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(3, 3, 3)
    s.audit()
    s.append(5)
    kept = state_files(s.directory)
    digest = s.row(2)[3]
    with sqlite3.connect(s.db) as conn:
        conn.execute("UPDATE ll_artifacts SET digest = ? WHERE seq = 2 AND role = 0 AND path = '/data/ref'", ("0" * 64,))
    with pytest.raises(IndexTampered):
        s.audit()
    assert state_files(s.directory) == kept
    with sqlite3.connect(s.db) as conn:
        conn.execute("UPDATE ll_artifacts SET digest = ? WHERE seq = 2 AND role = 0 AND path = '/data/ref'",
                     (digest,))
    s.check_names(s.audit()[0])
    s.deleted_row_is_noticed(2)


REFRESH = """
import sys
from lineage_ledger import open_ledger
with open_ledger(sys.argv[1], read_only=True, state_dir=sys.argv[2]) as ledger:
    print(ledger.tree_head().size)
"""
APPEND = """
import sys
from lineage_ledger import open_ledger
from tests.test_audit_names_carried_adversarial import _record
first, count = int(sys.argv[3]), int(sys.argv[4])
with open_ledger(sys.argv[1], spool=sys.argv[2], state_dir=sys.argv[2] + "-state") as ledger:
    ledger.append_records([_record(i) for i in range(first, first + count)], block_size=count)
"""


def test_another_process_appends_while_the_audit_runs(tmp_path, monkeypatch):
    """Records appended by another process after the audit read the head are not part of
    it (its head is the snapshot read first); a refresh started by a third process meanwhile
    waits for the audit, then names them on top of the carried names; the next audit too."""
    from lineage_ledger._log import audit_parallel

    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(3, 3)
    s.audit()
    s.append(4)
    real = audit_parallel.results
    refreshing: list[subprocess.Popen] = []

    def appending(*args, **kwargs):
        subprocess.run([sys.executable, "-c", APPEND, s.url, str(tmp_path / "other"), str(s.size), "5"],
                       cwd=ROOT, check=True, capture_output=True, timeout=60)
        refreshing.append(subprocess.Popen([sys.executable, "-c", REFRESH, s.url, s.state], cwd=ROOT,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return real(*args, **kwargs)

    monkeypatch.setattr(audit_parallel, "results", appending)
    head, _ = s.audit()
    monkeypatch.setattr(audit_parallel, "results", real)
    s.check_names(head)  # 10 records: the 5 appended meanwhile are past it
    out, err = refreshing[0].communicate(timeout=60)
    assert refreshing[0].returncode == 0 and out.split() == ["15"], err
    s.size += 5
    with open_ledger(s.url, state_dir=s.state, read_only=True) as ledger:
        s.check_names(ledger.verifier.store.head)  # the refresh's head, over the audit's
    s.append(2)
    s.check_names(s.audit()[0])
    s.deleted_row_is_noticed(s.size - 2)


def test_verify_lineage_without_targets_checks_files_and_carries_names(tmp_path):
    """``verify-lineage --ledger URL`` (the audit with files=True), repeated with appends
    between: the names are the oracle's; a row deleted from an old record makes the next
    one exit 1 (IndexTampered), and `depends --all` of the file notices it too."""
    s = Setup(tmp_path)
    env = {"LINEAGE_STATE_DIR": s.state, **WORKERS}
    s.append(3, 3)
    for i in range(s.size):
        (tmp_path / f"out-{i}").write_text("")
    run_cli("--ledger", s.url, cwd=tmp_path, env=env, program="verify-lineage", check_rc=0)
    s.append(1, 4)
    run_cli("--ledger", s.url, cwd=tmp_path, env=env, program="verify-lineage", check_rc=0)
    with open_ledger(s.url, state_dir=s.state, read_only=True) as ledger:
        head = ledger.verifier.store.head
        s.directory = ledger.verifier.store.directory
    s.check_names(head)
    fresh = {**env, "LINEAGE_STATE_DIR": str(tmp_path / "fresh")}
    for command in (["why", "/data/out-1"], ["depends", "/data/in-1", "--all"]):
        carried = run_cli(*command, "--ledger", s.url, cwd=tmp_path, env=env, check_rc=0)
        assert carried.stdout == run_cli(*command, "--ledger", s.url, cwd=tmp_path, env=fresh, check_rc=0).stdout
        assert carried.stdout.count("\n") > 1, carried.stdout
    with sqlite3.connect(s.db) as conn:
        conn.execute("DELETE FROM ll_artifacts WHERE seq = 1 AND role = 0 AND path = '/data/in-1'")
    depends = run_cli("depends", "/data/in-1", "--all", "--ledger", s.url, cwd=tmp_path, env=env)
    assert depends.returncode == 1 and "left out 1" in depends.stderr, depends
    audit = run_cli("--ledger", s.url, cwd=tmp_path, env=env, program="verify-lineage")
    assert audit.returncode == 1 and "IndexTampered" in audit.stdout + audit.stderr, audit


def test_postgresql_repeated_audit_names_each_record_once(postgres_url, tmp_path, monkeypatch):
    """The same on PostgreSQL, through its workers."""
    _env(monkeypatch, WORKERS)
    calls = watch_workers(monkeypatch)
    state = str(tmp_path / "state")
    with open_ledger(postgres_url, spool=str(tmp_path / "spool"), state_dir=state + "-writer") as ledger:
        ledger.append_records([_record(i) for i in range(9)], block_size=3)
    with open_ledger(postgres_url, state_dir=state, read_only=True) as ledger:
        ledger.audit()
    with open_ledger(postgres_url, spool=str(tmp_path / "spool"), state_dir=state + "-writer") as ledger:
        ledger.append_records([_record(i) for i in range(9, 14)], block_size=5)
    with open_ledger(postgres_url, state_dir=state, read_only=True) as ledger:
        head = ledger.audit().head
        found, _entries, top = _tallies(ledger.verifier.store.directory)
        assert head.size == 14 and head.names == NAMES_FORMAT and top < 14
        assert found == _expected(14)
        assert len(ledger.consumers("/data/ref")) == 14
    assert len(calls) == 2
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:  # a row of a carried record
        conn.execute("DELETE FROM ll_artifacts WHERE seq = 2 AND role = 0 AND path = '/data/ref'")
    with open_ledger(postgres_url, state_dir=state, read_only=True) as ledger, \
            pytest.raises(IndexTampered, match="left out 1"):
        ledger.consumers("/data/ref")


def test_a_refresh_past_the_head_the_audit_read_is_not_a_rewritten_history(tmp_path, monkeypatch):
    """The audit reads the ledger's head (10 records); before it takes the state's lock,
    another process appends 5 records and a third refreshes the remembered head to 15. The
    audit then finds a remembered head bigger than the snapshot it read and raised
    HistoryRewritten ("the ledger shrank: 15 records were verified ..., 10 are stored now"),
    though nothing was rewritten: it should audit up to a head it reads under the lock."""
    _env(monkeypatch, MODES["in-process"])
    s = Setup(tmp_path)
    s.append(3, 3)
    s.audit()
    s.append(4)
    with open_ledger(s.url, state_dir=s.state, read_only=True) as ledger:
        real, lock = ledger.backend.head, ledger.verifier.store.lock_path
        refreshing: list[subprocess.Popen] = []

        def head_then_race():  # the audit's first read of the ledger's head
            tip = real()
            if not refreshing:
                subprocess.run([sys.executable, "-c", APPEND, s.url, str(tmp_path / "other"), str(s.size), "5"],
                               cwd=ROOT, check=True, capture_output=True, timeout=60)
                refreshing.append(subprocess.Popen([sys.executable, "-c", REFRESH, s.url, s.state], cwd=ROOT,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                if not _locked(lock):  # read outside the lock: the refresh goes first
                    refreshing[0].wait(timeout=60)
            return tip

        monkeypatch.setattr(ledger.backend, "head", head_then_race)
        try:
            ledger.audit()
        finally:
            out, err = refreshing[0].communicate(timeout=60)
        assert refreshing[0].returncode == 0 and out.split() == ["15"], err
        s.size += 5
        s.check_names(ledger.verifier.store.reload(), ledger.verifier.store.directory)


def _locked(path: str) -> bool:
    """Whether some open file (this process's too) holds the state's lock."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_an_audit_killed_while_adopting_keeps_the_remembered_head(tmp_path, monkeypatch):
    """A repeated audit killed after adopt() moved the remembered state aside and before it
    moved the new one in: the next command finds no remembered head, and a history rewritten
    meanwhile passes as a first audit instead of failing with HistoryRewritten."""
    _env(monkeypatch, WORKERS)
    s = Setup(tmp_path)
    s.append(3, 3)
    s.audit()
    s.append(2)
    _kill(s, "adopt")
    _rewrite(s, "replaced")
    with pytest.raises(HistoryRewritten):
        s.audit()
