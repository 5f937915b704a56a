"""Parsl ``File``s that name a directory (issue 17), in real DataFlowKernels.

An app that writes a QC directory, and one that reads it. The directory is recorded with its
manifest digest and the lineage verifies; under ``strict`` a checkpointed task that produced
the directory is reused on a rerun, as plain Parsl reuses it; a file edited inside the
directory is named and refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402
from parsl.dataflow.memoization import BasicMemoizer  # noqa: E402
from parsl.executors import ThreadPoolExecutor  # noqa: E402

from lineage_ledger import ArtifactMismatch, hash_file, open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402


def write_qc(n: int, directory: str) -> int:
    os.makedirs(os.path.join(directory, "per_read"), exist_ok=True)
    with open(os.path.join(directory, "flagstat.txt"), "w") as handle:
        handle.write(f"{n} mapped\n")
    with open(os.path.join(directory, "per_read", "lengths.txt"), "w") as handle:
        handle.write("".join(f"{i}\n" for i in range(n)))
    return n


def qc(n, outputs=()):
    return write_qc(n, outputs[0].filepath)


def summarize(inputs=(), outputs=()):
    import os

    with open(os.path.join(inputs[0].filepath, "flagstat.txt")) as handle:
        line = handle.read()
    with open(outputs[0].filepath, "w") as handle:
        handle.write(line.upper())
    return line


def qc_plain(n, directory):
    return write_qc(n, directory)


def config(workdir: Path, ledger: ParslLedger | None) -> Config:
    executor = ThreadPoolExecutor(label="threads", max_threads=2)
    options = {"checkpoint_mode": "task_exit"}
    if ledger is None:
        return Config(executors=[executor], memoizer=BasicMemoizer(**options), usage_tracking=0,
                      run_dir=str(workdir / "runinfo"))
    return Config(executors=[ledger.wrap(executor)], memoizer=ledger.memoizer(**options), usage_tracking=0,
                  run_dir=str(workdir / "runinfo"))


def run_pipeline(workdir: Path, ledger: ParslLedger) -> tuple[object, object, str]:
    qc_dir, summary = workdir / "qc" / "A", workdir / "summary.txt"
    with support.loaded(config(workdir, ledger)) as dfk:
        made = python_app(qc, cache=True)(5, outputs=[File(str(qc_dir))])
        summed = python_app(summarize, cache=True)(inputs=[made.outputs[0]], outputs=[File(str(summary))])
        summed.exception()  # wait for both
        return made, summed, dfk.run_id


def test_a_directory_file_is_recorded_verified_reused_under_strict_and_an_edit_inside_refused(workdir):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    qc_dir, summary = workdir / "qc" / "A", workdir / "summary.txt"

    # Plain Parsl, for contrast: its checkpoint reuses the task that made the directory.
    plain_dir = workdir / "plain"
    for _ in range(2):
        with support.loaded(config(plain_dir, None)):
            plain = python_app(qc_plain, cache=True)(5, str(plain_dir / "qc"))
            assert plain.result() == 5
    assert plain.task_record["from_memo"] is True

    # 1. Recorded, with the directory's manifest digest, and the lineage verifies.
    made, summed, first = run_pipeline(workdir, ParslLedger(url, policy="strict"))
    assert made.result() == 5 and summed.result() == "5 mapped\n"
    with open_ledger(url) as ledger:
        records = {entry.record.task_name: entry.record for entry in ledger.run(first)}
    assert records["qc"].status == "succeeded"
    assert records["qc"].outputs[str(qc_dir)]["blake3"] == hash_file(qc_dir).blake3
    assert records["qc"].outputs[str(qc_dir)].get("type") == "dir"
    assert records["summarize"].inputs[str(qc_dir)] == records["qc"].outputs[str(qc_dir)]
    run_cli("--ledger", url, str(summary), program="verify-lineage", cwd=workdir, check_rc=0)

    # 2. Under strict, the checkpointed tasks are reused, as plain Parsl reuses them.
    made, summed, second = run_pipeline(workdir, ParslLedger(url, policy="strict"))
    assert summed.result() == "5 mapped\n"
    assert made.task_record["from_memo"] is True and summed.task_record["from_memo"] is True
    with open_ledger(url) as ledger:
        statuses = sorted((e.record.task_name, e.record.status) for e in ledger.run(second))
    assert statuses == [("qc", "cached"), ("summarize", "cached")]

    # 3. A file inside the directory edited, its mtime put back: strict refuses, naming the directory.
    lengths = qc_dir / "per_read" / "lengths.txt"
    stat = lengths.stat()
    lengths.write_text("forged\n")
    os.utime(lengths, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    made, summed, _ = run_pipeline(workdir, ParslLedger(url, policy="strict"))
    with pytest.raises(ArtifactMismatch, match=str(qc_dir)):
        made.result()
    assert lengths.read_text() == "forged\n"  # strict refuses; it does not repair
    verify = run_cli("--ledger", url, str(summary), program="verify-lineage", cwd=workdir)
    assert verify.returncode == 1 and "lengths.txt" in verify.stdout + verify.stderr, verify.stdout
