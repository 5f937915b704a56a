"""An adversarial review of this session's changes, as a user meets them (helper-86).

Each test is a finding: a strict xfail until it is fixed (see the reason of each).

Real SQLite ledgers and the CLI in subprocesses.
"""

from __future__ import annotations

import json
import os

import pytest
from blake3 import blake3

from lineage_ledger import Record, open_ledger
from lineage_ledger._canonical import canonical_bytes
from lineage_ledger._model import StoredRecord
from tests.support.factories import make_record

_NOBODY = 65534


def _earlier_release_record(workdir) -> str:
    """The bytes the release before 7229a3b wrote for ``Record(outputs={"raw.csv": entry})``
    made through the documented Python API: its ``Record`` kept a path as it was given, so the
    record names the relative ``raw.csv`` (``lineage-ledger run`` makes the ledger first)."""
    data = b"station,day\nnorth,1\n"
    (workdir / "raw.csv").write_bytes(data)
    entry = {"blake3": blake3(data).hexdigest(), "size": len(data)}
    body = json.loads(make_record(2).encode())
    body["task_name"] = "fetch-raw"
    body["outputs"] = {"raw.csv": entry}
    encoded = canonical_bytes(body)
    stored = StoredRecord(blake3(encoded).hexdigest(), encoded, body["run_id"], (), (("raw.csv", entry["blake3"]),),
                          body["ended"])
    with open_ledger(f"sqlite:///{workdir}/.lineage/ledger.db") as ledger:
        ledger.append_records([stored])
    return stored.id


def test_a_ledger_an_earlier_release_wrote_with_a_relative_path_is_not_called_tampered(workdir, cli):
    cli("run", "--", "true", check_rc=0)  # a ledger with a record of this release
    record_id = _earlier_release_record(workdir)
    log = cli("log")
    verify = cli("verify")
    assert log.returncode == 0 and "fetch-raw" in log.stdout, (log.returncode, log.stdout, log.stderr)
    assert "RecordTampered" not in verify.stdout + verify.stderr, (verify.stdout, verify.stderr)
    assert verify.returncode == 0, (record_id, verify.stdout, verify.stderr)


def test_an_empty_key_path_is_refused_not_an_unsigned_checkpoint(workdir, cli):
    cli("run", "--run-id", "r", "--", "true", check_rc=0)
    checkpoint = cli("checkpoint", "--key", "", "-o", "cp.txt")
    assert checkpoint.returncode == 2, (checkpoint.returncode, checkpoint.stdout, checkpoint.stderr)
    assert "empty" in checkpoint.stderr and not (workdir / "cp.txt").exists(), checkpoint.stderr
    crate = cli("export", "--run", "r", "-f", "ro-crate", "--key", "", "-o", "crate")
    assert crate.returncode == 2 and "empty" in crate.stderr, (crate.returncode, crate.stderr)
    assert not (workdir / "crate").exists()


def test_hash_with_an_empty_cache_path_is_refused_as_an_empty_path(workdir, cli):
    (workdir / "a.txt").write_text("a")
    hashed = cli("hash", "--cache", "", "a.txt")
    assert hashed.returncode == 2, (hashed.returncode, hashed.stderr)
    assert "unexpected" not in hashed.stderr and "empty" in hashed.stderr, hashed.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the spool root to another user (nobody)")
def test_a_spool_root_another_user_owns_is_refused(workdir, cli):
    root = workdir / ".lineage" / "spool"
    root.mkdir(parents=True)
    os.chown(root, _NOBODY, _NOBODY)  # as if nobody had made it first, in a project directory both may write
    root.chmod(0o755)
    ran = cli("run", "--", "true")
    assert ran.returncode == 2, (ran.returncode, ran.stderr)
    assert str(_NOBODY) in ran.stderr, ran.stderr
    assert not any(root.iterdir()), "a spool directory was made inside another user's directory"


def test_a_path_with_two_leading_slashes_is_recorded_as_the_file(workdir, cli):
    (workdir / "api.txt").write_text("hi\n")
    made = make_record(1)
    entry = {"blake3": blake3(b"hi\n").hexdigest(), "size": 3}
    record = Record(engine="script", run_id="r", task_id="t", task_name="api-write", status="succeeded",
                    started=made.started, ended=made.ended, outputs={f"/{workdir}/api.txt": entry})
    with open_ledger(".lineage/ledger.db") as ledger:
        ledger.record(record)
    verified = cli("api.txt", program="verify-lineage")
    assert verified.returncode == 0 and "UNRECORDED" not in verified.stdout, (verified.stdout, verified.stderr)
    assert "api-write" in cli("why", "api.txt", check_rc=0).stdout


@pytest.mark.parametrize("command", [("export", "--run", "run-1", "-f", "prov-json", "-o", "-"),
                                     ("export", "--run", "run-1", "-f", "openlineage", "-o", "-"),
                                     ("graph", "--run", "run-1", "-f", "dot", "--group", "none", "-o", "-")],
                         ids=["prov-json", "openlineage", "graph"])
def test_standard_output_cut_short_by_its_reader_exits_141_as_hash_does(workdir, command):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from lineage_ledger.testing import make_records

    with open_ledger(".lineage/ledger.db") as ledger:
        ledger.append_records([r.stored() for r in make_records(2000)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    process = subprocess.Popen([str(Path(sys.executable).parent / "lineage-ledger"), *command], cwd=workdir,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = process.stdout.read(100)
        process.stdout.close()  # what `head -c 100` does
        err = process.stderr.read().decode()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert len(first) == 100, first
    assert process.returncode == 128 + signal.SIGPIPE, (process.returncode, err[-500:])
    assert err == "", err


def test_a_record_refuses_an_empty_path(workdir):
    entry = {"blake3": "a" * 64, "size": 3}
    for side in ("inputs", "outputs"):
        with pytest.raises(ValueError, match="not normal|empty"):
            Record(engine="e", run_id="r", task_id="t", task_name="n", status="succeeded",
                   started=make_record(1).started, ended=make_record(1).ended, **{side: {"": entry}})
