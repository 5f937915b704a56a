"""A repeated audit checks the bodies of only the records after its remembered head, where
every record under that head was checked by the current rule (its ``bodies``): the records
under it are the same bytes, or the new tree does not extend the remembered one and the
audit fails. A head of an earlier release (no ``bodies``) has every record checked again.
See tests/test_audit_records.py for what the check refuses."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._errors import RecordTampered, VerificationError
from lineage_ledger._log import audit_records
from tests.support.factories import make_record
from tests.test_audit_records import REFUSED, _stored

WORKERS = {"LINEAGE_AUDIT_PARALLEL_MIN": "1", "LINEAGE_AUDIT_TASK_RECORDS": "100", "LINEAGE_AUDIT_WORKERS": "2"}
BAD = REFUSED["status not one of three"]


def _append(url: str, tmp_path, records) -> None:
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records(records)


def _audit(url: str, state) -> int:
    with open_ledger(url, read_only=True, state_dir=str(state)) as ledger:
        return ledger.audit().summary.records


def _head_path(state):
    """The remembered head of the one ledger ``state`` keeps (a directory per ledger)."""
    (path,) = state.glob("*/head.json")
    return path


@pytest.fixture
def counted(monkeypatch):
    """How many bodies the typed decoder parsed in this process (the real one runs)."""
    decode, *rest = audit_records._CODEC or audit_records._codec()
    count = [0]

    def counting(body):
        count[0] += 1
        return decode(body)

    monkeypatch.setattr(audit_records, "_CODEC", (counting, *rest))
    return count


@pytest.mark.parametrize("env", [{}, WORKERS], ids=["here", "workers"])
def test_the_records_appended_since_are_checked(tmp_path, monkeypatch, counted, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _append(url, tmp_path, [make_record(i).stored() for i in range(300)])
    assert _audit(url, tmp_path / "state") == 300
    assert json.loads(_head_path(tmp_path / "state").read_bytes())["bodies"] == audit_records.BODIES_FORMAT
    counted[0] = 0
    _append(url, tmp_path, [make_record(i).stored() for i in range(300, 320)])
    assert _audit(url, tmp_path / "state") == 320
    if not env:  # the control: checked in this process, only the 20 appended since
        assert counted[0] == 20
    stored = _stored(BAD)
    _append(url, tmp_path, [stored])
    with pytest.raises(RecordTampered) as raised:
        _audit(url, tmp_path / "state")
    assert stored.id[:16] in str(raised.value)


def test_a_head_of_an_earlier_release_has_every_record_checked(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    stored = _stored(BAD)
    _append(url, tmp_path, [make_record(i).stored() for i in range(100)] + [stored])
    # An earlier release's audit: the index's fields only, and a head without "bodies".
    with monkeypatch.context() as patched:
        patched.setattr("lineage_ledger._log.audit_rows.decode_checked",
                        lambda block, *args: (audit_records.decode_checked(block, 0, 1 << 62)[0], []))
        assert _audit(url, tmp_path / "state") == 101
    path = _head_path(tmp_path / "state")
    head = json.loads(path.read_bytes())
    del head["bodies"]
    path.write_text(json.dumps(head, sort_keys=True))
    with pytest.raises(RecordTampered) as raised:
        _audit(url, tmp_path / "state")
    assert stored.id[:16] in str(raised.value)


def test_a_ledger_rewritten_under_a_checked_head_fails(tmp_path):
    """The same ledger put back with a bad record where a good one was: the records under the
    remembered head are not the bytes that were checked, and the audit says so."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    records = [make_record(i).stored() for i in range(100)]
    _append(f"sqlite:///{good / 'ledger.db'}", good, records)
    _append(f"sqlite:///{bad / 'ledger.db'}", bad, [*records[:50], _stored(BAD), *records[51:]])
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    shutil.copy(good / "ledger.db", tmp_path / "ledger.db")
    assert _audit(url, tmp_path / "state") == 100
    os.remove(tmp_path / "ledger.db")
    shutil.copy(bad / "ledger.db", tmp_path / "ledger.db")
    with pytest.raises(VerificationError):
        _audit(url, tmp_path / "state")
