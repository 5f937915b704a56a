"""Bash apps whose data is their standard output, as Parsl's tutorials write them.

``count(n, inputs=[src], stdout=...)`` writes its result on stdout, and a python app reads
that file. Parsl takes ``stdout`` as a path (``"out.txt"``, ``("out.txt", "w")``: opened in
append mode by default, a log as often as data) or as a ``File`` (opened ``"w"``: a file
the app declares it makes).

* A ``File`` given as ``stdout``/``stderr`` is an output of the try: its record lists it
  with its digest, the memoizer keys it by its URL (like ``outputs=``), checks it before a
  cached result is reused, and the lineage of what is made from it goes back through the
  bash app. Before, it was keyed by its content, as an input: the file the app wrote itself
  changed the key, and the app was never reused from Parsl's checkpoint; and a hand edit of
  it went unseen by the app's own check.
* Either way, a stdout file that a try of this run rewrote is not "changed outside the
  workflow" for the app that reads it next. Before, when the bash app ran again (a new
  parameter), ``strict`` refused its reader, naming the file the workflow had just written.
* A log given as a path (``stderr="logs/all.err"``) stays a log: deleting the logs between
  runs does not stop a cached result from being reused.
"""

from __future__ import annotations

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import bash_app, python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from lineage_ledger import ArtifactMismatch, hash_file, open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def count(n, inputs=(), stdout=None, stderr=None):
    return f"head -n {n} {inputs[0].filepath} | wc -l"


def double(inputs=(), outputs=()):
    with open(inputs[0].filepath) as src:
        value = 2 * int(src.read())
    with open(outputs[0].filepath, "w") as handle:
        handle.write(f"{value}\n")
    return value


def _run(workdir, n, stdout, *, policy="strict", stderr=None):
    """count(n) -> double; returns (run id, double's result or the error it raised)."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    ledger = ParslLedger(url, policy=policy)
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)) as dfk:
        counted = bash_app(count, cache=True)(n, inputs=[File(str(workdir / "src.txt"))], stdout=stdout,
                                              stderr=stderr)
        try:
            counted.result()
            outcome: object = python_app(double, cache=True)(
                inputs=[File(str(workdir / "count.txt"))], outputs=[File(str(workdir / "double.txt"))]).result()
        except Exception as error:  # noqa: BLE001 - what the user sees
            outcome = error
        run_id = dfk.run_id
    with open_ledger(url) as opened:
        records = {e.record.task_name: e.record for e in opened.run(run_id)}
    return records, outcome


@pytest.fixture
def source(workdir):
    (workdir / "src.txt").write_text("a\nb\nc\n")
    return workdir


@pytest.mark.parametrize("form", ["path", "file"])
def test_a_reader_of_stdout_rewritten_in_this_run_is_not_refused(source, form):
    def stdout():
        return File(str(source / "count.txt")) if form == "file" else (str(source / "count.txt"), "w")

    assert _run(source, 2, stdout())[1] == 4
    records, outcome = _run(source, 3, stdout())  # a new parameter: count runs again
    assert outcome == 6, f"the reader was refused: {outcome!r}"
    assert records["count"].status == "succeeded" and records["double"].status == "succeeded"


def test_a_stdout_file_is_an_output_reused_from_the_checkpoint_and_checked(source):
    out = str(source / "count.txt")
    first, outcome = _run(source, 2, File(out))
    assert outcome == 4
    assert first["count"].outputs[out]["blake3"] == hash_file(out).blake3
    assert first["double"].inputs[out]["blake3"] == hash_file(out).blake3
    # verify-lineage of the reader's output goes back through the bash app to its source.
    shown = run_cli("--ledger", f"sqlite:///{source / 'ledger.db'}", str(source / "double.txt"),
                    program="verify-lineage", cwd=source, check_rc=0)
    assert "count" in shown.stdout
    again, outcome = _run(source, 2, File(out))
    assert outcome == 4 and again["count"].status == "cached", "the bash app was not reused"
    (source / "count.txt").write_text("100\n")  # edited by hand: the bash app's own check refuses it
    refused, outcome = _run(source, 2, File(out))
    assert isinstance(outcome, ArtifactMismatch) and "count.txt" in str(outcome)
    assert refused["count"].status == "failed" and refused["count"].extra["refused_by"] == "strict"
    assert out not in refused["count"].outputs


def test_deleted_logs_do_not_stop_a_cached_result_being_reused(source):
    logs = source / "logs"
    assert _run(source, 2, (str(source / "count.txt"), "w"), stderr=str(logs / "all.err"))[1] == 4
    for log in logs.iterdir():
        log.unlink()
    records, outcome = _run(source, 2, (str(source / "count.txt"), "w"), stderr=str(logs / "all.err"))
    assert outcome == 4
    assert records["count"].status == "cached" and records["double"].status == "cached"
