"""nextflow-ledger's pieces that need no JVM: the command line, the files Nextflow writes
(a work directory's wrapper, the log, the trace file) and the check before ``-resume``.

The pre-run check is driven through the ``nextflow-ledger`` command with ``LINEAGE_NEXTFLOW``
pointing at a program that must never run: ``strict`` refuses before Nextflow would start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _args
from lineage_ledger_nextflow._log import last_session, read_log
from lineage_ledger_nextflow._trace import TraceFollower
from lineage_ledger_nextflow._workdir import read_workdir, staged_files

BIN = Path(sys.executable).parent
SESSION = "2f3de1ba-594f-46ec-898c-bbe042398632"


def ledger_cmd(*args: str, cwd: Path, nextflow: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "NXF_"))}
    env["LINEAGE_NEXTFLOW"] = nextflow
    return subprocess.run([str(BIN / "nextflow-ledger"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def never(tmp_path):
    """A `nextflow` that leaves a mark if it is ever started."""
    script = tmp_path / "never-nextflow"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / 'NEXTFLOW_STARTED'}\nexit 0\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("argv, message", [
    (["main.nf"], "no `run PIPELINE`"),
    (["run"], "needs the pipeline"),
    (["run", "main.nf", "--ledger-policy", "maybe"], "--ledger-policy must be one of"),
    (["run", "main.nf", "--ledger"], "--ledger needs a value"),
    (["-bg", "run", "main.nf"], "-bg is not supported"),
])
def test_bad_command_lines_exit_2(tmp_path, never, argv, message):
    result = ledger_cmd(*argv, cwd=tmp_path, nextflow=never)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "NEXTFLOW_STARTED").exists()


def test_arguments_split_between_the_wrapper_and_nextflow():
    command = _args.parse(["-log", "my.log", "run", "main.nf", "-resume", SESSION, "--ledger", "x.db",
                           "--title", "t", "--flag", "--ledger-policy=rerun"])
    assert (command.ledger, command.policy, command.resume, command.resume_session) == ("x.db", "rerun", True, SESSION)
    assert command.log_file == "my.log" and command.params == {"title": "t", "flag": "true"}
    assert _args.nextflow_args(command, "own.config", "P") == [
        "-log", "my.log", "-trace", "P", "-c", "own.config", "run", "main.nf", "-resume", SESSION,
        "--title", "t", "--flag"]
    user_trace = _args.parse(["-trace", "nextflow.Session", "run", "main.nf"])
    assert _args.nextflow_args(user_trace, "c", "P")[:2] == ["-trace", "nextflow.Session,P"]
    assert _args.absolute_url("sqlite:///rel/l.db", "/launch") == "sqlite:////launch/rel/l.db"
    assert _args.absolute_url("rel/l.db", "/launch") == "/launch/rel/l.db"


def test_work_directory_inputs_are_the_real_files_and_outputs_what_the_task_wrote(tmp_path):
    upstream = tmp_path / "work" / "aa" / "1111"
    upstream.mkdir(parents=True)
    (upstream / "made.txt").write_text("made upstream\n")
    source = tmp_path / "data dir"
    source.mkdir()
    (source / "in put.txt").write_text("a source\n")
    work = tmp_path / "work" / "bb" / "2222"
    work.mkdir(parents=True)
    (work / ".command.sh").write_text("#!/bin/bash -ue\ncat made.txt > out.txt\n")
    (work / ".command.run").write_text(
        "#!/bin/bash\nnxf_stage() {\n    true\n    # stage input files\n    rm -f made.txt\n"
        f"    ln -s {upstream / 'made.txt'} made.txt\n"
        f"    cp -fRL {str(source / 'in put.txt').replace(' ', chr(92) + ' ')} in\\ put.txt\n"
        "}\nnxf_main() {\n  conda activate /envs/tools\n}\n")
    os.symlink(upstream / "made.txt", work / "made.txt")
    (work / "in put.txt").write_text("a source\n")  # the copy stageInMode 'copy' made
    (work / "out.txt").write_text("made upstream\n")
    (work / "sub").mkdir()
    (work / "sub" / "deep.txt").write_text("deep\n")
    (work / ".exitcode").write_text("0")
    found = read_workdir(str(work))
    assert found.inputs == [str(upstream / "made.txt"), str(source / "in put.txt")]
    assert found.outputs == [str(work / "out.txt"), str(work / "sub" / "deep.txt")]
    assert found.conda == "/envs/tools" and found.exit_code == 0 and found.problems == []
    assert staged_files("no stage function") == {}


def test_log_gives_the_session_and_each_published_file_once(tmp_path):
    log = tmp_path / ".nextflow.log"
    log.write_text(
        f"Dec-04 09:30:06.380 [main] DEBUG nextflow.Session - Session UUID: {SESSION}\n"
        "Dec-04 09:30:09.201 [PublishDir-1] TRACE nextflow.processor.PublishDir - publishing file: "
        "/w/31/38/b.count -[COPY]-> /r/counts/b.count\n"
        "Dec-04 09:30:09.202 [PublishDir-1] TRACE nextflow.processor.PublishDir - publishing file: "
        "/w/31/38/b.count -[COPY]-> /r/counts/b.count\n"
        "Dec-04 09:30:09.301 [PublishDir-2] TRACE nextflow.processor.PublishDir - publishing file: "
        "/w/8f/d2/report.txt -[SYMLINK]-> /r/report.txt\n")
    facts = read_log(str(log))
    assert facts.session == SESSION
    assert [(p.source, p.mode, p.target) for p in facts.published] == [
        ("/w/31/38/b.count", "COPY", "/r/counts/b.count"), ("/w/8f/d2/report.txt", "SYMLINK", "/r/report.txt")]
    (tmp_path / ".nextflow").mkdir()
    (tmp_path / ".nextflow" / "history").write_text(
        f"2026-12-04 09:30:06\t3.8s\tdesperate_elion\tOK\t20b6d35df6\t{SESSION}\tnextflow run main.nf\n")
    assert last_session(str(tmp_path)) == SESSION


def test_trace_follower_waits_for_whole_rows(tmp_path):
    trace = tmp_path / "trace.tsv"
    rows: list[dict[str, str]] = []
    follower = TraceFollower(str(trace), rows.append)
    follower.start()
    with open(trace, "w") as out:
        out.write("task_id\tstatus\tname\n1\tCOMPLETED\tA (1)\n2\tSUBMITTED\tB\n3\tFAIL")
        out.flush()
        time.sleep(0.6)
        assert [r["name"] for r in rows] == ["A (1)"]
        out.write("ED\tC\n")
    follower.stop()
    assert [(r["task_id"], r["status"]) for r in rows] == [("1", "COMPLETED"), ("3", "FAILED")]


def _recorded_session(tmp_path: Path) -> Path:
    """A launch directory whose session state and ledger say one task wrote out.txt."""
    from lineage_ledger import TaskCapture, TaskRun

    work = tmp_path / "work" / "ab" / "cdef"
    work.mkdir(parents=True)
    (work / ".exitcode").write_text("0")
    out = work / "out.txt"
    out.write_text("recorded\n")
    now = datetime.now(timezone.utc)
    with TaskCapture(str(tmp_path / ".lineage" / "ledger.db"), engine="nextflow", raise_errors=True) as capture:
        capture.submit(TaskRun("abcdef", "P", "succeeded", now, now, outputs=[str(out)])).result()
    sessions = tmp_path / ".lineage" / "nextflow" / "sessions"
    sessions.mkdir(parents=True)
    (sessions / f"{SESSION}.json").write_text(json.dumps({"session": SESSION, "tasks": {"abcdef": {
        "process": "P", "name": "P", "workdir": str(work), "status": "succeeded", "inputs": [],
        "outputs": [str(out)], "published": []}}}))
    return out


def test_strict_refuses_a_changed_output_before_nextflow_starts(tmp_path, never):
    out = _recorded_session(tmp_path)
    clean = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "strict", cwd=tmp_path,
                       nextflow=never)
    assert (tmp_path / "NEXTFLOW_STARTED").exists(), clean.stderr  # unchanged: Nextflow runs
    (tmp_path / "NEXTFLOW_STARTED").unlink()
    stat = out.stat()
    out.write_text("tampered\n")
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    refused = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "strict", cwd=tmp_path,
                         nextflow=never)
    assert refused.returncode == 1 and "refusing to run" in refused.stderr and str(out) in refused.stderr
    assert not (tmp_path / "NEXTFLOW_STARTED").exists()
    warned = ledger_cmd("run", "main.nf", "-resume", SESSION, cwd=tmp_path, nextflow=never)
    assert "changed outside the workflow" in warned.stderr and (tmp_path / "NEXTFLOW_STARTED").exists()
    assert out.read_text() == "tampered\n"  # warn leaves it in place


def test_strict_refuses_when_the_ledger_cannot_be_read(tmp_path, never):
    _recorded_session(tmp_path)
    (tmp_path / ".lineage" / "ledger.db").write_bytes(b"not a database at all" * 100)
    refused = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "strict", cwd=tmp_path,
                         nextflow=never)
    assert refused.returncode == 1 and "the ledger could not be checked" in refused.stderr
    assert not (tmp_path / "NEXTFLOW_STARTED").exists()
