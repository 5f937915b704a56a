"""`verify-lineage DIR` of more files than a report shows, all derived from one source that
was edited since: every file fails, not only the first one checked.

A problem is reported once however many trees show it (an edited reference genome would
otherwise be listed once per result), and a report past SHOWN files kept a target under
"failing" only where its check added a problem. So the first file's target counted as
failing and every later one as verified: the report kept 1,000 "verified" targets whose
trees each showed the edited source, and the failing ones past the first went uncounted
(found by last stop's comparison of directory checks with checks ten files at a time).
"""

from __future__ import annotations

import json

from lineage_ledger._verification.report import SHOWN
from tests.conftest import run_cli
from tests.support.derived import results_from_one_source

N = SHOWN + 150


def test_every_file_derived_from_an_edited_source_counts_as_failing(tmp_path):
    url, out, source = results_from_one_source(
        tmp_path, N, results="out", file_name="part-{:05d}.txt", file_text="part {}\n",
        source="reference.fa", source_text=">chr1\nACGT\n")
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "state")}
    before = run_cli("--ledger", url, "--json", out, cwd=tmp_path, env=env, program="verify-lineage", check_rc=0)
    assert json.loads(before.stdout)["ok"] is True

    source.write_text(">chr1\nACGA\n")  # edited by hand after the tasks read it
    result = run_cli("--ledger", url, "--json", out, cwd=tmp_path, env=env, program="verify-lineage", check_rc=1)
    report = json.loads(result.stdout)
    # The edit is reported once, against the source.
    assert [f["path"] for f in report["failures"]] == [str(source)]
    # Every file's tree holds the edited source, so each is a failing target: the ones kept
    # are SHOWN failing ones (none kept as verified), the rest counted.
    kept = report["targets"]
    assert len(kept) == SHOWN and report["targets_not_shown"] == N - SHOWN
    for target in kept:
        assert target["check"]["status"] == "OK"  # the file itself is as recorded
        (reference,) = target["lineage"]["inputs"]
        assert reference["path"] == str(source) and reference["status"] == "MODIFIED"
