"""The listing check (core/_ledger/complete.py) of one task's many outputs, and of a record
naming two paths under one key. Small and fast (a few seconds in all)."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger import Hasher, Record, open_ledger
from lineage_ledger._artifact import is_normal_path
from lineage_ledger._ledger import complete
from lineage_ledger._ledger.lineage import LedgerRecord
from lineage_ledger._log.names import path_key
from lineage_ledger._verification.verify import verify_lineage
from tests.support.factories import BASE_TIME, artifact, make_record

# Two paths with one CRC-32 (as in test_deleted_rows).
P, Q = "/data/uablaijhsa", "/data/pfcxpytzcn"


def test_the_outputs_of_one_task_are_counted_without_scanning_its_record_for_each(tmp_path, monkeypatch):
    """`verify-lineage DIR` of one task's N outputs asked, for each output, whether the record
    names another path under the same key, scanning all N: N^2 keys (10,000 outputs took 74 s
    against 1.4 s of hashing). Now each record's keys are worked out once."""
    n = 1500
    out = tmp_path / "out"
    out.mkdir()
    for i in range(n):
        (out / f"part-{i:05d}.txt").write_text(f"part {i}\n")
    (tmp_path / "input.txt").write_text("source")
    files = Hasher().hash_many([str(p) for p in sorted(out.iterdir())] + [str(tmp_path / "input.txt")])
    record = Record(engine="test", run_id="r", task_id="split", task_name="split", status="succeeded",
                    started=BASE_TIME, ended=BASE_TIME, inputs=files[-1:], outputs=files[:-1])
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    state = str(tmp_path / "state")
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=state) as ledger:
        ledger.record(record)
        ledger.audit()
    calls = 0

    def counted(path: str) -> int:
        nonlocal calls
        calls += 1
        return path_key(path)

    monkeypatch.setattr(complete, "path_key", counted)
    with open_ledger(url, state_dir=state, read_only=True) as ledger:
        report = verify_lineage(ledger, [str(out)])
    assert report.problems == 0 and len(report.targets) + report.not_shown == n
    assert calls <= 4 * n, calls  # was n * n + n (2,251,500)


def test_a_record_naming_two_paths_under_one_key_is_listed_for_each(tmp_path):
    """Whose count an entry kept under a shared key is cannot be told: the listing is checked
    without the counts, and each path's producer is still answered."""
    assert zlib.crc32(P.encode()) == zlib.crc32(Q.encode())
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "state")) as ledger:
        ledger.append_records([make_record(0, outputs=[artifact(P, "p"), artifact(Q, "q")]).stored(),
                               make_record(1, outputs=[artifact(P, "p2")]).stored()])
        assert [e.record.task_id for e in ledger.producers(P)] == ["task-0", "task-1"]
        assert [e.record.task_id for e in ledger.producers(Q)] == ["task-0"]


_PATHS = st.lists(st.sampled_from([P, Q, "/a", "/b", "/data/x", "/data/y"]) | st.text(max_size=8).map("/".__add__),
                  max_size=8, unique=True)


@settings(max_examples=200, deadline=None)
@given(outputs=_PATHS, asked=st.sampled_from([P, Q, "/a", "/zz"]))
def test_the_kept_clashes_answer_as_the_scan_did(outputs, asked):
    """_names_another_with_key (a set of clashing keys kept per record) against the scan it
    replaced: any other path of the side with the asked path's key."""
    # Paths as records name them (absolute and normal: Record makes any other so, since 7229a3b).
    # One spelling of each: a Record makes "//a" "/a" (and "//" "/"), and two outputs that
    # become one path are refused (found by hypothesis: ["/", "//"]).
    spelled: dict[str, str] = {}
    for p in outputs:
        if "\x00" not in p and p[:1] == "/" and is_normal_path(p):
            spelled.setdefault("/" + p.lstrip("/"), p)
    record = make_record(0, outputs=[artifact(p, p) for p in spelled.values()])
    entry = LedgerRecord(record.id, record, 0, 0)
    key = path_key(asked)
    for role in ("out", "in"):
        side = record.outputs if role == "out" else record.inputs
        scan = any(other != asked and path_key(other) == key for other in side)
        assert complete._names_another_with_key(entry, role, asked, key) == scan
