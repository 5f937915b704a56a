"""Within ``Ledger.looking_ahead`` the bodies of the records the rows name are read a few
dozen at a time (core/_ledger/proved.py ``_bodies``), not one statement each; each is still
proved when a look-up uses it. A few seconds."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from lineage_ledger import RecordTampered, open_ledger
from lineage_ledger._cli.render import report_json
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._verification import verify as verify_module
from lineage_ledger._verification.verify import verify_lineage
from tests.support.factories import make_record

FILES = 40  # each written by a task of its own, above verify's threshold for reading ahead (16)


def _build(base) -> str:
    out = base / "out"
    out.mkdir()
    (base / "input.txt").write_text("source")
    previous = hash_file(str(base / "input.txt"))
    records = []
    for i in range(FILES):
        (out / f"part-{i:03d}.txt").write_text(f"part {i}")
        part = hash_file(str(out / f"part-{i:03d}.txt"))
        records.append(make_record(i, run_id="r", inputs=[previous], outputs=[part]).stored())
        previous = part
    url = f"sqlite:///{base}/ledger.db"
    with open_ledger(url, spool=str(base / "spool"), state_dir=str(base / "s1")) as ledger:
        ledger.append_records(records, block_size=16)
        assert verify_lineage(ledger, [str(out)]).ok  # verified once while intact
    shutil.copytree(base / "s1", base / "s2")
    return url


def _verify(url, base, state, monkeypatch, *, ahead: bool) -> tuple[dict, int]:
    """The report's JSON, and how many statements read bodies."""
    monkeypatch.setattr(verify_module, "_LOOK_AHEAD", 16 if ahead else 10**9)
    with open_ledger(url, read_only=True, state_dir=str(base / state)) as ledger:
        reads = 0
        bodies = ledger.backend.bodies

        def counted(ids):
            nonlocal reads
            reads += 1
            return bodies(ids)

        monkeypatch.setattr(ledger.backend, "bodies", counted)
        # The files, not their directory: a directory's listing is counted against the names
        # kept first (complete_dirs), which proves every record behind it in a few
        # ``records_at`` statements, and the look-ups then find them proved.
        data = report_json(verify_lineage(ledger, sorted(str(p) for p in (base / "out").iterdir())))
    data.pop("verified_at", None)
    return data, reads


def test_bodies_are_read_a_few_dozen_at_a_time(tmp_path, monkeypatch):
    url = _build(tmp_path)
    ahead, reads = _verify(url, tmp_path, "s1", monkeypatch, ahead=True)
    one_by_one, reads_one_by_one = _verify(url, tmp_path, "s2", monkeypatch, ahead=False)
    assert ahead == one_by_one and ahead["ok"], ahead["failures"]
    assert reads_one_by_one >= FILES and reads <= 3, (reads, reads_one_by_one)  # was FILES ahead too


@pytest.mark.parametrize("seq", [0, 17, 39])
def test_a_body_read_ahead_is_proved_before_it_is_used(tmp_path, monkeypatch, seq):
    """A stored body changed after the head was verified (one that no longer hashes to its
    id): reading ahead reports it as reading one by one does."""
    url = _build(tmp_path)
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        changed = conn.execute("UPDATE ll_records SET body = CAST(replace(CAST(body AS TEXT), 'task-', 'tusk-')"
                               " AS BLOB) WHERE seq = ?", (seq,)).rowcount
    assert changed == 1
    ahead, _reads = _verify(url, tmp_path, "s1", monkeypatch, ahead=True)
    one_by_one, _reads = _verify(url, tmp_path, "s2", monkeypatch, ahead=False)
    assert ahead == one_by_one
    assert not ahead["ok"] and RecordTampered.__name__ in str(ahead["failures"]), ahead["failures"]
