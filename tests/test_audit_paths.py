"""The full audit refuses a stored record naming a path that is not normal, as every reader's
decode does (tests/test_record_paths.py has the CLI's view): relative, a '.', '..' or empty
component, a trailing slash. Hidden files ('/w/.cache/x') are normal and pass, and so does a
relative name without those ('data/b.txt'), which an earlier release's Record stored as given. Sequential,
in-process ranges and worker processes must agree.
"""

from __future__ import annotations

import json

import pytest
from blake3 import blake3

from lineage_ledger import open_ledger
from lineage_ledger._canonical import canonical_bytes
from lineage_ledger._errors import RecordTampered
from lineage_ledger._model import StoredRecord
from tests.support.factories import make_record

DIGEST = "ab" * 32


def _stored(path: str, role: str, seed: int) -> StoredRecord:
    body = json.loads(make_record(seed).encode())
    body["inputs"], body["outputs"] = {}, {}
    body[role] = {path: {"blake3": DIGEST, "size": 1}}
    data = canonical_bytes(body)
    entry = ((path, DIGEST),)
    return StoredRecord(blake3(data).hexdigest(), data, body["run_id"], entry if role == "inputs" else (),
                        entry if role == "outputs" else (), body["ended"])


def _ledger_with(tmp_path, odd: StoredRecord) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records([make_record(i).stored() for i in range(10, 300)])
        ledger.append_records([odd])
        ledger.append_records([make_record(i).stored() for i in range(400, 500)])
    return url


@pytest.mark.parametrize("path", ["w/../b.txt", "/w/sub/../b.txt", "/w/./b.txt", "/w//b.txt", "/w/sub/",
                                  "/w/sub/.", "/w/sub/..", "", "/w/b\x00.txt"])
@pytest.mark.parametrize("role", ["inputs", "outputs"])
def test_the_audit_names_the_record_and_its_path(tmp_path, path, role):
    odd = _stored(path, role, 1)
    url = _ledger_with(tmp_path, odd)
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
        with pytest.raises(RecordTampered, match="not normal") as raised:
            ledger.audit()
    assert odd.id[:16] in str(raised.value) and repr(path) in str(raised.value)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ranges_and_workers_refuse_it_too(tmp_path, monkeypatch, workers):
    monkeypatch.setenv("LINEAGE_AUDIT_PARALLEL_MIN", "1")
    monkeypatch.setenv("LINEAGE_AUDIT_TASK_RECORDS", "100")
    monkeypatch.setenv("LINEAGE_AUDIT_WORKERS", workers)
    odd = _stored("/w/sub/../b.txt", "outputs", 1)
    url = _ledger_with(tmp_path, odd)
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
        with pytest.raises(RecordTampered, match="not normal") as raised:
            ledger.audit()
    assert odd.id[:16] in str(raised.value)


@pytest.mark.parametrize("path", ["/w/.cache/b.txt", "/w/.b", "/w/..b", "/w/b.", "b.txt", "data/b.txt"])
def test_hidden_files_dots_inside_names_and_an_earlier_releases_relative_names_pass(tmp_path, path):
    url = _ledger_with(tmp_path, _stored(path, "outputs", 1))
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
        assert ledger.audit().summary.records == 391
