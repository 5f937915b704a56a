"""What ``verify-lineage`` and ``why`` say of a result derived from content never hashed.

A Nextflow task that stages a directory holding symbolic links out of it (to a reference
tree, to nothing) does not follow them (``_workdir``): what they lead to is in no record,
and the task's record says so (``extra.links_not_followed``). The check before ``-resume``
says it (tests/test_nextflow_links_not_followed.py), but ``verify-lineage`` of the task's
published output answered "verified", exit 0, with no word that part of what it was made
from was never hashed. A user who verifies a result must see it: the report names, for each
target whose lineage holds such a record, the record and the links (text and ``--json``),
and still exits 0 (nothing was seen to change: the pre-run check's policy, docs/nextflow.md).

The run-time warning came once per task try with no cap (1,000 tasks staging such a
directory: 1,000 warnings); the first few are said, then how many more at the end.

One Nextflow run serves every test here (a JVM start costs seconds on a busy machine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow  # a real Nextflow run

HANG = 240
TRIES = 8  # USE's tasks, each staging MAKE's directory
WARNED = 5  # the recorded-task warnings said in full (_not_followed.WARNINGS_SHOWN)
NOT_FOLLOWED = "were not followed"  # in the warning said when a task is recorded
NEVER_HASHED = "never hashed"  # in verify-lineage's and why's note, and the tree's line

#: MAKE's directory output holds ``refs`` (a link to ``--refs``) and ``gone`` (a link to
#: nothing); each of the USE tasks stages it, reads through ``refs`` and publishes a copy.
PIPELINE = f"""
params.refs = null
process MAKE {{
  output: path 'outdir'
  script:
  \"\"\"
  mkdir -p outdir
  echo made > outdir/made.txt
  ln -s ${{params.refs}} outdir/refs
  ln -s /nonexistent-lineage-ledger-target outdir/gone
  \"\"\"
}}
process USE {{
  publishDir 'results', mode: 'copy'
  input: tuple path(d), val(n)
  output: path "used${{n}}.txt"
  script: "cat ${{d}}/made.txt ${{d}}/refs/a.txt > used${{n}}.txt"
}}
workflow {{ USE(MAKE().combine(Channel.of(1..{TRIES}))) }}
"""


class Run:
    def __init__(self, here: Path, refs: Path, stderr: str, records: list[dict[str, Any]]) -> None:
        self.here, self.refs, self.stderr, self.records = here, refs, stderr, records

    def use_of(self, published: Path) -> dict[str, Any]:
        """The record of the USE try that wrote what ``published`` is a copy of."""
        (use,) = [r for r in self.records if r["task_name"] == "USE"
                  and any(Path(p).name == published.name for p in r["outputs"])]
        return use


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    base = tmp_path_factory.mktemp("nf-not-followed")
    here = base / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(PIPELINE)
    refs = base / "refs"
    refs.mkdir()
    (refs / "a.txt").write_text("reference one\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", "--refs", str(refs), cwd=here, timeout=HANG)
    assert first.returncode == 0, first.stdout + first.stderr
    return Run(here, refs, first.stderr, nf.records(here))


def _verify(run: Run, *args: str) -> Any:
    result = nf.run("verify-lineage", *args, cwd=run.here)
    assert result.returncode == 0, result.stdout + result.stderr  # a note, not a failure
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_verify_and_why_say_what_was_never_hashed(run):
    """``verify-lineage results/used1.txt``: exit 0, the USE line of the tree marked, a note
    naming USE's record and its two links, and a last line that is not a bare "verified";
    ``--json`` lists the record, its links and the target; ``why`` says it too. MAKE's
    output, whose lineage holds no such record, is plainly verified."""
    target = run.here / "results" / "used1.txt"
    use = run.use_of(target)
    links = use["extra"]["links_not_followed"]
    assert len(links) == 2 and str(run.refs) in links.values(), links

    text = _verify(run, "results/used1.txt")
    (use_line,) = [line for line in text.splitlines() if "<- " in line and "nextflow:USE [" in line]
    assert NEVER_HASHED in use_line, text
    (note,) = [line for line in text.splitlines() if line.startswith("note:") and NEVER_HASHED in line]
    assert use["id"][:12] in text and "2 symbolic link(s)" in text and f"-> {run.refs}" in text, text
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("verified") and last != "verified" and NEVER_HASHED in last, text

    data = _verify(run, "--json", "results/used1.txt")
    assert data["ok"] is True, data
    (mark,) = data["not_verified"]
    assert mark["record"] == use["id"] and mark["task_name"] == "USE", mark
    assert mark["links_not_followed"] == links and mark["targets"] == [str(target)], mark
    (checked,) = data["targets"]
    assert checked["not_verified"] == [use["id"]], checked

    # A target whose lineage holds no such record: verified, without a note.
    (made,) = [p for p in (run.here / "work").glob("*/*/outdir/made.txt") if not p.parent.is_symlink()]
    plain = _verify(run, str(made))
    assert plain.rstrip().splitlines()[-1] == "verified" and NEVER_HASHED not in plain, plain
    assert _verify(run, "--json", str(made))["not_verified"] == []

    why = nf.run("lineage-ledger", "why", "results/used1.txt", cwd=run.here)
    assert why.returncode == 0 and NEVER_HASHED in why.stdout and f"-> {run.refs}" in why.stdout, why
    why_json = nf.run("lineage-ledger", "why", "--json", "results/used1.txt", cwd=run.here)
    assert why_json.returncode == 0, why_json.stderr
    (marked,) = json.loads(why_json.stdout)["not_verified"]
    assert marked["record"] == use["id"] and marked["links_not_followed"] == links, marked


def test_the_warning_is_said_for_a_few_tries_then_counted(run):
    """8 USE tries each stage the directory: 5 warnings in full, then one line counting the
    other 3; every try's record still names its links."""
    warnings = [line for line in run.stderr.splitlines() if NOT_FOLLOWED in line]
    assert len(warnings) == WARNED, run.stderr
    (counted,) = [line for line in run.stderr.splitlines() if "more task try(s)" in line]
    assert f"{TRIES - WARNED} more task try(s)" in counted and "links_not_followed" in counted, counted
    uses = [r for r in run.records if r["task_name"] == "USE"]
    assert len(uses) == TRIES and all(len(r["extra"]["links_not_followed"]) == 2 for r in uses)


