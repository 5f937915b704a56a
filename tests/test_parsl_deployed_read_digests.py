"""A task's inputs are recorded as the task was handed them, not as they are when it ends.

By default (no ``WorkerHashingStaging``) the recording process hashed a try's files after it
ended. An input rewritten while a long task ran was recorded with its new digest: the record
said the output was made from bytes the task never read, ``verify-lineage`` of the input
passed where it should have failed (nothing recorded wrote the new bytes), and the next run's
check compared it with the new bytes too. The memoizer hashes each input right before the try
is handed to the executor (it hashed them there already for content keys and its check), and
the try's record takes those digests.
"""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from lineage_ledger import hash_file, open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def slow_copy(started: str, go: str, inputs=(), outputs=()) -> None:
    """Reads its input, says so, waits for ``go``, then writes what it read."""
    with open(inputs[0].filepath) as handle:
        data = handle.read()
    open(started, "w").close()
    for _ in range(600):
        if os.path.exists(go):
            break
        time.sleep(0.05)
    with open(outputs[0].filepath, "w") as handle:
        handle.write(data)


def test_an_input_rewritten_while_its_task_runs_is_recorded_as_the_task_read_it(workdir, cli):
    source, made = workdir / "in.txt", workdir / "out.txt"
    source.write_text("v1\n")
    read = hash_file(str(source)).blake3
    ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy="strict")
    with support.loaded(pipeline.make_config(str(workdir), "threads", ledger, checkpoint=False)):
        future = python_app(slow_copy)(str(workdir / "started"), str(workdir / "go"),
                                       inputs=[File(str(source))], outputs=[File(str(made))])
        for _ in range(600):
            if (workdir / "started").exists() or future.done():
                break
            time.sleep(0.05)
        source.write_text("v2, written while the task ran\n")  # by someone else, outside the workflow
        (workdir / "go").touch()
        assert future.result() is None
    assert made.read_text() == "v1\n"
    with open_ledger(f"sqlite:///{workdir / 'ledger.db'}") as opened:
        (record,) = [e.record for e in opened.recent(0) if e.record.task_name == "slow_copy"]
    assert record.inputs[str(source)]["blake3"] == read, "the input was recorded as it was when the task ended"
    # What a user sees: the input no recorded task wrote is not what its reader read.
    checked = cli("verify", "--ledger", f"sqlite:///{workdir / 'ledger.db'}", str(source))
    assert checked.returncode == 1 and "MODIFIED" in checked.stdout, (checked.returncode, checked.stdout)


def add_release(inputs=(), outputs=()) -> None:
    """Updates its file in place: reads the last release, appends the new one."""
    with open(inputs[0].filepath) as handle:
        last = handle.read()
    with open(outputs[0].filepath, "w") as handle:
        handle.write(last + "added\n")


def publish(inputs=(), outputs=()) -> None:
    """Copies a new release over the last one (as Nextflow's publishDir does)."""
    with open(inputs[0].filepath) as src, open(outputs[0].filepath, "w") as dst:
        dst.write(src.read())


def test_an_app_that_updates_its_file_in_place_verifies(workdir, cli):
    """A file updated in place: by one app given it as its input and its output (a database),
    or by an app whose output the next one publishes over it (Nextflow's ``publishDir`` over
    a task's input). Each is recorded reading the last release and writing the new one, and
    ``verify-lineage`` of it failed (exit 1, ``LineageBroken``: the release read is one "no
    recorded task produced", the path having been produced, by the very task that read it or
    by one that read what it wrote, so after the read whatever the clocks say)."""
    db, release, made = workdir / "db.txt", workdir / "release.txt", workdir / "made.txt"
    db.write_text("release-1\n")
    release.write_text("release-1\n")
    read = hash_file(str(db)).blake3
    url = f"sqlite:///{workdir / 'ledger.db'}"
    with support.loaded(pipeline.make_config(str(workdir), "threads", ParslLedger(url, policy="strict"),
                                             checkpoint=False)):
        assert python_app(add_release)(inputs=[File(str(db))], outputs=[File(str(db))]).result() is None
        new = python_app(add_release)(inputs=[File(str(release))], outputs=[File(str(made))])
        assert python_app(publish)(inputs=[new.outputs[0]], outputs=[File(str(release))]).result() is None
    with open_ledger(url) as opened:
        records = [e.record for e in opened.recent(0)]
    (record,) = [r for r in records if r.task_name == "add_release" and str(db) in r.inputs]
    assert record.inputs[str(db)]["blake3"] == read
    assert record.outputs[str(db)]["blake3"] == hash_file(str(db)).blake3 != read
    assert release.read_text() == "release-1\nadded\n"
    for path in (db, release):
        checked = cli("verify", "--ledger", url, str(path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
