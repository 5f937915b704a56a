"""A long task that read a file, and a short one that rewrote it meanwhile: which saw it last.

``lineage-ledger run -i ref.txt`` hashes its inputs before the command starts, as the
Snakemake plugin does with the digests it takes early: a reader's digest of ``ref.txt`` is
the file as it was when the task *started*. A writer's is the file as it was when the task
*ended*. ``Ledger.last_seen`` compared a reader and a writer by their end times, so a task
that read ``ref.txt`` (v1), ran for a while, and ended after another task rewrote ``ref.txt``
(v2) was taken for the last record that saw it. No clock is wrong here, one host.

What a user saw: ``verify-lineage ref.txt`` of the file as the writer left it (v2, the
correct file) fails, "MODIFIED since it was last read by record ..." (exit 1), and the file
put back to the old version v1 passes, "verified", exit 0. A ``strict`` pre-run check asks
the same question. Found on SQLite and PostgreSQL alike (the per-role look-ups are each
right; the comparison of the latest reader with the latest writer was not). Fixed in
``Ledger.last_seen``: a reader counts from when it started, a writer from when it ended.

The order of the three events is forced with files, not sleeps: the reader's command waits
until the writer's ``run`` has returned.

About 10 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._capture.files import entries_of, manifest_records_of
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from tests.conftest import run_cli

# The reader: reads ref.txt at once, says so, waits for the word, writes what it read.
READER = ('x=$(cat ref.txt); : > reader-has-read; '
          'while [ ! -e go-on ]; do sleep 0.05; done; printf "%s\\n" "$x" > res.txt')


def _wait_for(path: Path, process: subprocess.Popen, what: str, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the reader ended (exit {process.returncode}) before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {bound:g} s")
        time.sleep(0.05)


def _verdicts(base: Path, url: str) -> tuple[int, int, str]:
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(base / "state")}
    run_cli("run", "-o", "ref.txt", "--", "sh", "-c", "echo v1 > ref.txt", cwd=base, env=env, check_rc=0)
    script = Path(sys.executable).parent / "lineage-ledger"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")} | env
    reader = subprocess.Popen([str(script), "run", "-i", "ref.txt", "-o", "res.txt", "--", "sh", "-c", READER],
                              cwd=base, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(base / "reader-has-read", reader, "read of ref.txt")
        # The reader started (and hashed ref.txt, v1) before this: now a short task rewrites it.
        run_cli("run", "-o", "ref.txt", "--", "sh", "-c", "echo v2 > ref.txt", cwd=base, env=env, check_rc=0)
        (base / "go-on").touch()
        _, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert reader.returncode == 0, err
    assert (base / "res.txt").read_text() == "v1\n" and (base / "ref.txt").read_text() == "v2\n"
    current = run_cli("verify", "ref.txt", cwd=base, env=env)
    (base / "ref.txt").write_text("v1\n")
    restored = run_cli("verify", "ref.txt", cwd=base, env=env)
    return current.returncode, restored.returncode, current.stdout + restored.stdout


def test_sqlite_a_file_rewritten_while_a_long_reader_ran_verifies_and_its_old_version_does_not(tmp_path):
    current, restored, shown = _verdicts(tmp_path, f"sqlite:///{tmp_path}/ledger.db")
    assert (current, restored) == (0, 1), shown


@pytest.mark.postgres
def test_postgresql_a_file_rewritten_while_a_long_reader_ran_verifies_and_its_old_version_does_not(
        tmp_path, postgres_url):
    current, restored, shown = _verdicts(tmp_path, postgres_url)
    assert (current, restored) == (0, 1), shown


def test_a_reader_that_started_as_a_writer_ended_did_not_see_its_version(tmp_path):
    """Whole-second clocks (a file system's modification times, which the Nextflow plugin
    records) make a reader's start and a writer's end the same instant. The reader hashed
    its input before it started, so the writer's version is the later one, whatever order
    their records reached the ledger in: here the reader's came last, and had read v1."""
    ref = tmp_path / "ref.txt"
    moment = datetime(2026, 12, 6, 12, 0, 1, tzinfo=timezone.utc)
    batches = []
    for name, text, started, ended, role in (("write-v1", "v1\n", moment - timedelta(seconds=6), moment - timedelta(seconds=5), "out"),
                                             ("read-v1", "v1\n", moment, moment + timedelta(seconds=5), "in"),
                                             ("write-v2", "v2\n", moment - timedelta(seconds=1), moment, "out")):
        ref.write_text(text)
        seen = [hash_file(str(ref))]
        sides = {"outputs": entries_of(seen)} if role == "out" else {"inputs": entries_of(seen)}
        record = Record(engine="test", run_id=name, task_id=name, task_name=name, status="succeeded",
                        started=started, ended=ended, **sides)
        batches.append((name, [*manifest_records_of(seen), record] if role == "out" else [record]))
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer-state")) as ledger:
        for name in ("write-v1", "write-v2", "read-v1"):  # the reader's record lands last
            ledger.append_records([r.stored() for r in dict(batches)[name]])
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state")}
    current = run_cli("verify", "ref.txt", cwd=tmp_path, env=env)
    ref.write_text("v1\n")
    restored = run_cli("verify", "ref.txt", cwd=tmp_path, env=env)
    assert (current.returncode, restored.returncode) == (0, 1), current.stdout + restored.stdout
