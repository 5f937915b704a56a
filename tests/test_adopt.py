"""`lineage-ledger adopt` (issue #17): accept an intentional change, with a trace of who and why."""

from __future__ import annotations

import json

import pytest

from lineage_ledger import ArtifactMismatch, check_before_run, open_ledger


def test_adopt_lets_strict_through_keeps_catching_tampering_and_shows_in_why(cli, workdir):
    (workdir / "sheet.csv").write_text("sample,cond\nA,ctrl\n")
    cli("run", "-i", "sheet.csv", "-o", "design.txt", "--", "sh", "-c", "cut -d, -f1 sheet.csv > design.txt",
        check_rc=0)
    (workdir / "sheet.csv").write_text("sample,cond\nA,treated\n")  # corrected on purpose
    with open_ledger() as ledger, pytest.raises(ArtifactMismatch, match="sheet.csv"):
        check_before_run(ledger, [str(workdir / "sheet.csv")], "strict")

    adopted = cli("adopt", "sheet.csv", "--note", "condition of A was wrong", check_rc=0)
    assert "adopted sheet.csv" in adopted.stdout and "was " in adopted.stdout
    with open_ledger() as ledger:
        assert check_before_run(ledger, [str(workdir / "sheet.csv")], "strict") == []
    assert "OK" in cli("sheet.csv", program="verify-lineage", check_rc=0).stdout
    why = cli("why", "sheet.csv", check_rc=0).stdout
    assert "adopt" in why and "condition of A was wrong" in why
    record = json.loads(cli("log", "--json", check_rc=0).stdout.splitlines()[-1])
    assert record["task_name"] == "adopt" and record["extra"]["note"] == "condition of A was wrong"
    assert "@" in record["extra"]["adopted_by"]
    # What design.txt was made from was the source of its day, not a broken version.
    assert "BROKEN" not in cli("why", "design.txt", check_rc=0).stdout

    (workdir / "sheet.csv").write_text("sample,cond\nA,tampered\n")
    with open_ledger() as ledger, pytest.raises(ArtifactMismatch, match="sheet.csv"):
        check_before_run(ledger, [str(workdir / "sheet.csv")], "strict")


def test_adopt_a_directory_and_refuse_a_missing_path(cli, workdir):
    (workdir / "ref").mkdir()
    (workdir / "ref" / "genome.fa").write_text(">chr1\nACGT\n")
    cli("adopt", "ref", check_rc=0)
    (workdir / "ref" / "genome.fa").write_text(">chr1\nACGA\n")
    failed = cli("ref", program="verify-lineage", check_rc=1)
    assert "changed: genome.fa" in failed.stdout
    missing = cli("adopt", "ref", "nope.txt", check_rc=2)
    assert "nope.txt" in missing.stderr
    assert len(cli("log", "--json", check_rc=0).stdout.splitlines()) == 1  # nothing recorded by it