def _node(path: str, task: str | None = None, parents: list | None = None, **extra: Any):
    """A lineage node as the ledger builds it; ``task``: its producer's record (``extra`` its marks)."""
    from datetime import datetime, timezone

    from lineage_ledger import Record
    from lineage_ledger._ledger.lineage import LedgerRecord, LineageNode

    if task is None:
        return LineageNode(path, "0" * 64, "source", None, parents or [])
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    record = Record(engine="nextflow", run_id="r", task_id=task, task_name=task, status="succeeded", started=when,
                    ended=when, inputs={}, outputs={}, extra=extra)
    return LineageNode(path, "0" * 64, "produced", LedgerRecord(f"{task:0>64}", record, 0, 0), parents or [])


def test_the_records_found_in_many_trees_are_bounded_and_shared():
    """Without Nextflow: the walk that finds marked records in a report's trees names each
    record once with the targets (the first 5) whose lineage holds it, lists at most 100
    records and counts the others, finds one far down a chain 5,000 deep, and ends on a node
    that is its own ancestor."""
    from lineage_ledger._verification.report import MARKS_KEPT, TARGETS_NAMED, not_verified_in

    links = {"/w/outdir/refs": "/refs"}
    marked = _node("/w/used.txt", "USE", [_node("/w/outdir/made.txt", "MAKE")], links_not_followed=links)
    targets = [(f"/r/{i}", _node(f"/r/{i}", f"P{i}", [marked])) for i in range(TARGETS_NAMED + 2)]
    plain = ("/r/plain", _node("/r/plain", "PLAIN", [_node("/src")]))
    chain = marked
    for i in range(5000):
        chain = _node(f"/c/{i}", f"C{i}", [chain])
    looped = _node("/loop", "LOOP", [])
    looped.parents.append(looped)
    found = not_verified_in([*targets, plain, ("/c", chain), ("/loop", looped), ("/none", None)])
    (note,) = found.records
    assert note.entry.record.task_name == "USE" and note.marks == {"links_not_followed": links}
    assert note.targets == [path for path, _ in targets[:TARGETS_NAMED]] and note.more_targets == 3
    assert found.by_target["/r/plain"] == [] and found.by_target["/loop"] == [] and found.by_target["/none"] == []
    assert found.by_target["/c"] == [note.entry.id] and found.more == 0

    many = _node("/sum", "SUM", [_node(f"/p/{i}", f"M{i:04d}", not_verified=[f"/p/{i}"]) for i in range(MARKS_KEPT + 50)])
    wide = not_verified_in([("/sum", many)])
    assert len(wide.records) == MARKS_KEPT and wide.more == 50
    assert wide.by_target["/sum"] == sorted(r.entry.id for r in wide.records)
    assert [r.entry.record.task_name for r in wide.records] == [f"M{i:04d}" for i in range(MARKS_KEPT)]
