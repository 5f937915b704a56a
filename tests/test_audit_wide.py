"""Records that each name many paths (a scatter step writing hundreds of chunk files): the
audit sizes its ranges and a worker its chunks by the paths they hold, not by records alone
(``audit_bulk.weight``: a record counts once per 2 KB of its block's first body). Before,
2,000 records of 1,000 outputs each were one range in chunks of 1,000 records, and the audit
peaked at 1.4 GB (``docs/benchmarks.md``, ninth stop). What it decides must not change.

Whoever verifies a block holds it whole, so blocks are also cut by bytes when they are
built (``chain.BLOCK_BYTES``): 600 such records appended at once were one block, and the
audit peaked at 540 MB (tenth stop)."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lineage_ledger import open_ledger
from lineage_ledger._errors import LedgerError
from lineage_ledger._log import audit_bulk, chain
from lineage_ledger._log import audit_parallel as parallel
from tests.support.factories import artifact, make_record

OUTPUTS = 200  # paths a wide record names: a body of about 25 KB, weight 12
PARALLEL = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "100", "LINEAGE_AUDIT_WORKERS": "2"}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """20 narrow records, then 40 wide ones, then 20 narrow: blocks of 4."""
    db = tmp_path_factory.mktemp("wide") / "ledger.db"
    records = []
    for i in range(80):
        many = 20 <= i < 60
        outputs = [artifact(f"/data/s{i}/chunk-{j:04d}.fa", f"{i}-{j}") for j in range(OUTPUTS if many else 1)]
        records.append(make_record(i, run_id=f"run-{i // 20}", inputs=[artifact("/data/ref", "ref")], outputs=outputs))
    with open_ledger(f"sqlite:///{db}", spool=str(db.parent / "spool")) as ledger:
        for start in range(0, 80, 4):
            ledger.append_records([r.stored() for r in records[start : start + 4]])
    return db


def test_wide_blocks_weigh_more_and_narrow_ones_do_not(wide):
    with open_ledger(f"sqlite:///{wide}", read_only=True) as ledger:
        weights = ledger.backend.block_weights()
    assert len(weights) == 20 and all(count == 4 for _h, count, _n in weights)
    shares = [audit_bulk.weight(count, first) for _h, count, first in weights]
    assert shares[:5] == [4] * 5 and shares[15:] == [4] * 5  # task-shaped: one a record
    assert all(share >= 4 * 10 for share in shares[5:15]), shares


def test_ranges_hold_fewer_wide_records(wide, monkeypatch):
    for name, value in PARALLEL.items():
        monkeypatch.setenv(name, value)
    with open_ledger(f"sqlite:///{wide}", read_only=True) as ledger:
        tasks = parallel.plan(ledger.backend, 80, 20)
    assert tasks is not None
    sizes = [b.first_index for b in tasks[1:]] + [80]
    records = [stop - t.first_index for t, stop in zip(tasks, sizes, strict=True)]
    assert sum(records) == 80 and [t.start for t in tasks] == sorted({t.start for t in tasks})
    # By records alone (100 a range) all 80 would be one range; by weight, the wide ones
    # (about 48 each block) come two blocks (8 records) a range.
    assert len(tasks) >= 5 and max(records) <= 28, records


def _audit(db, state, monkeypatch, env):
    for name in ("LINEAGE_AUDIT_PARALLEL_MIN", "LINEAGE_AUDIT_TASK_RECORDS", "LINEAGE_AUDIT_WORKERS",
                 "LINEAGE_AUDIT_BULK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    try:
        with open_ledger(f"sqlite:///{db}", read_only=True) as ledger:
            result = ledger.audit()
        return result.head.root, result.index_rows
    except LedgerError as err:
        return type(err).__name__


def test_the_workers_give_the_sequential_answer_and_catch_a_changed_row(wide, tmp_path, monkeypatch):
    sequential = {"LINEAGE_AUDIT_WORKERS": "1", "LINEAGE_AUDIT_BULK": "0"}
    here = _audit(wide, tmp_path / "a", monkeypatch, sequential)
    assert here == _audit(wide, tmp_path / "b", monkeypatch, PARALLEL)
    assert here == _audit(wide, tmp_path / "c", monkeypatch, {"LINEAGE_AUDIT_WORKERS": "1"})
    assert here[1] == 80
    copy = tmp_path / "changed.db"
    with sqlite3.connect(wide) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:  # one chunk file's digest, in a wide record
        changed = conn.execute("UPDATE ll_artifacts SET digest = ? WHERE path = ?",
                               ("0" * 64, "/data/s41/chunk-0150.fa")).rowcount
    assert changed == 1
    assert _audit(copy, tmp_path / "d", monkeypatch, PARALLEL) == "IndexTampered"
    assert _audit(copy, tmp_path / "e", monkeypatch, sequential) == "IndexTampered"


@given(st.lists(st.integers(0, 3 * chain.BLOCK_BYTES), max_size=60), st.integers(1, 12))
def test_blocks_are_cut_by_count_and_bytes(sizes, block_size):
    spans = chain.block_spans(sizes, block_size)
    assert [i for span in spans for i in range(span.start, span.stop)] == list(range(len(sizes)))
    for span in spans:
        count, held = span.stop - span.start, sum(sizes[span])
        assert 1 <= count <= block_size
        assert held <= chain.BLOCK_BYTES or count == 1  # a longer record is a block of its own
    for span, after in zip(spans, spans[1:], strict=False):  # cut only where the next would not fit
        assert span.stop - span.start == block_size or sum(sizes[span]) + sizes[after.start] > chain.BLOCK_BYTES


def test_a_run_of_wide_records_appended_at_once_is_several_blocks(tmp_path, monkeypatch):
    """24 records of about 200 KB (1,600 paths each), then one of 3 MB, in one append."""
    records = [make_record(i, inputs=[artifact("/data/ref", "ref")],
                           outputs=[artifact(f"/data/s{i}/chunk-{j:05d}.fa", f"{i}-{j}")
                                    for j in range(1_600 if i < 24 else 24_000)]) for i in range(25)]
    stored = [r.stored() for r in records]
    assert 150_000 < len(stored[0].body) < 300_000 and len(stored[-1].body) > chain.BLOCK_BYTES
    db = tmp_path / "ledger.db"
    with open_ledger(f"sqlite:///{db}", spool=str(tmp_path / "spool")) as ledger:
        assert ledger.append_records(stored) == 25  # block_size 1,000: by count, one block
    with sqlite3.connect(db) as conn:
        counts = [c for (c,) in conn.execute("SELECT count FROM ll_blocks ORDER BY height")]
        held = [n for (n,) in conn.execute("SELECT sum(length(body)) FROM ll_records GROUP BY height ORDER BY height")]
    assert sum(counts) == 25 and counts[-1] == 1 and len(counts) >= 4, counts
    assert all(n <= chain.BLOCK_BYTES for n in held[:-1]), held
    expected = _audit(db, tmp_path / "a", monkeypatch, {"LINEAGE_AUDIT_WORKERS": "1", "LINEAGE_AUDIT_BULK": "0"})
    assert expected[1] == 25
    assert _audit(db, tmp_path / "b", monkeypatch, PARALLEL) == expected
