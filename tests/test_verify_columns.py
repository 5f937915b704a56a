"""Verification from block columns: the same bytes as blocks(), and the same verdicts."""

from __future__ import annotations

import sqlite3

import pytest

from lineage_ledger import ChainBroken, MerkleMismatch, RecordTampered, open_ledger, verify_chain
from lineage_ledger._model import BlockColumns
from lineage_ledger.backends import open_backend
from tests.backend_conformance import chain_of
from tests.support.factories import make_records


def _as_columns(block) -> BlockColumns:
    return BlockColumns(block.height, block.id, block.header,
                        [r.id for r in block.records], [r.body for r in block.records])


@pytest.mark.parametrize("url", ["sqlite", "memory"])
def test_block_columns_are_the_stored_bytes(tmp_path, url):
    backend = open_backend(f"sqlite:///{tmp_path}/l.db" if url == "sqlite" else "memory://columns-test")
    backend.append(chain_of(make_records(45), 7))
    blocks = list(backend.blocks())
    columns = [BlockColumns(c.height, c.id, c.header, list(c.ids), list(c.bodies)) for c in backend.block_columns()]
    assert columns == [_as_columns(b) for b in blocks]
    assert [c.height for c in backend.block_columns(2, 5)] == [2, 3, 4]
    backend.close()


def _ledger_with_rows(tmp_path, n=40, block_size=6):
    path = tmp_path / "l.db"
    ledger = open_ledger(f"sqlite:///{path}", spool=str(tmp_path / "spool"))
    ledger.append_records([r.stored() for r in make_records(n)], block_size=block_size)
    return ledger, path


def _edit(path, statement, *args):
    db = sqlite3.connect(path)
    with db:
        db.execute(statement, args)
    db.close()


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("UPDATE ll_records SET body = CAST(body AS TEXT) || ' ' WHERE seq = 13", RecordTampered),
        ("UPDATE ll_records SET id = 7 WHERE seq = 14", RecordTampered),
        ("UPDATE ll_records SET id = substr(id, 2) || substr(id, 1, 1) WHERE seq = 20", RecordTampered),
        ("DELETE FROM ll_records WHERE seq = 25", MerkleMismatch),
        ("UPDATE ll_records SET seq = 1000 WHERE seq = 39", MerkleMismatch),
        ("UPDATE ll_blocks SET header = header || ' ' WHERE height = 3", ChainBroken),
    ],
)
def test_rows_edited_in_the_database_are_caught_from_columns(tmp_path, statement, error):
    ledger, path = _ledger_with_rows(tmp_path)
    ledger.verify_chain()
    _edit(path, statement)
    with pytest.raises(error):
        ledger.verify_chain()
    # blocks() and block_columns() give the same verdict
    with pytest.raises(error):
        verify_chain(ledger.backend.blocks())
    ledger.close()


def test_two_neighbouring_ids_trading_characters_are_caught(tmp_path):
    """ids compared as a list, never as one joined string."""
    ledger, path = _ledger_with_rows(tmp_path)
    db = sqlite3.connect(path)
    a, b = (r[0] for r in db.execute("SELECT id FROM ll_records WHERE seq IN (6, 7) ORDER BY seq"))
    db.close()
    _edit(path, "UPDATE ll_records SET id = ? WHERE seq = 6", a + b[0])
    _edit(path, "UPDATE ll_records SET id = ? WHERE seq = 7", b[1:])
    with pytest.raises(RecordTampered, match="record 0"):
        ledger.verify_chain()
    ledger.close()


def test_a_backend_with_only_the_required_methods_verifies_and_answers(tmp_path):
    """A third-party back-end implements the abstract methods of ``Backend`` and nothing
    else: the base class's defaults (block_columns, find_places, bodies, no index to audit,
    no index of end times) are enough for the audit and for proved answers."""
    from lineage_ledger.backends import Backend

    ledger, _ = _ledger_with_rows(tmp_path, n=10, block_size=3)
    inner = ledger.backend

    class Minimal(Backend):
        def append(self, blocks):
            return inner.append(blocks)

        def head(self):
            return inner.head()

        def blocks(self, start=0, stop=None):
            return inner.blocks(start, stop)

        def record_count(self):
            return inner.record_count()

        def known(self, record_ids):
            return inner.known(record_ids)

        def find(self, role, *, path=None, digest=None):
            return inner.find(role, path=path, digest=digest)

        def by_run(self, run_id):
            return inner.by_run(run_id)

        def by_id_prefix(self, prefix, limit=2):
            return inner.by_id_prefix(prefix, limit)

        @property
        def identity(self):
            return inner.identity + "#minimal"

    minimal = Minimal(inner.url)
    view = type(ledger)(minimal, state_dir=str(tmp_path / "state"))
    result = view.audit()
    assert result.summary.records == 10 and result.index_rows is None
    produced = view.producers("/data/out-run-1-3")
    assert [e.record.task_id for e in produced] == ["task-3"]
    assert [e.id for e in produced] == [e.id for e in ledger.producers("/data/out-run-1-3")]
    assert view.last_seen("/data/out-run-1-3")[0].id == produced[0].id
    assert len(view.consumers("/data/in-2")) == 2  # tasks 2 and 7 read it
    ledger.close()
