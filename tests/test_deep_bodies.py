"""A record body nested deeper than a JSON parser follows (a writer that is not ours put it
in the tree, with its right id): every reader says it is unreadable, exit 1, like any other
bad body. It was the interpreter's RecursionError: the CLI called it "the lineage is too deep
to walk" and exited 2, and appending it raised out of the writer. About 3 s."""

from __future__ import annotations

import json

import pytest
from blake3 import blake3

from lineage_ledger import StoredRecord, open_ledger
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record

PARALLEL = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "2", "LINEAGE_AUDIT_WORKERS": "2"}


@pytest.fixture
def ledger_with_a_deep_body(tmp_path):
    """Six records; the fourth, which wrote ``deep.txt``, holds a parameter nested 50,000 deep.
    Two are in the ledger; the call given back appends the others."""
    target = tmp_path / "deep.txt"
    target.write_text("deep\n")
    written = artifact(str(target), "deep\n")
    records = [make_record(i, outputs=[artifact(str(tmp_path / f"o{i}"), f"o{i}")]) for i in range(6)]
    body = json.loads(make_record(3, outputs=[written]).encode())
    body["parameters"] = {"deep": 0}
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    data = data.replace(b'"deep":0', b'"deep":' + b"[" * 50_000 + b"]" * 50_000)
    stored = [r.stored() for r in records]
    # As a writer without our encoder stores it: id, body and index keys, the end time left
    # for the back-end to read from the body.
    stored[3] = StoredRecord(blake3(data).hexdigest(), data, body["run_id"], (), ((str(target), written.blake3),))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records(stored[:2])

    def append_the_rest() -> None:
        with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
            ledger.append_records(stored[2:4])
            ledger.append_records(stored[4:])

    return url, target, append_the_rest


@pytest.mark.parametrize("env", [{}, PARALLEL, {"LINEAGE_AUDIT_BULK": "0"}], ids=["default", "workers", "row-by-row"])
def test_the_audit_says_the_record_is_unreadable(ledger_with_a_deep_body, tmp_path, env):
    url, _, append_the_rest = ledger_with_a_deep_body
    append_the_rest()
    result = run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=env)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "not readable" in result.stdout + result.stderr
    assert "too deep to walk" not in result.stderr


def test_targeted_reads_say_the_record_is_unreadable(ledger_with_a_deep_body, tmp_path):
    url, target, append_the_rest = ledger_with_a_deep_body
    # The account verified the ledger before the record came: a read proves and decodes
    # only the records it answers from.
    run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", check_rc=0)
    append_the_rest()
    for args, program in ((("--ledger", url, str(target)), "verify-lineage"),
                          (("why", "--ledger", url, str(target)), "lineage-ledger")):
        result = run_cli(*args, cwd=tmp_path, program=program)
        assert result.returncode == 1, (program, args, result.stdout, result.stderr)
        # The records appended since the account's head are proved on the way (the tree
        # extended over them), so the read finds it unreadable there.
        assert "not readable" in result.stdout + result.stderr, (program, args, result.stderr)
