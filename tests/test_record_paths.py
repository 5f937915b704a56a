"""Paths in records are absolute and normal; a record that is not is a failing record.

Found at stop 38: the core took any text as a record's path. ``Record(outputs={"sub/../b.txt":
...})`` through the Python API stored "sub/../b.txt" as it was, so ``verify-lineage b.txt``
called the file unrecorded and ``why b.txt`` knew nothing of it, though the record says it
wrote it; and a record that another writer put in the ledger naming ``/w/sub/../b.txt`` was
listed, exported and verified (exit 0) with that path in it, for each consumer to follow
as it liked (the RO-Crate export alone refused ``..``).

The rule (docs/guide.md, "Concepts"): a record made through :class:`Record` has its paths
normalised as the CLI normalises them (absolute against the working directory; ``.``,
``..``, repeated and trailing slashes removed without looking at the disk), so
``sub/../b.txt`` is recorded as ``$PWD/b.txt``. A stored record naming a path with a ``.``
or ``..`` component, an empty one or a trailing slash is unreadable: every reader reports
it as a failing record (exit 1) and follows none of its paths.

Real SQLite ledgers and the CLI in subprocesses; about 15 s at a load of 2.
"""

from __future__ import annotations

import json

import pytest
from blake3 import blake3

from lineage_ledger import Record, open_ledger
from lineage_ledger._canonical import canonical_bytes
from lineage_ledger._model import StoredRecord
from tests.conftest import run_cli
from tests.support.factories import BASE_TIME, make_record


def _entry(path) -> dict:
    data = path.read_bytes()
    return {"blake3": blake3(data).hexdigest(), "size": len(data)}


def test_a_record_made_through_the_api_names_the_normal_path(workdir, cli):
    (workdir / "sub").mkdir()
    (workdir / "b.txt").write_text("b")
    made = make_record(1)
    record = Record(engine="script", run_id="r", task_id="t", task_name="write-b", status="succeeded",
                    started=made.started, ended=made.ended, outputs={"sub/../b.txt": _entry(workdir / "b.txt"),
                                                                     "./sub//": _entry(workdir / "b.txt")})
    assert list(record.outputs) == [str(workdir / "b.txt"), str(workdir / "sub")]
    with open_ledger(".lineage/ledger.db") as ledger:
        ledger.record(record)
    verified = cli("b.txt", program="verify-lineage")
    assert verified.returncode == 0 and "verified" in verified.stdout, (verified.stdout, verified.stderr)
    why = cli("why", "b.txt", check_rc=0)
    assert "write-b" in why.stdout, why.stdout


def test_two_spellings_of_one_file_with_different_contents_are_refused(workdir):
    one, two = {"blake3": "1" * 64, "size": 1}, {"blake3": "2" * 64, "size": 1}
    with pytest.raises(ValueError, match="b.txt"):
        Record(engine="e", run_id="r", task_id="t", task_name="n", status="succeeded", started=BASE_TIME,
               ended=BASE_TIME, inputs={"b.txt": one, "sub/../b.txt": two})


def _other_writers_record(workdir) -> str:
    """A record that a writer which did not go through :class:`Record` put in the ledger:
    its body, canonical and hashed, names ``WORKDIR/sub/../b.txt`` (``b.txt`` is there)."""
    (workdir / "b.txt").write_text("b")
    path = f"{workdir}/sub/../b.txt"
    run_cli("run", "--", "true", cwd=workdir, check_rc=0)  # a ledger, with a record of its own
    body = json.loads(make_record(2).encode())
    body["outputs"] = {path: _entry(workdir / "b.txt")}
    data = canonical_bytes(body)
    stored = StoredRecord(blake3(data).hexdigest(), data, body["run_id"], (), ((path, body["outputs"][path]["blake3"]),),
                          body["ended"])
    with open_ledger(f"sqlite:///{workdir}/.lineage/ledger.db") as ledger:
        ledger.append_records([stored])
    return stored.id


@pytest.mark.parametrize("command", [("log",), ("log", "--json"), ("show", "{id}"),
                                     ("export", "--run", "run-1", "-f", "prov-json", "-o", "out.json"),
                                     ("graph", "--run", "run-1", "-o", "g.html")])
def test_readers_report_a_stored_path_with_dot_dot_as_a_failing_record(workdir, command):
    record_id = _other_writers_record(workdir)
    result = run_cli(*[word.format(id=record_id) for word in command], cwd=workdir)
    assert result.returncode == 1, (command, result.returncode, result.stdout, result.stderr)
    assert "sub/../b.txt" in result.stderr and "not normal" in result.stderr, result.stderr
    assert record_id[:12] in result.stderr, result.stderr
    assert "unexpected" not in result.stderr, result.stderr


def test_a_full_audit_reports_a_stored_path_with_dot_dot(workdir):
    record_id = _other_writers_record(workdir)
    result = run_cli(cwd=workdir, program="verify-lineage")
    assert result.returncode == 1, (result.stdout, result.stderr)
    out = result.stdout + result.stderr
    assert "sub/../b.txt" in out and record_id[:12] in out, out


def test_a_target_is_never_found_through_a_stored_path_with_dot_dot(workdir):
    """verify-lineage b.txt looks b.txt up by its normal path: the record does not vouch for it."""
    _other_writers_record(workdir)
    result = run_cli("b.txt", cwd=workdir, program="verify-lineage")
    assert result.returncode == 1 and "verified" not in result.stdout.split(), (result.stdout, result.stderr)
